"""``lens explain RULE`` and ``lens rules``: the pages of the rules, from their module docstrings."""

from __future__ import annotations

import sys

import click
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from autograd_lens.checks import RULES, get_rule
from autograd_lens.findings import ERROR

from .trace import _console


def _severity(severity: str) -> Text:
    return Text(severity, style="bold red" if severity == ERROR else "bold yellow")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("rule", metavar="RULE")
def explain(rule: str) -> None:
    """Explain RULE: what it finds, why that is bad, an example and what to write instead.

    RULE is a rule id such as `stray-grad`; `lens rules` lists them.
    """
    r = get_rule(rule)
    out = _console(sys.stdout)
    head = Text(f"{r.id}", style="bold")
    head.append(" (")
    head.append_text(_severity(r.severity))
    head.append(f"): {r.summary}")
    out.print(head)
    out.print()
    out.print(Markdown(r.doc.strip(), code_theme="ansi_dark", inline_code_lexer="python"))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def rules() -> None:
    """List the rules: id, severity and what each one finds."""
    out = _console(sys.stdout)
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("rule")
    table.add_column("severity")
    table.add_column("finds")
    for r in RULES.values():
        table.add_row(r.id, _severity(r.severity), r.summary)
    out.print(table)
    out.print(Text("`lens explain RULE` shows a rule's page.", style="dim"))
