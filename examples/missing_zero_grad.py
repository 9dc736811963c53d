"""A training loop that never calls ``zero_grad()``.

``.grad`` accumulates: every ``optimizer.step()`` applies the gradient of all earlier batches again
(``missing-zero-grad``). Compare ``grad_accumulation_fixed.py``, which accumulates on purpose over
a few batches and zeroes after each step: that is not a finding.

Run: ``python examples/missing_zero_grad.py``.
"""

from __future__ import annotations

import torch
from torch import nn


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = nn.MSELoss()
    for _ in range(4):
        x, y = torch.randn(8, 4), torch.randn(8, 1)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
