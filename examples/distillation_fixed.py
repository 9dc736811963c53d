"""Knowledge distillation with the teacher frozen (default) or run under ``torch.no_grad()``
(``--no-grad``). The lens reports nothing.

Run: ``python examples/distillation_fixed.py [--no-grad]``.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-grad", action="store_true", help="run the teacher under torch.no_grad()")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    student = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    if not args.no_grad:
        teacher.requires_grad_(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    temperature = 2.0
    for _ in range(3):
        x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
        with torch.no_grad() if args.no_grad else contextlib.nullcontext():
            t_logits = teacher(x)
        s_logits = student(x)
        soft = F.kl_div(
            F.log_softmax(s_logits / temperature, dim=1), F.softmax(t_logits / temperature, dim=1), reduction="batchmean"
        )
        loss = soft * temperature**2 + F.cross_entropy(s_logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
