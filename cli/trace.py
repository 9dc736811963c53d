"""``lens trace``: run a script (or ``-m MODULE``) under the lens, as ``python`` would run it.

Findings are printed to stderr as they happen; at the end the report goes to the terminal (stderr,
or on stdout as JSON, SARIF or GitHub workflow annotations with ``--format``) and to ``--out``
(``report.json`` and ``graphs/``). The work is done by :mod:`autograd_lens.runner`,
:mod:`autograd_lens.output` and the views in :mod:`autograd_lens.report`,
:mod:`autograd_lens.sarif` and :mod:`autograd_lens.github`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import click
from rich.console import Console
from rich.text import Text

from autograd_lens import frameworks, github, output, ranks, runner, sarif
from autograd_lens.errors import LensError
from autograd_lens.findings import ERROR, Finding, rel_path
from autograd_lens.report import Report, print_report

from . import exit_codes

FAIL_ON = runner.FAIL_ON
#: ``--format``: text on stderr; the others on stdout (the script's stdout then goes to stderr).
FORMATS = ("text", "json", "sarif", "github")


def _rule_list(values: Sequence[str]) -> tuple[str, ...]:
    """``("a,b", "c")`` -> ``("a", "b", "c")``, checked against the known rules."""
    ids = [part.strip() for v in values for part in v.split(",") if part.strip()]
    return runner.check_rules(ids)


def _console(stream: TextIO) -> Console:
    """A rich console on ``stream``: the terminal's width, or 100 columns when it is not a terminal."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    width = None if tty else int(os.environ.get("COLUMNS", "100") or 100)
    return Console(file=stream, width=width, highlight=False, soft_wrap=False, emoji=False)


def _live_line(f: Finding) -> Text:
    """``lens: error[stray-grad] train.py:71: message``, coloured by severity."""
    if f.site is not None:
        f = dataclasses.replace(f, site=dataclasses.replace(f.site, file=rel_path(f.site.file)))
    style = "bold red" if f.severity == ERROR else "bold yellow"
    head, _, rest = f.short().partition(" ")
    line = Text("lens: ", style="dim")
    line.append(head, style=style)
    line.append(" " + rest)
    return line


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _summary(result: runner.RunResult, fail_on: str) -> str:
    """One line: what was found, how the script ended, and the exit status."""
    report = result.report
    if not report.backwards and not report.steps and not report.findings:
        found = "no autograd activity (no backward call, no optimizer step)"
    else:
        if report.findings:
            found = f"{_plural(len(report.errors), 'error')}, {_plural(len(report.warnings), 'warning')}"
        else:
            found = "no findings"
        found += f" in {_plural(len(report.backwards), 'backward site')}"
    if result.interrupted:
        how = "interrupted by Ctrl-C; the report covers what ran"
    elif result.terminated:
        how = "terminated by SIGTERM; the report covers what ran"
    elif result.exception is not None:
        how = f"the script raised {type(result.exception).__name__}"
    elif result.script_status != 0:
        how = f"the script exited with status {result.script_status}"
    elif result.failing:
        how = f"findings at or above --fail-on {fail_on}"
    else:
        how = None
    tail = f"; exit status {result.exit_status} ({how})" if how else ""
    return f"lens: {found}{tail}"


def _shown(path: Path) -> str:
    """A path as the user reads it: relative to the working directory when below it."""
    return rel_path(str(path))


def _files_line(written: output.Written, draw: bool) -> str:
    text = f"lens: wrote {_shown(written.report_path)}"
    if written.html_path is not None:
        text += f"{',' if written.graphs_written else ' and'} {_shown(written.html_path)}"
    if written.graphs_written:
        svgs = sum(1 for g in written.report.graphs if g.get("svg"))
        json_only = "" if svgs == written.graphs_written else f" ({written.graphs_written - svgs} as .json only)"
        text += f" and {_plural(written.graphs_written, 'graph')}{json_only} in {_shown(written.out_dir / output.GRAPHS_DIR)}{os.sep}"
    if written.graphs_skipped:
        text += f" ({written.graphs_skipped} more not drawn: --max-graphs)"
    elif not draw:
        text += " (graphs not drawn: --no-graphs)"
    return text


