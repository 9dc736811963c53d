"""Intentional gradient accumulation: ``accum`` backward calls, one step, then ``zero_grad()``.

Each backward's gradient is applied exactly once, so the lens reports nothing (unlike
``missing_zero_grad.py``).

Run: ``python examples/grad_accumulation_fixed.py [--accum K]``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accum", type=int, default=4, help="backward calls per optimizer step")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = nn.MSELoss()
    optimizer.zero_grad()
    for i in range(2 * args.accum):
        x, y = torch.randn(8, 4), torch.randn(8, 1)
        loss = criterion(model(x), y) / args.accum
        loss.backward()
        if (i + 1) % args.accum == 0:
            optimizer.step()
            optimizer.zero_grad()


if __name__ == "__main__":
    main()
