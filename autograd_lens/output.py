"""Write a run's results to a folder: ``report.json``, ``graphs/<site>.svg`` + ``.json``, and
``report.html`` (the same, one self-contained page: :mod:`autograd_lens.render.html`).

``prepare(out)`` makes the folder (and says clearly when it cannot); ``write(...)`` writes the report
and one graph per backward site (each file atomically: a temporary file in the same folder, then a
rename, so a reader never sees half a file and an earlier report stays whole until replaced);
``write_or_fallback(...)`` writes to a temporary folder when ``out`` cannot be written. Graphs are highlighted with what the findings name: the edge where a tensor
should have been detached (already on the graph), the parameters that took a stray step, the
nodes whose buffers a backward freed. Without Graphviz's ``dot`` the graphs are written as JSON only
(``lens draw`` renders them later) and one warning says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LensError
from .files import GRAPHS_DIR, HTML_NAME, REPORT_NAME, write_bytes
from .findings import Finding, Site
from .render.marks import crossings, findings_about, mark
from .report import Report

if TYPE_CHECKING:
    from .graph import Graph

#: Default bound on the number of graphs written.
DEFAULT_MAX_GRAPHS = 20


@dataclass
class Written:
    """What :func:`write` wrote: the report (with its ``graphs`` entries) and the paths."""

    report: Report
    out_dir: Path
    report_path: Path
    graph_files: list[Path] = field(default_factory=list)
    graphs_written: int = 0
    graphs_skipped: int = 0
    warnings: list[str] = field(default_factory=list)
    #: the folder asked for, when it could not be written and ``out_dir`` is a temporary one
    fallback_from: Path | None = None
    html_path: Path | None = None  # report.html, when it was written


def prepare(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` if needed and check that files can be written in it; ``LensError`` if not."""
    shown = os.fspath(out_dir)
    if not shown.strip():
        raise LensError("the output folder's name is empty (use '.' for the current folder)")
    path = Path(out_dir)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise LensError(f"cannot write to output folder {shown!r}: {str(parent)!r} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LensError(f"cannot create output folder {shown!r}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise LensError(f"cannot write to output folder {shown!r}: permission denied")
    return path


def safe_name(key: str) -> str:
    """A file name for a graph key ``"dir/train.py:56"``: ``"train.py_56"``."""
    file, sep, line = key.rpartition(":")
    if not sep or not line.isdigit():
        file, line = key, ""
    base = Path(file).name or "graph"
    name = f"{base}_{line}" if line else base
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "graph"


def _same(a: Site | None, b: Site | None) -> bool:
    return a is not None and b is not None and a.line == b.line and os.path.abspath(a.file) == os.path.abspath(b.file)


def highlight(graph: Graph, key: str, site: Site | None, findings: Iterable[Finding]) -> Graph:
    """``graph`` with what the findings about it name marked, and its title stating the premise.

    A finding is about the graph when it names it (``finding.graph``) or its backward site.
    ``stray-grad`` marks the parameters that took the stray step (and which ``step()`` line),
    ``inplace-saved`` the parameters modified in place, ``second-backward`` the nodes whose buffers
    were freed; the title says which optimizer the backward is for and which rules fired.
    """
    graph = graph.with_highlights(*crossings(graph))  # where one network's output enters another
    return mark(graph, findings_about(graph, findings, key=key, site=site))


def write(
    report: Report,
    out_dir: str | os.PathLike[str],
    graphs: Mapping[str, Graph] | None = None,
    *,
    sites: Mapping[str, Site] | None = None,
    draw: bool = True,
    max_graphs: int = DEFAULT_MAX_GRAPHS,
    warn: Callable[[str], None] | None = None,
) -> Written:
    """Write ``report.json`` and (unless ``draw`` is false) the graphs into ``out_dir``.

    Args:
        report: the report; its ``graphs`` entries are replaced by the files written.
        out_dir: the folder (created if needed).
        graphs: graph key (``"train.py:56"``) -> graph, the first graph of each backward site.
        sites: graph key -> backward site, for the report entries and the highlights.
        draw: write graphs at all.
        max_graphs: the most graphs written; those that findings are about come first.
        warn: called with each warning (a missing ``dot``, a graph ``dot`` could not lay out).

    Raises:
        LensError: the folder or a file in it cannot be written.
    """
    out = prepare(out_dir)
    warnings: list[str] = []

    def warning(text: str) -> None:
        warnings.append(text)
        if warn is not None:
            warn(text)

    _remove_previous(out)
    entries: list[dict[str, Any]] = []
    files: list[Path] = []
    skipped = 0
    chosen = _choose(report, graphs or {}, sites or {}, max_graphs) if draw else []
    skipped = (len(graphs or {}) - len(chosen)) if draw else 0
    if chosen:
        gdir = out / GRAPHS_DIR
        _mkdir(gdir)
        svg_ok = _dot_available()
        if not svg_ok:
            from .render.dot import INSTALL_HINT

            warning(f"Graphviz `dot` was not found, so graphs are written as .json only; {INSTALL_HINT}")
        used: set[str] = set()
        for key, graph in chosen:
            site = (sites or {}).get(key)
            graph = highlight(graph, key, site, report.findings)
            name = _unique(safe_name(key), used)
            json_path = gdir / f"{name}.json"
            write_bytes(json_path, graph.to_json(indent=1).encode("utf-8"))
            files.append(json_path)
            svg_rel = None
            if svg_ok:
                svg = _render_svg(graph, key, warning)
                if svg is not None:
                    svg_path = gdir / f"{name}.svg"
                    write_bytes(svg_path, svg)
                    files.append(svg_path)
                    svg_rel = f"{GRAPHS_DIR}/{name}.svg"
            entries.append(
                {
                    "key": key,
                    "site": site.to_dict() if site is not None else None,
                    "title": graph.title,
                    "nodes": len(graph),
                    "svg": svg_rel,
                    "json": f"{GRAPHS_DIR}/{name}.json",
                }
            )
    report = dataclasses.replace(report, graphs=tuple(entries))
    report_path = out / REPORT_NAME
    write_bytes(report_path, (report.to_json() + "\n").encode("utf-8"))
    html_path: Path | None = out / HTML_NAME
    if draw:
        from .render.html import write_html  # (it imports graph, and so torch: only when drawing)

        html_path = write_html(report_path, warn=warning, write=write_bytes)
    else:
        if html_path is not None and html_path.is_file():  # an earlier run's page would show another report
            _unlink(html_path)
        html_path = None
    return Written(report, out, report_path, files, len(entries), skipped, warnings, html_path=html_path)


def write_or_fallback(
    report: Report,
    out_dir: str | os.PathLike[str],
    graphs: Mapping[str, Graph] | None = None,
    *,
    warn: Callable[[str], None] | None = None,
    **options: Any,
) -> Written:
    """:func:`write` into ``out_dir``, or, when that fails, into a new temporary folder.

    The run that produced the report has happened; losing its report to a folder that went away
    or became unwritable helps no one. ``warn`` says where the report went instead, and
    ``Written.fallback_from`` is the folder that failed. ``LensError`` only when the temporary
    folder cannot be written either.
    """
    try:
        return write(report, out_dir, graphs, warn=warn, **options)
    except LensError as exc:
        reason = " ".join(str(exc).split())
    try:
        temp = Path(tempfile.mkdtemp(prefix="lens-out-"))
    except OSError as exc:
        raise LensError(f"{reason}; and no temporary folder could be made: {exc.strerror or exc}") from None
    if warn is not None:
        warn(f"{reason}; the report is written to {temp} instead")
    written = write(report, temp, graphs, warn=warn, **options)
    written.fallback_from = Path(out_dir)
    return written


def _choose(
    report: Report, graphs: Mapping[str, Graph], sites: Mapping[str, Site], limit: int
) -> list[tuple[str, Graph]]:
    """Up to ``limit`` graphs: those the findings are about first, then by order of first backward."""
    keys = list(graphs)
    named: list[str] = []
    for f in report.findings:
        for k in keys:
            if k not in named and (f.graph == k or _same(f.backward, sites.get(k)) or _same(f.site, sites.get(k))):
                named.append(k)
    order = named + [k for k in keys if k not in named]
    picked = set(order[: max(0, limit)])
    return [(k, graphs[k]) for k in keys if k in picked]


def _unique(name: str, used: set[str]) -> str:
    candidate, i = name, 2
    while candidate in used:
        candidate, i = f"{name}_{i}", i + 1
    used.add(candidate)
    return candidate


def _dot_available() -> bool:
    from .render.dot import dot_program

    try:
        dot_program()
    except LensError:
        return False
    return True


def _render_svg(graph: Graph, key: str, warning: Callable[[str], None]) -> bytes | None:
    from .render.dot import render

    try:
        return render(graph, "svg")
    except LensError as exc:
        warning(f"graph of {key} written as .json only: {exc}")
        return None


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LensError(f"cannot create folder {str(path)!r}: {exc.strerror or exc}") from None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError as exc:
        raise LensError(f"cannot remove the earlier {str(path)!r}: {exc.strerror or exc}") from None


def _remove_previous(out: Path) -> None:
    """Remove the graph files an earlier report in ``out`` listed, so no stale drawing stays."""
    try:
        previous = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
        entries = previous.get("graphs", [])
    except (OSError, ValueError, AttributeError):
        return
    gdir = (out / GRAPHS_DIR).resolve()
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        for k in ("svg", "json"):
            rel = entry.get(k)
            if not isinstance(rel, str):
                continue
            p = (out / rel).resolve()
            if p.parent == gdir and p.suffix in (".svg", ".json"):
                try:
                    p.unlink()
                except OSError:
                    pass