@click.command(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
    },
    epilog=exit_codes.TRACE_HELP,
)
@click.option(
    "-m",
    "module",
    is_flag=True,
    help="SCRIPT is a module name, run as `python -m MODULE` would.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=str),
    metavar="DIR",
    default="lens-out",
    show_default=True,
    help="Folder for report.json and graphs/.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help=(
        "The report as text (stderr), or on stdout as JSON, SARIF 2.1.0 or GitHub workflow "
        "annotations (the script's stdout then goes to stderr)."
    ),
)
@click.option(
    "--fail-on",
    type=click.Choice(FAIL_ON),
    default="error",
    show_default=True,
    help=f"Least severe finding that makes the exit status {exit_codes.FINDINGS}.",
)
@click.option("--select", multiple=True, metavar="RULE,...", help="Report only these rules (see `lens rules`).")
@click.option("--ignore", multiple=True, metavar="RULE,...", help="Do not report these rules.")
@click.option("-q", "--quiet", is_flag=True, help="No findings while running and no report; only the summary.")
@click.option("--no-graphs", is_flag=True, help="Do not write graphs/.")
@click.option(
    "--skip-package",
    "skip_packages",
    multiple=True,
    metavar="PKG,...",
    help="Packages whose frames are not yours (besides Lightning and accelerate): findings point at "
    "the line that called into them. Also `skip-packages` in [tool.autograd_lens] of pyproject.toml.",
)
@click.option(
    "--max-graphs",
    type=click.IntRange(min=0),
    metavar="N",
    default=output.DEFAULT_MAX_GRAPHS,
    show_default=True,
    help="Most graphs written (one per backward site; those with findings first).",
)
@click.argument("script", metavar="SCRIPT")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def trace(
    ctx: click.Context,
    module: bool,
    out_dir: str,
    fmt: str,
    fail_on: str,
    select: tuple[str, ...],
    ignore: tuple[str, ...],
    quiet: bool,
    no_graphs: bool,
    skip_packages: tuple[str, ...],
    max_graphs: int,
    script: str,
    args: tuple[str, ...],
) -> None:
    """Run SCRIPT under the lens, as `python SCRIPT ARGS...` would.

    \b
      lens trace train.py --epochs 1 --lr 0.1
      lens trace -m pkg.train --epochs 1

    Arguments after SCRIPT (or -m MODULE) are the program's own. Findings are printed to stderr
    as they happen; at the end the report is printed, and written to --out: report.json, and
    graphs/<file>_<line>.svg and .json for the first graph of each backward site.
    """
    if script.startswith("-") and script != "-":
        raise click.NoSuchOption(script, ctx=ctx)
    if not out_dir.strip():
        raise click.BadParameter("needs a folder name (`--out .` for the current folder)", param_hint="'--out'")
    selected = _rule_list(select)
    ignored = _rule_list(ignore)
    program = runner.load_module(script) if module else runner.load_script(script)
    output.prepare(out_dir)
    # resolved now: a script that changes the working directory does not move the report
    out = Path(os.path.abspath(out_dir))
    # under torchrun each rank records in OUT/rank<N>/; rank 0 merges and is the only one to print
    rank = frameworks.rank()
    started = time.time()
    if rank is not None:
        top, out = out, ranks.rank_dir(out, rank[0])
        quiet = quiet or rank[0] != 0

    err = _console(sys.stderr)

    def on_finding(f: Finding) -> None:
        err.print(_live_line(f), soft_wrap=True)

    result = runner.run(
        program,
        args,
        on_finding=None if quiet else on_finding,
        select=selected,
        ignore=ignored,
        fail_on=fail_on,
        stdout_to_stderr=fmt != "text",
        findings_status=exit_codes.FINDINGS,
        skip=[*frameworks.config_skip_packages(), *(p.strip() for v in skip_packages for p in v.split(","))],
    )
    result.print_exception()

    warned: list[str] = []
    try:
        written = output.write_or_fallback(
            result.report,
            out,
            result.graphs,
            sites=result.graph_sites(),
            draw=not no_graphs,
            max_graphs=max_graphs,
            warn=warned.append,
        )
    except LensError as exc:  # not even a temporary folder: the run's status stands
        _show_report(result.report, err, fmt, quiet)
        err.print(_summary(result, fail_on), soft_wrap=True, markup=False)
        err.print(f"lens: error: {' '.join(str(exc).split())}", soft_wrap=True, markup=False)
        _exit(ctx, result)
        return
    if rank is not None:
        _ranks_end(ctx, result, written, top, rank, started, err, fmt, fail_on, no_graphs, warned)
        return
    _show_report(written.report, err, fmt, quiet)
    for text in warned:
        err.print(Text("lens: warning: ", style="bold yellow") + Text(text), soft_wrap=True)
    err.print(_summary(result, fail_on), soft_wrap=True, markup=False)
    err.print(_files_line(written, not no_graphs), soft_wrap=True, markup=False)
    _exit(ctx, result)


