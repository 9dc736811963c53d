"""What a drawing points at: where one network's output enters another, and what findings name.

* :func:`crossings`: the edges where a tensor made by one network enters another (``fake`` from
  ``netG`` into ``netD``), from the graph alone, labelled with the variable when it is known;
* :func:`finding_marks`: the nodes and edges one finding is about (the parameters a stray step
  used, the edge where ``.detach()`` belongs, the nodes whose buffers a backward freed);
* :func:`mark`: a graph with the marks of several findings, and its title stating the premise
  (which optimizer the backward is for, which rule, which ``step()`` line).

Pure functions of data: they read a :class:`~autograd_lens.graph.Graph` and
:class:`~autograd_lens.findings.Finding` objects and return new highlights.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..graphfile import INPUT, PARAM, Highlight

if TYPE_CHECKING:
    from ..findings import Finding, Site
    from ..graph import Graph

__all__ = ["crossings", "finding_marks", "findings_about", "mark", "premise"]


def _top(module: str | None) -> str | None:
    return module.partition(".")[0] if module else None


def crossings(graph: Graph, var_of_node: Mapping[int, str] | None = None) -> list[Highlight]:
    """One ``crossing`` highlight per edge from a node of one network into an op of another.

    A network is the first part of a module name (``netG`` of ``netG.main.3``). Parameters feeding
    another network's ops (tied weights) are not crossings.
    """
    nodes = graph.nodes
    var_of_node = var_of_node or {}
    out: list[Highlight] = []
    seen: set[tuple[str | None, str | None, int]] = set()
    for a, b in graph.edges:
        na, nb = nodes[a], nodes[b]
        if na.kind in (PARAM, INPUT) or nb.kind in (PARAM, INPUT):
            continue
        ta, tb = _top(na.module), _top(nb.module)
        if ta is None or tb is None or ta == tb:
            continue
        if (ta, tb, a) in seen:
            continue
        seen.add((ta, tb, a))
        var = var_of_node.get(a)
        label = f"{var}: {ta} → {tb}" if var else f"{ta} → {tb}"
        out.append(Highlight("crossing", edge=(a, b), label=label))
    return out


def _same(a: Site | None, b: Site | None) -> bool:
    return a is not None and b is not None and a.line == b.line and os.path.abspath(a.file) == os.path.abspath(b.file)


def findings_about(
    graph: Graph, findings: Iterable[Finding], *, key: str | None = None, site: Site | None = None
) -> list[Finding]:
    """The findings about ``graph``: those that name it (``finding.graph == key``) or its backward
    site; without ``key`` and ``site``, those that name a parameter or tensor it holds."""
    if key is not None or site is not None:
        return [
            f for f in findings
            if (key is not None and f.graph == key) or _same(f.backward, site) or _same(f.site, site)
        ]
    params = set(graph.param_names)
    leak_vars = {h.label.split(":", 1)[0] for h in graph.highlights if h.tag in ("leak", "crossing") and h.label}
    return [f for f in findings if params.intersection(f.params) or (f.tensor and f.tensor in leak_vars)]


def finding_marks(graph: Graph, f: Finding) -> list[Highlight]:
    """The highlights for one finding on ``graph`` (empty when it names nothing drawn)."""
    out: list[Highlight] = []
    if f.rule == "second-backward":
        where = f" by line {f.backward.line}" if f.backward is not None else ""
        out += [Highlight("freed", node=n.id, label=f"buffers freed{where}") for n in graph.nodes if n.freed]
    elif f.rule in ("stray-grad", "inplace-saved"):
        if f.rule == "stray-grad":
            step = f"`{f.optimizer}.step()`" if f.optimizer else "a step"
            line = f" (line {f.site.line})" if f.site is not None else ""
            tag, label = "stray", f"stepped by {step}{line}"
        else:
            tag, label = "error", "modified in place"
        wanted = set(f.params)
        out += [Highlight(tag, node=n.id, label=label) for n in graph.nodes if n.kind == PARAM and n.name in wanted]
    if f.rule in ("detach-leak", "stray-grad") and f.tensor is not None:
        # the edge where that tensor enters another network: by its name, else the crossings
        # drawn without a name
        edges = [h for h in graph.highlights if h.edge is not None and h.tag in ("leak", "crossing")]
        named = [h for h in edges if h.label.split(":", 1)[0] == f.tensor and ":" in h.label]
        unnamed = [h for h in edges if h.tag == "crossing" and ":" not in h.label]
        for h in named or unnamed:
            out.append(Highlight("leak", edge=h.edge, label=f"{f.tensor}: detach here"))
    return out


def premise(findings: Iterable[Finding]) -> str:
    """``for `optimizerD` · error[stray-grad] at line 72 ...``: what the drawing assumes and shows."""
    fors: list[str] = []
    rules: list[str] = []
    for f in findings:
        for name in f.extra.get("for", ()) if isinstance(f.extra, dict) else ():
            if name not in fors:
                fors.append(name)
        where = f" at line {f.site.line}" if f.site is not None else ""
        text = f"{f.severity}[{f.rule}]{where}"
        if f.rule == "stray-grad" and f.optimizer:
            text += f": `{f.optimizer}.step()` took this gradient"
        elif f.rule == "detach-leak" and f.tensor:
            text += f": `{f.tensor}` not detached"
        if text not in rules:
            rules.append(text)
    parts = []
    if fors:
        parts.append("the backward for " + ", ".join(f"`{n}`" for n in fors))
    return " · ".join(parts + rules)


def mark(graph: Graph, findings: Iterable[Finding], *, title: bool = True) -> Graph:
    """``graph`` with the marks of ``findings`` (none repeated) and, with ``title``, the premise
    added to its title."""
    findings = list(findings)
    have = {(h.tag, h.node, h.edge) for h in graph.highlights}
    added: list[Highlight] = []
    for f in findings:
        for h in finding_marks(graph, f):
            k = (h.tag, h.node, h.edge)
            if k not in have:
                have.add(k)
                added.append(h)
    g = graph.with_highlights(*added) if added else graph
    if title and findings:
        text = premise(findings)
        if text and text not in g.title:
            g = g.with_title(f"{g.title} — {text}" if g.title else text)
    return g


def from_any(findings: Any) -> list[Finding]:
    """Findings from a list of them, a ``Report`` or a ``Watch`` (what ``draw(findings=)`` takes)."""
    from ..errors import LensError, describe
    from ..findings import Finding

    if findings is None:
        return []
    report = getattr(findings, "report", None)
    if report is not None and hasattr(report, "findings"):
        findings = report.findings
    elif hasattr(findings, "findings") and not isinstance(findings, (list, tuple)):
        findings = findings.findings
    if isinstance(findings, Finding):
        return [findings]
    try:
        out = list(findings)
    except TypeError:
        raise LensError(
            f"findings= takes a list of findings, a Report or a watch; got {describe(findings)}"
        ) from None
    bad = [f for f in out if not isinstance(f, Finding)]
    if bad:
        raise LensError(f"findings= takes Finding objects (w.report.findings); got {describe(bad[0])}")
    return out
