"""Truncated backpropagation through time with a hidden state that keeps its graph.

The sequence is cut into chunks; each chunk's loss is backwarded, and the GRU's hidden state is
carried to the next chunk without ``.detach()``. The second chunk's backward then reaches into the
first chunk's graph, which the first backward freed: "Trying to backward through the graph a
second time". The lens explains that the state is carried across iterations and where to detach.

With ``--retain`` the backward keeps its graph (``retain_graph=True``), the usual way to make the
error go away: it runs, but every chunk backpropagates through all earlier ones
(``retained-graph``, a warning).

Run: ``python examples/tbptt_hidden_state.py [--retain]``. The corrected version is
``tbptt_fixed.py``.
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
    parser.add_argument("--retain", action="store_true", help="backward with retain_graph=True")
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
        pred, hidden = model(x, hidden)
        loss = criterion(pred, y)
        loss.backward(retain_graph=args.retain)
    optimizer.step()


if __name__ == "__main__":
    main()