def _ranks_end(
    ctx: click.Context, result: runner.RunResult, written: output.Written, top: Path, rank: tuple[int, int],
    started: float, err: Console, fmt: str, fail_on: str, no_graphs: bool, warned: list[str],
) -> None:
    """Under torchrun: rank 0 merges every rank's report into TOP/report.json and prints it; the
    other ranks wait for it (the launcher would stop rank 0 once another rank has ended)."""
    me, world = rank
    if me != 0:
        ranks.wait_for([top / output.REPORT_NAME], started)
        _exit(ctx, result)
        return
    merged, missing = ranks.merge(written.report, top, world, started)
    failing = runner.failing_findings(merged, fail_on)
    if merged.status == runner.OK and failing:
        merged = dataclasses.replace(merged, status=runner.FINDINGS)
    try:
        path = merged.save(top / output.REPORT_NAME)
    except OSError as exc:
        path = None
        warned.append(f"cannot write the merged report in {top}: {exc.strerror or exc}")
    _show_report(merged, err, fmt, False)
    for text in warned:
        err.print(Text("lens: warning: ", style="bold yellow") + Text(text), soft_wrap=True)
    if missing:
        err.print(Text("lens: warning: ", style="bold yellow") + Text(
            f"no report from rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
            f"within {ranks.WAIT:g} s; the merged report covers the others"), soft_wrap=True)
    if result.exit_status == 0 and failing:
        result = dataclasses.replace(result, exit_status=exit_codes.FINDINGS, failing=failing, report=merged)
    else:
        result = dataclasses.replace(result, report=merged)
    err.print(_summary(result, fail_on) + f" on {world} ranks", soft_wrap=True, markup=False)
    if path is not None:
        err.print(f"lens: wrote {_shown(path)} (every rank) and each rank's report and graphs in "
                  f"{_shown(top)}{os.sep}rank<N>{os.sep}", soft_wrap=True, markup=False)
    _exit(ctx, result)


def _exit(ctx: click.Context, result: runner.RunResult) -> None:
    """Exit with the run's status; a program stopped by a signal ends the lens by that signal."""
    if result.signal is not None:
        raise exit_codes.SignalExit(result.signal)
    ctx.exit(result.exit_status)


def _write_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (ValueError, OSError):  # the program closed sys.stdout; file descriptor 1 is open
        os.write(1, text.encode())


def _show_report(report: Report, err: Console, fmt: str, quiet: bool) -> None:
    """The report on stdout (JSON, SARIF, GitHub annotations), and the text view on stderr for
    ``text`` and ``github`` (nothing with ``--quiet`` or an empty report)."""
    if fmt == "json":
        _write_stdout(report.to_json() + "\n")
        return
    if fmt == "sarif":
        _write_stdout(sarif.to_json(report) + "\n")
        return
    if fmt == "github":
        _write_stdout(github.annotations(report))
    if quiet or not (report.findings or report.backwards or report.steps):
        return
    err.print()
    err.rule(f"autograd_lens report: {report.script}", align="left", style="dim")
    print_report(err, report, totals=False)
