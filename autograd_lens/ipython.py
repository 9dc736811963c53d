"""The IPython extension: ``%load_ext autograd_lens``, then ``%%lens`` runs a cell under
:func:`~autograd_lens.watch` and shows its report (findings, tables, graphs) below the cell.

Sites in a notebook read as the cell they are in (``Cell In[4], line 10``), with the lines of
the cell as you see them (the ``%%lens`` line is line 1).
"""

from __future__ import annotations

import shlex
from typing import Any

from .errors import LensError
from .findings import Site, rel_path, site_text

__all__ = ["load_ipython_extension", "run_cell"]


def _usage(line: str) -> tuple[bool, list[str], list[str]]:
    """``--no-graphs``, ``--select RULE,...``, ``--ignore RULE,...`` from the magic's line."""

    graphs = True
    select: list[str] = []
    ignore: list[str] = []
    words = shlex.split(line)
    i = 0
    while i < len(words):
        w = words[i]
        if w == "--no-graphs":
            graphs = False
        elif w in ("--select", "--ignore") and i + 1 < len(words):
            (select if w == "--select" else ignore).extend(r for r in words[i + 1].split(",") if r)
            i += 1
        else:
            raise LensError(f"%%lens: unknown option {w!r}; use --no-graphs, --select RULE,..., --ignore RULE,...")
        i += 1
    return graphs, select, ignore


def run_cell(shell: Any, line: str, cell: str) -> Any:
    """Run ``cell`` in ``shell``'s namespace under ``watch()``; display and return the report."""
    from IPython.display import HTML, display

    from .output import highlight
    from .render.html import report_fragment
    from .watch import watch

    try:
        graphs_on, select, ignore = _usage(line)
    except LensError as exc:  # one line, no traceback
        print(f"lens: error: {exc}")
        return None
    # the number IPython gave the cell that runs this magic: the last one it compiled
    numbers = list(getattr(shell.compile, "_filename_map", {}).values())
    number = numbers[-1] if numbers else shell.execution_count
    # one empty line first: the lines of the code are the lines of the cell below `%%lens`
    source = "\n" + shell.transform_cell(cell)
    filename = shell.compile.cache(source, number, raw_code="\n" + cell)
    code = shell.compile(source, filename, "exec")
    with watch() as w:
        try:
            exec(code, shell.user_ns)
        except BaseException:  # shown as IPython shows it (with the lens's notes); the report follows
            shell.showtraceback()
    report = w.report.filtered(select=select or None, ignore=ignore)
    entries = []
    if graphs_on:
        sites = {f"{rel_path(b.site.file)}:{b.site.line}": b.site for b in report.backwards}
        for key, graph in w.graphs.items():
            site = sites.get(key)
            g = highlight(graph, key, site, report.findings)
            if site is not None:
                g = g.with_title(g.title.replace(f"({key})", f"({site_text(site.file, site.line)})"))
            entries.append(({"key": key, "site": site.to_dict() if isinstance(site, Site) else None}, g))
    display(HTML(report_fragment(report, entries)))
    return report


def load_ipython_extension(shell: Any) -> None:
    """Register ``%%lens`` (called by ``%load_ext autograd_lens``)."""
    from IPython.core.magic import Magics, cell_magic, magics_class

    @magics_class
    class LensMagics(Magics):
        @cell_magic
        def lens(self, line: str, cell: str) -> None:
            """Run the cell under autograd_lens's ``watch()`` and show its report.

            Options: ``--no-graphs``, ``--select RULE,...``, ``--ignore RULE,...``.
            """
            run_cell(self.shell, line, cell)

    shell.register_magics(LensMagics)
