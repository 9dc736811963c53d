"""Knowledge distillation with a teacher that is neither frozen nor detached.

The distillation loss compares the student's logits with ``t_logits = teacher(x)``; nothing stops
the loss's backward at the teacher, so every step computes and accumulates gradient in all of the
teacher's parameters (``detach-leak``, naming them and ``t_logits``). No optimizer steps the
teacher, so it is wasted work, and a bug as soon as someone adds the teacher to an optimizer.

Run: ``python examples/distillation.py``. The corrected version is ``distillation_fixed.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def main() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    student = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    temperature = 2.0
    for _ in range(3):
        x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
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
