"""Instructions per training step, ``watch()`` in its steady cycles against the bare step, counted
by Valgrind's callgrind (deterministic where CPU time is not: a 2-core machine's timings drift by a
few percent from run to run).

Run: ``python benchmarks/step_instructions.py [--steps N] [--only mlp,actor-critic]`` (needs
``valgrind``; Debian: ``apt-get install valgrind``). It runs itself under callgrind with the counting
off, and counts only the timed steps: N bare steps, then N steps of a watch that runs steady (after
30 steps in which it learns the loop), each block dumped on its own. Prints the instructions per step
and their ratio. Instructions are not time: the lens's code runs between PyTorch's and misses the
caches more, so its share of the time is larger than its share of the instructions.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile


def _total(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _inner(kind: str, steps: int) -> None:
    """Under callgrind: the steps of both blocks, counted one block at a time."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from step_cost import KINDS

    import autograd_lens as lens

    torch.set_num_threads(1)
    step = KINDS[kind]()

    def count(label: str) -> None:
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, check=True)
        for _ in range(steps):
            step()
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-d", label, str(os.getpid())], capture_output=True, check=True)

    for _ in range(30):
        step()
    count("bare")
    with lens.watch() as w:
        for _ in range(30):
            step()
        if not w.recorder.steady.on:
            raise SystemExit(f"{kind}: the watch did not run steady")
        count("watch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--only", default="mlp,actor-critic", help="comma-separated step kinds (see step_cost.py)")
    ap.add_argument("--inner", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        _inner(args.inner, args.steps)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("step_instructions.py needs valgrind (apt-get install valgrind)")
    for kind in args.only.split(","):
        with tempfile.TemporaryDirectory() as out:
            base = os.path.join(out, "cg.out")
            env = dict(os.environ, PYTHONHASHSEED="0")
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={base}",
                 sys.executable, os.path.abspath(__file__), "--inner", kind, "--steps", str(args.steps)],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            dumps = [p for p in glob.glob(base + ".*") if p.rsplit(".", 1)[1].isdigit()]
            dumps.sort(key=lambda p: int(p.rsplit(".", 1)[1]))  # in the order they were dumped
            totals = [t for t in map(_total, dumps) if t > 0]
            if len(totals) < 2:
                raise SystemExit(f"{kind}: expected two counted blocks, got {len(totals)}")
            bare, watched = totals[0] / args.steps, totals[1] / args.steps
            print(f"  {kind:13} bare {bare:12,.0f} instructions/step   watch() steady {watched:12,.0f}   "
                  f"{watched / bare:.3f}x")


if __name__ == "__main__":
    main()
