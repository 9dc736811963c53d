"""The report's two tables as data: which networks each backward reaches (:func:`flow_rows`) and
where each optimizer step's gradients came from (:func:`step_rows`).

Rows of text, no styling: the terminal view (rich tables in :mod:`autograd_lens.report`) and the
HTML report (:mod:`autograd_lens.render.fragment`) are drawn from the same rows.

Imports only :mod:`autograd_lens.findings` from the package; a ``Report`` is read by its
attributes (``backwards``, ``steps``, ``networks``), never imported at run time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..findings import cell_name, rel_path, site_text

if TYPE_CHECKING:
    from ..report import Report

__all__ = ["FLOW_TITLE", "STEP_TITLE", "flow_rows", "step_rows"]

FLOW_TITLE = "gradient flow: which networks each backward reaches"
STEP_TITLE = "optimizer steps: where their gradients came from"
_FLOW_LABELS = {"detached": "stopped at detach"}


def _site_namer(report: Report) -> Callable[[str, int | str], str]:
    """``name(file, line)``: ``"train.py:56"`` when file names are unambiguous in the report, else
    the path relative to the current folder."""
    files = {b.site.file for b in report.backwards} | {s.site.file for s in report.steps}
    files |= {k.rpartition(":")[0] for s in report.steps for k in s.sources}
    short = {rel_path(f) for f in files}
    bases = {os.path.basename(f) for f in short}
    unique = len(bases) == len(short)

    def name(file: str, line: int | str) -> str:
        if cell_name(file):
            return site_text(file, line)
        path = rel_path(file)
        return f"{os.path.basename(path) if unique else path}:{line}"

    return name


def flow_rows(report: Report) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """The flow table as data: column names, and rows of ``(text, state)`` cells (the state of a
    network cell is ``reached``, ``detached`` or ``not reached``; empty for the others)."""
    nets = list(report.networks) or sorted({n for b in report.backwards for n in b.networks})
    name = _site_namer(report)
    head = ["backward", "at", "calls"] + ([] if nets else ["params"]) + nets
    rows = []
    for b in report.backwards:
        what = b.call or (", ".join(b.roots) + (" (backward)" if b.kind == "backward" else " (grad)"))
        row = [(what, ""), (name(b.site.file, b.site.line), ""), (str(b.count), "")]
        if not nets:
            row.append((str(b.params_reached), ""))
        for n in nets:
            state = b.networks.get(n, "not reached")
            row.append((_FLOW_LABELS.get(state, state), state))
        rows.append(row)
    return head, rows


def step_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The step table as data: column names and rows of text."""
    name = _site_namer(report)
    rows = []
    for s in report.steps:
        parts = []
        for key, n in s.sources.items():
            file, _, line = key.rpartition(":")
            parts.append(f"{name(file, line) if file else key} (x{n})")
        if s.by_hand:
            parts.append(f"set by hand (x{s.by_hand})")  # (PCGrad: `.grad` assigned after projecting)
        rows.append([s.optimizer, name(s.site.file, s.site.line), str(s.count), ", ".join(parts) or "no gradient"])
    return ["optimizer", "step at", "steps", "gradients from the backward at"], rows
