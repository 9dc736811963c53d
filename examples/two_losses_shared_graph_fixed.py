"""Two losses on one forward, backwarded correctly.

The corrected version of ``two_losses_shared_graph.py``: the first backward keeps the graph with
``retain_graph=True`` (with ``--sum``: the losses are summed and backwarded once).

Run: ``python examples/two_losses_shared_graph_fixed.py [--sum]``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sum", action="store_true", help="sum the two losses and call backward once")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = nn.Parameter(torch.randn(4))
    optimizer = torch.optim.SGD([x], lr=0.1)
    optimizer.zero_grad()
    y = x**2
    z = y * 4
    if args.sum:
        (z.mean() + z.sum()).backward()
    else:
        z.mean().backward(retain_graph=True)
        z.sum().backward()
    optimizer.step()


if __name__ == "__main__":
    main()
