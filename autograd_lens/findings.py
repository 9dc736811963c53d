"""``Finding``: what a check reports, as plain data (rule, severity, sites, names, fix).

A finding only holds facts. Its text in the rustc form is made here, as ``(style, text)`` lines
(:func:`finding_lines`): the single source of ``Finding.text()``, the terminal view (rich, in
:mod:`autograd_lens.report`) and the HTML report, which only style those lines.

Imports nothing from the package: every other module may import this one.
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

ERROR = "error"
WARNING = "warning"
SEVERITIES = (ERROR, WARNING)
_RANK = {ERROR: 0, WARNING: 1}


def rel_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it, else as given."""
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed
        return path
    return _rel_path(path, cwd)


def abs_path(path: str) -> str:
    """``path`` made absolute; pseudo-files such as ``<string>`` stay as they are."""
    if path.startswith("<") and path.endswith(">"):
        return path
    try:
        return os.path.abspath(path)
    except OSError:
        return path


@functools.lru_cache(maxsize=1024)
def _rel_path(path: str, cwd: str) -> str:
    try:
        rel = os.path.relpath(path, cwd)
    except ValueError:
        return path
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def cell_name(path: str) -> str | None:
    """``"Cell In[4]"`` when ``path`` is the file name IPython gave a notebook cell, else None."""
    ipython = sys.modules.get("IPython")
    if ipython is None or not path.endswith(".py"):
        return None
    try:
        shell = ipython.get_ipython()
        number = shell.compile._filename_map.get(path) if shell is not None else None
    except Exception:  # an IPython without the cell map, or a shell that is shutting down
        return None
    return f"Cell In[{number}]" if number is not None else None


def site_text(path: str, line: int | str) -> str:
    """Where a site is, as a reader finds it: ``train.py:56``, or ``Cell In[4], line 10``."""
    cell = cell_name(path)
    return f"{cell}, line {line}" if cell else f"{rel_path(path)}:{line}"


def severity_rank(severity: str) -> int:
    """0 for errors, 1 for warnings: sort key, most severe first."""
    return _RANK.get(severity, 2)


