"""Network A feeds network B; B's loss is backwarded through A, then A's own loss fails.

``loss_b`` is computed on ``output1`` without ``.detach()``, so ``loss_b.backward()`` goes through
``a_net``'s forward too and frees its buffers. ``loss_a.backward()`` then needs those buffers, and
PyTorch raises "Trying to backward through the graph a second time". Under the lens the error
carries a note that names the earlier call and the shared part (``output1 = a_net(input)``).

Run: ``python examples/two_nets_detach.py`` (raises ``RuntimeError``). The corrected version is
``two_nets_detach_fixed.py``.
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
        loss_b = criterion(b_net(output1), target)
        loss_b.backward()
        opt_b.step()
        loss_a = output1.pow(2).mean()
        loss_a.backward()
        opt_a.step()


if __name__ == "__main__":
    main()
