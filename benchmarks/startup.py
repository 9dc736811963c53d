"""What the command line costs to start: ``lens --help`` and ``lens rules`` (no torch), and what
``lens trace`` adds to ``python script.py`` on a script that only imports torch.

Run: ``python benchmarks/startup.py [--runs N]``. Wall time, median of N runs of each, run one after
the other in fresh processes. Targets: ``lens trace`` adds at most 1 s; ``--help`` and ``rules``
take well under a second (they import no torch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = "import torch\nx = torch.ones(3, requires_grad=True)\nprint(float((x * 2).sum()))\n"


def wall(argv: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    lens = [sys.executable, "-m", "autograd_lens"]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "only_torch.py"
        script.write_text(SCRIPT)
        env_out = os.path.join(tmp, "lens-out")
        cases = {
            "python script.py": [sys.executable, str(script)],
            "lens trace script.py": [*lens, "trace", "--out", env_out, str(script)],
            "lens --help": [*lens, "--help"],
            "lens rules": [*lens, "rules"],
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.runs):
            for name, argv in cases.items():
                times[name].append(wall(argv, tmp))
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"  {name:<22} {t:6.2f} s")
    added = med["lens trace script.py"] - med["python script.py"]
    print(f"  lens trace adds {added:.2f} s to python script.py (target <= 1 s: {'met' if added <= 1 else 'NOT met'})")


if __name__ == "__main__":
    main()