@dataclass(frozen=True, slots=True)
class Site:
    """A place in the user's source: file, line, and the function it is in."""

    file: str
    line: int
    function: str = ""

    @property
    def source(self) -> str:
        """The source line, stripped (empty when the file cannot be read)."""
        return linecache.getline(self.file, self.line).strip()

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def key(self) -> str:
        """``train.py:56``: the file relative to the working directory, and the line."""
        return f"{rel_path(self.file)}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        """``file`` relative to the working directory when the file lies below it (else absolute),
        ``path`` always absolute."""
        return {
            "file": rel_path(self.file),
            "path": abs_path(self.file),
            "line": self.line,
            "function": self.function,
        }


def _site(d: dict[str, Any] | None) -> Site | None:
    if not d:
        return None
    return Site(d.get("path") or d.get("file", ""), int(d.get("line", 0)), d.get("function", ""))


def site_of(d: Any) -> Site | None:
    """The site that ``d`` (written by :meth:`Site.to_dict`) holds; None when ``d`` is not a mapping."""
    return _site(d) if isinstance(d, Mapping) else None


@dataclass(frozen=True, slots=True)
class Label:
    """A secondary site with what it did (rustc's secondary label)."""

    site: Site
    text: str
    primary: bool = False


#: PyTorch's words for a backward through buffers an earlier backward freed (the recorder reads the
#: failed graph for them, the judge explains them).
SECOND_BACKWARD_ERROR = "backward through the graph a second time"
#: the start of PyTorch's warning for a read of `.grad` on a tensor that is not a leaf
NONLEAF_GRAD_WARNING = "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed"


@dataclass(frozen=True)
class Finding:
    """One problem the lens found.

    ``message`` stands on its own; ``fix`` says what to change; ``notes`` are facts. ``params`` lists the
    parameters concerned by name, ``optimizer`` the optimizer concerned (if any), ``tensor`` the
    tensor concerned (e.g. the one that should have been detached). ``count`` says how many times
    the same rule fired at the same site.
    """

    rule: str
    severity: str
    message: str
    site: Site | None
    labels: tuple[Label, ...] = ()
    notes: tuple[str, ...] = ()
    fix: str = ""
    params: tuple[str, ...] = ()
    optimizer: str | None = None
    tensor: str | None = None
    backward: Site | None = None
    count: int = 1
    graph: str | None = None  # key of the graph snapshot this finding is about
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple[str, str | None, int | None, str | None]:
        """Deduplication key: rule and site (and optimizer, which can differ at one site)."""
        return (
            self.rule,
            self.site.file if self.site else None,
            self.site.line if self.site else None,
            self.optimizer,
        )

    def counted(self, n: int) -> Finding:
        return replace(self, count=n)

    def short(self) -> str:
        """One line: ``error[stray-grad] train.py:71: message``."""
        where = ""
        if self.site is not None:
            cell = cell_name(self.site.file)
            where = f" {cell}, line {self.site.line}" if cell else f" {self.site}"
        times = f" (x{self.count})" if self.count > 1 else ""
        return f"{self.severity}[{self.rule}]{where}: {self.message}{times}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "site": self.site.to_dict() if self.site else None,
            "count": self.count,
            "params": list(self.params),
            "optimizer": self.optimizer,
            "tensor": self.tensor,
            "backward": self.backward.to_dict() if self.backward else None,
            "fix": self.fix,
            "notes": list(self.notes),
            "labels": [
                {"site": lab.site.to_dict(), "text": lab.text, "primary": lab.primary} for lab in self.labels
            ],
            "graph": self.graph,
            **({"networks": list(self.extra["networks"])} if self.extra.get("networks") else {}),
            **({"for": list(self.extra["for"])} if self.extra.get("for") else {}),
            **({"ranks": list(self.extra["ranks"])} if "ranks" in self.extra else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """The finding written by :meth:`to_dict` (``report.json``)."""
        return cls(
            rule=d["rule"], severity=d["severity"], message=d["message"], site=_site(d.get("site")),
            labels=tuple(Label(_site(lab["site"]) or Site("", 0), lab["text"], bool(lab.get("primary")))
                         for lab in d.get("labels", ())),
            notes=tuple(d.get("notes", ())), fix=d.get("fix", ""), params=tuple(d.get("params", ())),
            optimizer=d.get("optimizer"), tensor=d.get("tensor"), backward=_site(d.get("backward")),
            count=int(d.get("count", 1)), graph=d.get("graph"),
            extra={k: (tuple(d[k]) if k == "ranks" else list(d[k])) for k in ("networks", "for", "ranks") if k in d},
        )

    def text(self, width: int = 100) -> str:
        """The full rustc-style text, plain (no colour)."""
        return finding_text(self, width=width)

    def __str__(self) -> str:
        return self.text()


# ----------------------------------------------------------------------------------------------
# The text of a finding, rustc style
# ----------------------------------------------------------------------------------------------


def finding_lines(f: Finding) -> list[tuple[str, str]]:
    """The finding as (style, text) lines; the single source of the text and rich views."""
    lines: list[tuple[str, str]] = []
    sev_style = "bold red" if f.severity == ERROR else "bold yellow"
    times = f" (x{f.count})" if f.count > 1 else ""
    lines.append((sev_style, f"{f.severity}[{f.rule}]: {f.message}{times}"))
    if f.site is not None:
        lines.append(("blue", f"  --> {site_text(f.site.file, f.site.line)}"))
    labels = list(f.labels)
    if f.site is not None and not any(lab.primary for lab in labels):
        labels.append(Label(f.site, "", primary=True))
    shown = [lab for lab in labels if lab.site.file == (f.site.file if f.site else lab.site.file)]
    other = [lab for lab in labels if lab not in shown]
    shown.sort(key=lambda lab: lab.site.line)
    if shown:
        width = max(len(str(lab.site.line)) for lab in shown)
        pad = " " * width
        lines.append(("blue", f"{pad} |"))
        for lab in shown:
            src_full = _source_line(lab.site)
            lines.append(("", f"{lab.site.line:>{width}} | {src_full}"))
            stripped = src_full.lstrip()
            indent = len(src_full) - len(stripped)
            mark = ("^" if lab.primary else "-") * max(1, len(stripped))
            lines.append((sev_style if lab.primary else "blue", f"{pad} | {' ' * indent}{mark} {lab.text}".rstrip()))
    for lab in other:
        lines.append(("blue", f"  --> {site_text(lab.site.file, lab.site.line)}: {lab.text}"))
    for note in f.notes:
        lines.append(("", f"   = note: {note}"))
    if f.fix:
        lines.append(("bold green", f"help: {f.fix}"))
    return lines


def _source_line(site: Site) -> str:
    return linecache.getline(site.file, site.line).rstrip("\n").expandtabs(4) or "<source not available>"


def finding_text(f: Finding, width: int = 100) -> str:
    """The finding in the rustc form, plain text (no colour)."""
    return "\n".join(text for _, text in finding_lines(f))
