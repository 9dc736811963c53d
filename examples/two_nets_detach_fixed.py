"""Network A feeds network B; B's loss sees A's output detached, A has its own loss.

The corrected version of ``two_nets_detach.py``: ``b_net(output1.detach())`` keeps B's loss out of
A's graph, so each backward goes through its own part and the lens reports nothing.

Run: ``python examples/two_nets_detach_fixed.py``.
"""

from __future__ import annotations

import torch
from torch import nn


def main() -> None:
    torch.manual_seed(0)
    a_net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    b_net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt_a = torch.optim.SGD(a_net.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b_net.parameters(), lr=0.1)
    criterion = nn.MSELoss()
    for _ in range(2):
        input = torch.randn(16, 8)
        target = torch.randn(16, 1)
        opt_a.zero_grad()
        opt_b.zero_grad()
        output1 = a_net(input)
        loss_b = criterion(b_net(output1.detach()), target)
        loss_b.backward()
        opt_b.step()
        loss_a = output1.pow(2).mean()
        loss_a.backward()
        opt_a.step()


if __name__ == "__main__":
    main()
