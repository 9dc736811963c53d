"""One report for a run under ``torchrun``: each rank records on its own, rank 0 merges.

Every rank writes ``OUT/rank<N>/report.json`` (and its graphs). Rank 0 waits for the others' reports
and writes ``OUT/report.json``: its own report, with the findings of every rank, each saying on
which ranks it occurred (``ranks``), and ``world_size``. Only rank 0 prints. The other ranks wait
for the merged report before they exit, so that the launcher does not stop rank 0 while it merges.
Plain files: the script may have torn its process group down by the time the lens reports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from .findings import Finding
from .report import Report

#: Seconds rank 0 waits for the other ranks' reports (and they for the merged one).
WAIT = float(os.environ.get("AUTOGRAD_LENS_RANK_WAIT", "120"))


def rank_dir(out: Path, rank: int) -> Path:
    return out / f"rank{rank}"


def _fresh(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since - 2.0
    except OSError:
        return False


def wait_for(paths: list[Path], since: float, timeout: float = WAIT) -> list[Path]:
    """Wait until each of ``paths`` was written after ``since``; returns those still missing."""
    deadline = time.monotonic() + timeout
    missing = list(paths)
    while missing:
        missing = [p for p in missing if not _fresh(p, since)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return missing


def merge(own: Report, out: Path, world_size: int, since: float, timeout: float = WAIT) -> tuple[Report, list[int]]:
    """Rank 0's report with the findings of every rank; and the ranks whose report never came."""
    others = {r: rank_dir(out, r) / "report.json" for r in range(1, world_size)}
    missing_paths = set(wait_for(list(others.values()), since, timeout))
    missing = [r for r, p in others.items() if p in missing_paths]
    merged: dict[tuple, Finding] = {}
    ranks: dict[tuple, set[int]] = {}
    for f in own.findings:
        merged[f.key] = f
        ranks[f.key] = {0}
    for r, path in others.items():
        if path in missing_paths:
            continue
        try:
            data = json.loads(path.read_text())
            found = [Finding.from_dict(d) for d in data.get("findings", ())]
        except (OSError, ValueError, KeyError, TypeError):
            missing.append(r)
            continue
        for f in found:
            kept = merged.get(f.key)
            merged[f.key] = f if kept is None else kept.counted(kept.count + f.count)
            ranks.setdefault(f.key, set()).add(r)
    findings = tuple(
        dataclasses.replace(f, extra={**f.extra, "ranks": tuple(sorted(ranks[k]))}) for k, f in merged.items()
    )
    extra = {**own.extra, "world_size": world_size}
    graphs = tuple(
        {**g, **{k: f"{rank_dir(Path(), 0)}/{g[k]}" for k in ("svg", "json") if g.get(k)}} for g in own.graphs
    )
    return dataclasses.replace(own, findings=findings, graphs=graphs, extra=extra), sorted(missing)
