"""Draw the graph of a loss that flows through two networks, after its backward.

``netA`` produces a batch that ``netB`` scores, without ``.detach()``: the loss meant for ``netB``
also reaches ``netA``'s parameters. The drawing is made after ``loss.backward()`` by ``draw()``
alone: the nodes whose buffers that backward released are marked freed, and the edge where
``fake`` leaves ``netA`` and enters ``netB`` (where ``.detach()`` belongs) is marked with its name.

Run: ``python examples/draw_two_nets.py [OUT]`` (default ``docs/graph.svg``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import autograd_lens as lens


def main(out: Path) -> Path:
    torch.manual_seed(0)
    netA = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    netB = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 1))

    noise = torch.randn(5, 8)
    fake = netA(noise)
    score = netB(fake)  # should be netB(fake.detach()) for netB's own step
    errB = nn.functional.softplus(-score).mean()
    errB.backward()

    graph = lens.draw(errB, title="errB after errB.backward()")
    return graph.save(out)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "docs" / "graph.svg"
    print(main(target))
