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
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
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
    by_hand: int = 0  # steps whose gradient came from no backward call (`.grad` set by hand)

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
            "by_hand": self.by_hand,
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
        print_report(Console(file=buf, width=width, color_system=None, highlight=False), self)
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


class FindingView:
    """The finding in the rustc form, coloured, for a rich console. :func:`print_report` prints its
    source lines and their marks unwrapped (a long source line stays one line over its marks)."""

    def __init__(self, f: Finding) -> None:
        self.lines = [(style, text, _CODE_LINE.match(text) is not None) for style, text in finding_lines(f)]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for style, text, _ in self.lines:
            yield Text(text, style=style)


#: the lines of a finding that show source (``12 | loss.backward()``) or mark it (``   | ^^^^``)
_CODE_LINE = re.compile(r"^ *\d* \| ")


def finding_renderable(f: Finding) -> FindingView:
    """The finding in the rustc form, coloured, for a rich console."""
    return FindingView(f)


#: the flow table's cells when the full words do not fit the width
_COMPACT = {"reached": "yes", "not reached": "-", "detached": "detach"}
_COMPACT_CAPTION = "yes: reached   -: not reached   detach: stopped at a .detach()"


class _FlowTable:
    """The flow table, laid out for the width it is given: with many networks, the cells say
    ``yes``/``-``/``detach`` and the network names wrap, so that the backward call, its line and
    its count always show in full."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield flow_table_for(self.report, options.max_width)


def flow_table(report: Report) -> _FlowTable:
    """Each backward site against each network: reached, stopped at a detach, not reached."""
    return _FlowTable(report)


def flow_table_for(report: Report, width: int) -> Table:
    """:func:`flow_table` for a console ``width`` columns wide."""
    head, rows = flow_rows(report)
    fixed = 3 if head[3:4] != ["params"] else 4  # backward, at, calls (, params): then networks

    def longest(head: list[str], rows: list[list[tuple[str, str]]]) -> list[int]:
        return [max(len(h), *(len(r[i][0]) for r in rows)) for i, h in enumerate(head)]

    compact = len(head) > fixed and sum(n + 3 for n in longest(head, rows)) + 1 > width  # + borders
    title = FLOW_TITLE
    if compact:
        files = {b.site.file for b in report.backwards}
        if len(files) == 1:  # one file: its name in the title, the line in the column
            title += f" (lines of {Path(next(iter(files))).name})"
            head = ["backward", "line", *head[2:]]
            rows = [[r[0], (str(b.site.line), ""), *r[2:]] for r, b in zip(rows, report.backwards)]
        rows = [[*r[:fixed], *((_COMPACT.get(state, text), state) for text, state in r[fixed:])] for r in rows]
    table = Table(
        title=title, title_justify="left", min_width=len(FLOW_TITLE),
        caption=_COMPACT_CAPTION if compact else None, caption_justify="left",
    )
    widths = longest(head, rows)
    net_width = None
    if compact:  # the networks share what the other columns leave; their names wrap to fit
        left = width - 1 - sum(min(n, 30) + 3 for n in widths[:fixed])
        cells = max(len(r[i][0]) for r in rows for i in range(fixed, len(head)))
        net_width = max(cells, left // (len(head) - fixed) - 3)
    for i, h in enumerate(head):
        if i == 0:  # the call: wraps, never vanishes
            table.add_column(h, overflow="fold", min_width=min(widths[i], 30))
        elif i == 1:  # file:line: the line number must show
            table.add_column(h, overflow="fold", min_width=min(widths[i], 16))
        elif i < fixed:
            table.add_column(h, justify="right", min_width=len(h))
        elif net_width is not None:
            table.add_column(h, overflow="fold", width=min(widths[i], net_width))
        else:
            table.add_column(h, no_wrap=True)
    styles = {"reached": "green", "detached": "cyan", "not reached": "dim"}
    for row in rows:
        table.add_row(*(Text(text, style=styles.get(state, "")) if i != 2 else text for i, (text, state) in enumerate(row)))
    return table


def print_report(console: Console, report: Report, *, totals: bool = True) -> None:
    """Print :func:`renderables`: the words of findings wrapped to the console, their source lines
    and marks never (a long source line stays one line over its marks, as in rustc), tables fitted
    to the console."""
    for part in renderables(report, totals=totals):
        if isinstance(part, FindingView):
            for style, text, code in part.lines:
                console.print(Text(text, style=style), soft_wrap=code)
        else:
            console.print(part)


def step_table(report: Report) -> Table:
    """Each ``step()`` site: how many steps, and which backward sites its gradients came from."""
    head, rows = step_rows(report)
    table = Table(title=STEP_TITLE, title_justify="left", min_width=len(STEP_TITLE))
    table.add_column(head[0], overflow="fold", min_width=min(max(len(r[0]) for r in rows), 12) if rows else None)
    table.add_column(head[1], overflow="fold", min_width=min(max(len(r[1]) for r in rows), 16) if rows else None)
    table.add_column(head[2], justify="right", min_width=len(head[2]))
    table.add_column(head[3], overflow="fold")
    for r in rows:
        table.add_row(Text(r[0]), Text(r[1]), r[2], Text(r[3]))
    return table
