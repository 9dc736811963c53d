"""The report: deduplicated findings plus the tables of backward calls and optimizer steps.

``Report`` is data; the terminal view (rich), the plain text and the JSON are views over it. The
rows of its two tables come from :mod:`autograd_lens.render.tables`, shared with the HTML report.

Imports :mod:`~autograd_lens.files`, :mod:`~autograd_lens.findings`, :mod:`~autograd_lens.source`
and :mod:`~autograd_lens.render.tables` at load, and :mod:`~autograd_lens.render.fragment` when
``_repr_html_`` is called; none of them imports this module. ``finding_text`` (from ``findings``)
and ``flow_rows``/``step_rows`` (from ``render.tables``) are importable from here too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from .files import write_bytes
from .findings import ERROR, WARNING, Finding, Site, finding_lines, severity_rank
from .findings import finding_text  # noqa: F401  its import path before it moved to findings
from . import source
from .render.tables import FLOW_TITLE, STEP_TITLE, flow_rows, step_rows

SCHEMA = "autograd_lens.report/1"


def dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per (rule, site, optimizer), counted, most severe first, then by site."""
    first: dict[Any, Finding] = {}
    counts: dict[Any, int] = {}
    for f in findings:
        k = f.key
        if k in first:
            counts[k] += f.count
        else:
            first[k] = f
            counts[k] = f.count
    out = [f.counted(counts[k]) for k, f in first.items()]
    out.sort(key=lambda f: (severity_rank(f.severity), f.site.file if f.site else "", f.site.line if f.site else 0))
    return out


@dataclass(frozen=True)
class BackwardSummary:
    """All backward calls made at one site."""

    site: Site
    count: int
    roots: tuple[str, ...]
    retain_graph: bool
    kind: str  # "backward" or "grad"
    networks: dict[str, str]  # network -> "reached" | "detached" | "not reached"
    params_reached: int

    @property
    def call(self) -> str:
        """The backward call as written (``errD.backward()``), without the rest of its line."""
        return source.call_source(self.site.file, self.site.line, source.BACKWARD_METHODS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site.to_dict(),
            "source": self.call,
            "count": self.count,
            "roots": list(self.roots),
            "retain_graph": self.retain_graph,
            "kind": self.kind,
            "networks": dict(self.networks),
            "params_reached": self.params_reached,
        }


@dataclass(frozen=True)
class StepSummary:
    """All ``step()`` calls of one optimizer at one site."""

    optimizer: str
    site: Site
    count: int
    sources: dict[str, int]  # backward site "file:line" -> how many steps consumed gradient from it
    params: int

    @property
    def call(self) -> str:
        """The step call as written (``optimizerD.step()``)."""
        return source.call_source(self.site.file, self.site.line, source.STEP_METHODS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "site": self.site.to_dict(),
            "source": self.call,
            "count": self.count,
            "sources": dict(self.sources),
            "params": self.params,
        }


@dataclass(frozen=True)
class Report:
    """What a ``watch()`` saw: findings (deduplicated), backward calls, steps, graphs."""

    findings: tuple[Finding, ...] = ()
    backwards: tuple[BackwardSummary, ...] = ()
    steps: tuple[StepSummary, ...] = ()
    graphs: tuple[dict[str, Any], ...] = ()  # {"key", "site", "path"?}
    networks: tuple[str, ...] = ()
    script: str | None = None
    status: str = "ok"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    # ----- queries ----------------------------------------------------------------------------
    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == WARNING)

    def by_rule(self, rule: str) -> list[Finding]:
        return [f for f in self.findings if f.rule == rule]

    def rules(self) -> set[str]:
        return {f.rule for f in self.findings}

    def filtered(self, *, select: Sequence[str] | None = None, ignore: Sequence[str] = ()) -> Report:
        from dataclasses import replace

        keep = tuple(
            f for f in self.findings if (not select or f.rule in select) and f.rule not in set(ignore)
        )
        return replace(self, findings=keep)

    def __bool__(self) -> bool:  # a report is always truthy; use .findings to test for problems
        return True

    # ----- views ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "script": self.script,
            "status": self.status,
            "error": self.error,
            "findings": [f.to_dict() for f in self.findings],
            "backwards": [b.to_dict() for b in self.backwards],
            "steps": [s.to_dict() for s in self.steps],
            "graphs": [dict(g) for g in self.graphs],
            "networks": list(self.networks),
            **({"world_size": self.extra["world_size"]} if "world_size" in self.extra else {}),
            **({"stepped_aside": dict(self.extra["stepped_aside"])} if self.extra.get("stepped_aside") else {}),
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        """Write the JSON to ``path`` atomically (a temporary file beside it, then a rename)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(p, (self.to_json() + "\n").encode("utf-8"))
        return p

    def text(self, width: int = 100) -> str:
        import io

        buf = io.StringIO()
        Console(file=buf, width=width, color_system=None, highlight=False).print(self)
        return buf.getvalue()

    def __str__(self) -> str:
        return self.text()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from renderables(self)

    def _repr_html_(self) -> str:
        """In a notebook: the findings in the rustc form and the tables, as HTML."""
        from .render.fragment import report_fragment

        return report_fragment(self, [])


def renderables(report: Report, *, totals: bool = True) -> list[Any]:
    """The terminal view, piece by piece: findings, flow table, step table, and (with ``totals``)
    the line that counts errors and warnings."""
    out: list[Any] = []
    if not report.findings:
        if not report.backwards and not report.steps:
            out.append(Text("autograd_lens: no autograd activity was seen (no backward call, no optimizer step)."))
        else:
            out.append(Text("autograd_lens: no findings.", style="green"))
    for f in report.findings:
        out.append(finding_renderable(f))
        out.append(Text(""))
    if report.backwards:
        out.append(flow_table(report))
    if report.steps:
        out.append(step_table(report))
    n_err, n_warn = len(report.errors), len(report.warnings)
    if totals and report.findings:
        out.append(
            Text(
                f"{n_err} error{'s' if n_err != 1 else ''}, {n_warn} warning{'s' if n_warn != 1 else ''}",
                style="bold red" if n_err else "bold yellow",
            )
        )
    return out


def finding_renderable(f: Finding) -> Group:
    """The finding in the rustc form, coloured, for a rich console."""
    return Group(*(Text(text, style=style) for style, text in finding_lines(f)))


def flow_table(report: Report) -> Table:
    """Each backward site against each network: reached, stopped at a detach, not reached."""
    head, rows = flow_rows(report)
    table = Table(title=FLOW_TITLE, title_justify="left", min_width=len(FLOW_TITLE))
    for i, h in enumerate(head):
        if i == 0:
            table.add_column(h, overflow="fold")
        elif i == 2 or h == "params" and i == 3:
            table.add_column(h, justify="right")
        else:
            table.add_column(h, no_wrap=True)
    styles = {"reached": "green", "detached": "cyan", "not reached": "dim"}
    for row in rows:
        table.add_row(*(Text(text, style=styles.get(state, "")) if i != 2 else text for i, (text, state) in enumerate(row)))
    return table


def step_table(report: Report) -> Table:
    """Each ``step()`` site: how many steps, and which backward sites its gradients came from."""
    head, rows = step_rows(report)
    table = Table(title=STEP_TITLE, title_justify="left", min_width=len(STEP_TITLE))
    table.add_column(head[0], no_wrap=True)
    table.add_column(head[1], no_wrap=True)
    table.add_column(head[2], justify="right")
    table.add_column(head[3])
    for r in rows:
        table.add_row(Text(r[0]), Text(r[1]), r[2], Text(r[3]))
    return table
