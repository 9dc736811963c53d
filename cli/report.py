"""``lens report``: the HTML page of a saved ``report.json``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("report", metavar="REPORT.json", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="HTML file to write (default: report.html beside REPORT.json).",
)
def report(report: Path, output: Path | None) -> None:
    """Write the HTML report of a saved run: findings, tables and graphs in one file.

    REPORT.json is the report.json that `lens trace` wrote (or the folder that holds it); the graph
    files it lists are read from beside it. The page needs no network: open it in any browser.
    """
    from autograd_lens.output import REPORT_NAME  # imports torch: only when the command runs
    from autograd_lens.render.html import write_html

    if report.is_dir():
        report = report / REPORT_NAME

    def warn(text: str) -> None:
        click.echo(f"lens: warning: {text}", err=True)

    path = write_html(report, output, warn=warn)
    click.echo(f"wrote {path}")
