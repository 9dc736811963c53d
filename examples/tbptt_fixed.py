"""Truncated backpropagation through time done right: the hidden state is detached at each chunk.

The corrected version of ``tbptt_hidden_state.py``: ``hidden = hidden.detach()`` before each
chunk's forward keeps every backward within its own chunk. Gradient is accumulated over the
chunks and applied by one step per sequence.

Run: ``python examples/tbptt_fixed.py``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, hidden = self.rnn(x, hidden)
        return self.head(out), hidden


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.MSELoss()
    seq = torch.randn(4, 5 * args.chunks, 3)
    target = seq.sum(dim=2, keepdim=True)
    optimizer.zero_grad()
    hidden = torch.zeros(1, 4, 8)
    for i in range(args.chunks):
        x, y = seq[:, 5 * i : 5 * (i + 1)], target[:, 5 * i : 5 * (i + 1)]
        hidden = hidden.detach()
        pred, hidden = model(x, hidden)
        loss = criterion(pred, y)
        loss.backward()
    optimizer.step()


if __name__ == "__main__":
    main()
