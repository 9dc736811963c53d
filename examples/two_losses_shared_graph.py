"""Two losses on one forward, each backwarded on its own: the second one fails.

``z.mean().backward()`` frees the buffers of the graph ``x -> y -> z``; ``z.sum().backward()``
needs them again and PyTorch raises "Trying to backward through the graph a second time". The
lens names the first call as the one that freed the graph.

Run: ``python examples/two_losses_shared_graph.py`` (raises ``RuntimeError``). The corrected
version is ``two_losses_shared_graph_fixed.py``.
"""

from __future__ import annotations

import torch
from torch import nn


def main() -> None:
    torch.manual_seed(0)
    x = nn.Parameter(torch.randn(4))
    optimizer = torch.optim.SGD([x], lr=0.1)
    optimizer.zero_grad()
    y = x**2
    z = y * 4
    z.mean().backward()
    z.sum().backward()
    optimizer.step()


if __name__ == "__main__":
    main()
