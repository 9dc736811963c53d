"""The graphs that large-drawing tests and ``benchmarks/render.py`` use: an unrolled 2-layer LSTM,
an RNN of 1000 steps with one shared ``W``, a 300-layer MLP, a transformer encoder and a chain.

Each builder returns ``(outputs, params)``: the tensors to draw and the ``params=`` naming
argument for :func:`autograd_lens.draw`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class StackedLSTM(nn.Module):
    """Two ``LSTMCell`` layers run step by step (the unrolled loop of a language model)."""

    def __init__(self, d_in: int = 8, d: int = 16) -> None:
        super().__init__()
        self.cell1 = nn.LSTMCell(d_in, d)
        self.cell2 = nn.LSTMCell(d, d)
        self.head = nn.Linear(d, d_in)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        b = xs.shape[1]
        h1 = c1 = torch.zeros(b, self.cell1.hidden_size)
        h2 = c2 = torch.zeros(b, self.cell2.hidden_size)
        for x in xs:
            h1, c1 = self.cell1(x, (h1, c1))
            h2, c2 = self.cell2(h1, (h2, c2))
        return self.head(h2)


def lstm(steps: int = 20) -> tuple[list[torch.Tensor], dict[str, Any]]:
    torch.manual_seed(0)
    model = StackedLSTM()
    xs = torch.randn(steps, 4, 8)
    loss = model(xs).pow(2).mean()
    return [loss], {"model": model}


def rnn(steps: int = 1000, d: int = 8) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """``h = tanh(h @ W + x_t @ U)``: one ``W`` shared by every step, no modules."""
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(d, d) * 0.1)
    U = nn.Parameter(torch.randn(d, d) * 0.1)
    h = torch.zeros(2, d)
    xs = torch.randn(steps, 2, d)
    for x in xs:
        h = torch.tanh(h @ W + x @ U)
    return [h.sum()], {"W": W, "U": U}


def mlp(layers: int = 300, d: int = 16) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """``layers`` blocks of ``Sequential(Linear, LayerNorm, GELU)``."""
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d), nn.GELU()) for _ in range(layers)])
    return [net(torch.randn(4, d)).mean()], {"net": net}


def transformer(layers: int = 12, d: int = 16) -> tuple[list[torch.Tensor], dict[str, Any]]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    return [encoder(torch.randn(2, 5, d)).pow(2).mean()], {"encoder": encoder}


def chain(n: int = 100_000) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """``n`` alternating tanh / multiply ops on one leaf (free it in a thread with a large stack)."""
    x = torch.randn(8, requires_grad=True)
    y = x
    for i in range(n):
        y = torch.tanh(y) if i % 2 == 0 else y * 0.99
    return [y.sum()], {}


def in_big_stack(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a thread with a 512 MB stack and re-raise what it raised.

    Freeing an autograd chain of more than ~50,000 nodes whose nodes Python has touched (any walk
    of ``next_functions``, with or without the lens) recurses in PyTorch's C++ destructors and
    overflows the default 8 MB stack.
    """
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            errors.append(exc)

    old = threading.stack_size(512 * 1024 * 1024)
    try:
        t = threading.Thread(target=target)
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    if errors:
        raise errors[0]
