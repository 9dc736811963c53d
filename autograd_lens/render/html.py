"""The HTML report: one self-contained file (no network, no external script) with the findings in
the rustc form, the gradient-flow and optimizer tables, and the graphs.

Selecting a finding highlights its nodes and edges in its graph and brings them into view; graphs
pan (drag) and zoom (wheel, buttons); a folded block or a collapsed module opens on demand (click
it: the drawing with that part open replaces the folded one, "back" returns).

The page is made from the saved report (``report.json``) and the graph files it lists, so
``lens trace`` (which writes ``report.html`` beside ``report.json``) and ``lens report
report.json -o report.html`` give the same page. Its content is :func:`report_fragment` (in
:mod:`autograd_lens.render.fragment` with :func:`graph_fragment` and :func:`graph_html`, and
importable from here), which a notebook cell shows on its own, its ids and styles scoped to it.

The top of the report modules: imports :mod:`autograd_lens.graph`, :mod:`autograd_lens.report`
and :mod:`autograd_lens.findings` (none of which imports it); :mod:`autograd_lens.output` and the
CLI import it.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import LensError
from ..files import HTML_NAME
from ..findings import Finding, Site, site_of
from ..graph import Graph, read_json
from ..report import SCHEMA as REPORT_SCHEMA
from ..report import BackwardSummary, Report, StepSummary
from .fragment import graph_fragment, graph_html, report_fragment

__all__ = ["graph_fragment", "graph_html", "load_report", "report_fragment", "report_from_dict", "report_page", "write_html"]



# ----------------------------------------------------------------------------------------------
# The saved report as objects
# ----------------------------------------------------------------------------------------------


def report_from_dict(data: Mapping[str, Any]) -> Report:
    """A :class:`Report` from ``report.json``'s content; ``LensError`` when it is not one."""
    if not isinstance(data, Mapping) or data.get("schema") != REPORT_SCHEMA:
        got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
        raise LensError(f"not an autograd_lens report: expected schema {REPORT_SCHEMA!r}, got {got!r}")
    try:
        findings = tuple(Finding.from_dict(f) for f in data.get("findings") or ())
        backwards = tuple(
            BackwardSummary(
                site_of(b["site"]) or Site("", 0), int(b["count"]), tuple(b.get("roots") or ()),
                bool(b.get("retain_graph", False)), str(b.get("kind", "backward")), dict(b.get("networks") or {}),
                int(b.get("params_reached", 0)),
            )
            for b in data.get("backwards") or ()
        )
        steps = tuple(
            StepSummary(
                str(s["optimizer"]), site_of(s["site"]) or Site("", 0), int(s["count"]),
                {str(k): int(v) for k, v in dict(s.get("sources") or {}).items()}, int(s.get("params", 0)),
                int(s.get("by_hand", 0)),
            )
            for s in data.get("steps") or ()
        )
        graphs = tuple(dict(g) for g in data.get("graphs") or ())
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LensError(f"malformed autograd_lens report: {exc!r}") from None
    return Report(
        findings=findings, backwards=backwards, steps=steps, graphs=graphs,
        networks=tuple(data.get("networks") or ()), script=data.get("script"),
        status=str(data.get("status", "ok")), error=data.get("error"),
    )


def load_report(path: str | os.PathLike[str]) -> tuple[Report, list[tuple[dict[str, Any], Graph]]]:
    """The report saved at ``path`` and the graphs it lists (read from their ``.json`` files,
    relative to the report's folder). A listed graph file that is missing is left out."""
    p = Path(path)
    data = read_json(p, "report file", "the report.json of `lens trace`")
    report = report_from_dict(data)
    graphs: list[tuple[dict[str, Any], Graph]] = []
    for entry in report.graphs:
        rel = entry.get("json")
        if not isinstance(rel, str):
            continue
        gpath = p.parent / rel
        if not gpath.is_file():
            continue
        graphs.append((entry, Graph.from_json(gpath)))
    return report, graphs


def report_page(
    report: Report,
    graphs: Sequence[tuple[Mapping[str, Any], Graph]],
    *,
    warn: Callable[[str], None] | None = None,
) -> str:
    """The standalone HTML document."""
    title = f"autograd_lens report: {report.script}" if report.script else "autograd_lens report"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1"></head><body>'
        f'<div class="lens-report"><h1>{html.escape(title)}</h1></div>'
        + report_fragment(report, graphs, warn=warn)
        + "</body></html>\n"
    )


def write_html(
    report_path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    warn: Callable[[str], None] | None = None,
    write: Callable[[Path, bytes], None] | None = None,
) -> Path:
    """Write the HTML page of the report saved at ``report_path`` to ``out`` (default:
    ``report.html`` beside it). ``write(path, data)`` writes the file (default: a temporary file
    beside it, then a rename). Returns the path written."""
    report, graphs = load_report(report_path)
    target = Path(out) if out is not None else Path(report_path).parent / HTML_NAME
    data = report_page(report, graphs, warn=warn).encode("utf-8")
    if write is not None:
        write(target, data)
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as exc:
        raise LensError(f"cannot write the HTML report to {str(target)!r}: {exc.strerror or exc}") from None
    return target
