"""Speed of graph capture and drawing, against ``torchviz.make_dot`` where it is installed.

Run: ``python benchmarks/graph_capture.py``. Times are the CPU time of the benchmark's thread, the
best of several calls. Prints, for a ~10,000-node MLP and a 100,000-node
chain: ``lens.draw`` (naming from the modules, shapes, saved tensors, freed state) and the bare
``capture`` in nodes/s, the time to DOT text, the same for ``torchviz.make_dot`` with saved
tensors shown (``show_saved=True``, as the lens shows them) and without, the chain depth at which
torchviz starts failing, and the time to lay out a ~500-node graph as SVG with Graphviz.
torchviz is optional (``pip install torchviz``): without it those rows say so.

Everything runs in a thread with a large stack: freeing an autograd chain of more than ~50,000
nodes that Python has walked recurses in PyTorch's C++ destructors.
"""

from __future__ import annotations

import gc
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import autograd_lens as lens
from autograd_lens.graph import capture
from autograd_lens.naming import ParamNames
from autograd_lens.render.dot import render, to_dot

try:
    import torchviz
except ImportError:  # pragma: no cover - optional
    torchviz = None

CAPTURE_TARGET = 200_000  # nodes/s
SPEEDUP_TARGET = 10.0  # lens per node vs torchviz per node
SVG_TARGET = 2.0  # seconds for ~500 nodes


def best_of(fn: Callable[[], Any], repeat: int = 5) -> tuple[float, Any]:
    """Shortest CPU time of this thread over ``repeat`` calls, and the last result (CPU time: other
    processes on the machine do not count). As ``timeit`` does, each call starts from a collected
    heap and runs with the cyclic collector paused, and the previous result is freed before the
    clock starts (the same for the lens and for torchviz)."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        result = None
        gc.collect()
        gc.disable()
        try:
            t0 = time.thread_time()
            result = fn()
            best = min(best, time.thread_time() - t0)
        finally:
            gc.enable()
    return best, result


def mlp(layers: int, width: int = 16) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.LayerNorm(width), nn.Tanh()]
    return nn.Sequential(*blocks)


def chain(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` alternating tanh / multiply ops on one leaf; returns (leaf, output)."""
    x = torch.randn(8, requires_grad=True)
    y = x
    for i in range(n):
        y = torch.tanh(y) if i % 2 == 0 else y * 0.99
    return x, y.sum()


def torchviz_fails_at() -> int:
    """The smallest chain length for which ``torchviz.make_dot`` raises RecursionError."""
    lo, hi = 10, 5000
    while lo < hi:
        mid = (lo + hi) // 2
        _, out = chain(mid)
        try:
            torchviz.make_dot(out)
            lo = mid + 1
        except RecursionError:
            hi = mid
    return lo


def _torchviz_time(tensor: torch.Tensor, params: dict[str, Any], n: int, show_saved: bool) -> float:
    """Seconds for one ``torchviz.make_dot``, the recursion limit raised as deep graphs need; NaN
    if it still fails."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 4 * n + 1000))
    try:
        return best_of(lambda: torchviz.make_dot(tensor, params=params, show_saved=show_saved), repeat=2)[0]
    except RecursionError:
        return float("nan")
    finally:
        sys.setrecursionlimit(old)


def row(label: str, value: str) -> None:
    print(f"  {label:<48} {value}")


def bench() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {torch.get_num_threads()} threads")

    net = mlp(1250)
    out = net(torch.randn(4, 16)).pow(2).mean()
    names = ParamNames.build({"mlp": net})
    _, chain_out = chain(100_000)
    graphs = {"MLP (LayerNorm/Tanh)": (out, names, dict(net.named_parameters())), "chain": (chain_out, ParamNames(), {})}

    for label, (tensor, pnames, params) in graphs.items():
        named = {"mlp": net} if params else None
        t_draw, g = best_of(lambda: lens.draw(tensor, params=named))
        t_cap, _ = best_of(lambda: capture([tensor], names=pnames))
        n = len(g)
        t_dot, dot = best_of(lambda: to_dot(g))
        t_full, _ = best_of(lambda: to_dot(g, collapse="none", max_nodes=10**7, budget=10**9))
        print(f"\n{label}: {n:,} nodes, {len(g.edges):,} edges, {sum(1 for x in g.nodes if x.kind == 'param')} params")
        row("lens.draw (names, shapes, saved tensors)", f"{t_draw * 1000:8.1f} ms  {n / t_draw:>12,.0f} nodes/s  (target {CAPTURE_TARGET:,})")
        row("lens capture (names given)", f"{t_cap * 1000:8.1f} ms  {n / t_cap:>12,.0f} nodes/s")
        row("lens to_dot (default: fitted to the budget)", f"{t_dot * 1000:8.1f} ms  ({len(dot):,} chars)")
        row("lens to_dot (every node)", f"{t_full * 1000:8.1f} ms")
        if torchviz is None:
            row("torchviz", "not installed")
            continue
        for shown in (True, False):
            t_tv = _torchviz_time(tensor, params, n, shown)
            what = "torchviz.make_dot" + (" show_saved=True" if shown else "")
            if t_tv != t_tv:
                row(what, "RecursionError even with the recursion limit raised")
                continue
            row(what, f"{t_tv * 1000:8.1f} ms  {n / t_tv:>12,.0f} nodes/s")
            target = f"  (target {SPEEDUP_TARGET:g}x)" if shown else ""
            row(f"speed lens.draw / {'that' if shown else 'it'} per node", f"{t_tv / t_draw:8.1f}x{target}")

    if torchviz is not None:
        print(f"\ntorchviz.make_dot raises RecursionError from a chain of {torchviz_fails_at()} ops "
              f"(recursion limit {sys.getrecursionlimit()})")

    small = mlp(62)
    g = capture([small(torch.randn(4, 16)).sum()], names=ParamNames.build({"mlp": small}))
    print(f"\nSVG of a {len(g)}-node graph:")
    if shutil.which("dot") is None:
        row("dot", "Graphviz is not installed")
    else:
        t_svg, svg = best_of(lambda: render(g, "svg", collapse="none"), repeat=2)
        row("render(svg) with dot", f"{t_svg:8.2f} s  ({len(svg) // 1024} KB; target < {SVG_TARGET:g} s)")


def main() -> None:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            bench()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threading.stack_size(1024 * 1024 * 1024)
    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]


if __name__ == "__main__":
    main()
