"""Drawing graphs at real sizes: ``lens.draw(...).save("x.svg")`` against ``torchviz``.

Run: ``python benchmarks/render.py [--torchviz-timeout S]``. For an unrolled 2-layer LSTM (20
steps), an RNN of 1000 steps with one shared ``W``, a 300-layer MLP, a 12-layer transformer and a
100,000-node chain, prints: nodes captured, boxes drawn (what reaches ``dot``), the seconds to
capture, to plan and write DOT, and for ``dot`` to lay out the SVG, and what was folded or
collapsed; then the same for ``torchviz.make_dot`` (its DOT laid out by the same ``dot``) where it
finishes within the time-out. torchviz is optional (``pip install torchviz``).

Runs in a thread with a large stack: freeing an autograd chain of more than ~50,000 nodes that
Python has walked recurses in PyTorch's C++ destructors. Leaves with ``os._exit``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import graph_models as gm  # noqa: E402

import autograd_lens as lens  # noqa: E402
from autograd_lens.render import dot as dot_mod  # noqa: E402

try:
    import torchviz
except ImportError:  # pragma: no cover - optional
    torchviz = None

GRAPHS = [
    ("2-layer LSTM, 20 steps", gm.lstm, (20,)),
    ("RNN, 1000 steps, one W", gm.rnn, (1000,)),
    ("MLP, 300 layers", gm.mlp, (300,)),
    ("transformer, 12 layers", gm.transformer, (12,)),
    ("chain, 100,000 ops", gm.chain, (100_000,)),
]


def lens_row(outs: list[Any], params: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    graph = lens.draw(*outs, params=params)
    t1 = time.perf_counter()
    opts = dot_mod.resolve_options(graph, {"ids": ""})
    source, plan = dot_mod.build(graph, opts)
    t2 = time.perf_counter()
    dot_mod.run_dot(source, "svg", timeout=float(opts["timeout"]), nodes=len(graph))
    t3 = time.perf_counter()
    return {
        "nodes": len(graph),
        "boxes": plan.boxes_drawn,
        "capture": t1 - t0,
        "plan": t2 - t1,
        "dot": t3 - t2,
        "how": "; ".join(plan.notes) or "drawn in full",
        "folds": [f.label for f in plan.folds.values()],
    }


def torchviz_row(outs: list[Any], params: dict[str, Any], timeout: float) -> dict[str, Any]:
    named = {}
    for prefix, obj in params.items():
        if hasattr(obj, "named_parameters"):
            named.update({f"{prefix}.{k}": v for k, v in obj.named_parameters()})
        else:
            named[prefix] = obj
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)
    t0 = time.perf_counter()
    try:
        g = torchviz.make_dot(outs[0], params=named, show_saved=True)
        source = g.source
    except RecursionError:
        return {"error": "RecursionError"}
    finally:
        sys.setrecursionlimit(old)
    t1 = time.perf_counter()
    boxes = len(re.findall(r"^\s*\d+ \[", source, re.M))
    try:
        subprocess.run(["dot", "-Tsvg"], input=source.encode(), capture_output=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"boxes": boxes, "capture": t1 - t0, "error": f"dot did not finish within {timeout:g} s"}
    return {"boxes": boxes, "capture": t1 - t0, "dot": time.perf_counter() - t1}


def bench(tv_timeout: float) -> None:
    import torch

    print(f"torch {torch.__version__}, python {sys.version.split()[0]}; seconds of wall time")
    print(f"{'graph':<26} {'':<9} {'nodes':>8} {'boxes':>6} {'capture':>8} {'plan+DOT':>9} {'dot':>7} {'total':>7}")
    for label, builder, args in GRAPHS:
        outs, params = builder(*args)
        r = lens_row(outs, params)
        total = r["capture"] + r["plan"] + r["dot"]
        print(f"{label:<26} {'lens':<9} {r['nodes']:>8,} {r['boxes']:>6} {r['capture']:>8.2f} {r['plan']:>9.2f} "
              f"{r['dot']:>7.2f} {total:>7.2f}")
        print(f"{'':<36} {r['how']}" + (f": {', '.join(r['folds'])}" if r["folds"] else ""))
        if torchviz is None:
            print(f"{'':<26} {'torchviz':<9} not installed")
            continue
        t = torchviz_row(outs, params, tv_timeout)
        if "dot" in t:
            print(f"{'':<26} {'torchviz':<9} {'':>8} {t['boxes']:>6} {t['capture']:>8.2f} {'':>9} {t['dot']:>7.2f} "
                  f"{t['capture'] + t['dot']:>7.2f}")
        else:
            boxes = f"{t['boxes']:>6}" if "boxes" in t else f"{'':>6}"
            print(f"{'':<26} {'torchviz':<9} {'':>8} {boxes} {'':>8} {'':>9} {t['error']}")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torchviz-timeout", type=float, default=60.0, help="seconds dot may take on torchviz's DOT")
    args = parser.parse_args()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            bench(args.torchviz_timeout)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threading.stack_size(1024 * 1024 * 1024)
    t = threading.Thread(target=target)
    t.start()
    t.join()
    sys.stdout.flush()
    if errors:
        import traceback

        traceback.print_exception(errors[0])
        os._exit(1)
    os._exit(0)  # the 100,000-node chain: no destructor recursion on the way out


if __name__ == "__main__":
    main()
