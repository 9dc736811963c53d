"""A custom ``autograd.Function`` that keeps a tensor on ``ctx`` instead of ``save_for_backward``
(``ctx-tensor``). With ``--fixed`` it uses ``ctx.save_for_backward`` and the lens reports nothing.

Run: ``python examples/custom_function_ctx.py [--fixed]``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn


class ScaledTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.y = y
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * (1 - ctx.y**2)


class ScaledTanhSaved(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1 - y**2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fixed", action="store_true", help="use ctx.save_for_backward")
    args = parser.parse_args()
    torch.manual_seed(0)
    act = ScaledTanhSaved if args.fixed else ScaledTanh
    layer = nn.Linear(4, 4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        loss = act.apply(layer(torch.randn(8, 4))).pow(2).mean()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    main()
