"""``lens``: the command-line front end. Each command lives in its own module and is registered
here with ``main.add_command``."""

from __future__ import annotations

import traceback
from typing import Any

import click

from autograd_lens import __version__
from autograd_lens.errors import LensError

from . import exit_codes
from .draw import draw
from .explain import explain, rules
from .report import report
from .trace import trace


def _usage_error(exc: click.UsageError) -> click.exceptions.Exit:
    """Say what was wrong in one line (``lens: error: ...``) and exit with ``exit_codes.USAGE``."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):  # `lens` alone: the help, as usual
        exc.show()
    else:
        where = exc.ctx.command_path if exc.ctx is not None else "lens"
        message = " ".join(exc.format_message().split()).rstrip(".")
        click.echo(f"lens: error: {message} (`{where} -h` for help)", err=True)
    return click.exceptions.Exit(exit_codes.USAGE)


class LensGroup(click.Group):
    """A click group that turns a ``LensError`` or a usage error into one line on stderr and exit
    status ``exit_codes.USAGE``, and reports a failure of the lens itself with
    ``exit_codes.INTERNAL``."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _usage_error(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage_error(exc) from None
        except LensError as exc:
            detail = getattr(exc, "detail", None)
            if detail:
                click.echo(str(detail).rstrip("\n"), err=True)
            message = " ".join(str(exc).split())
            click.echo(f"lens: error: {message}", err=True)
            ctx.exit(exit_codes.USAGE)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug of the lens: say so, with its traceback
            traceback.print_exc()
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            click.echo(f"lens: internal error: {message}", err=True)
            ctx.exit(exit_codes.INTERNAL)


@click.group(
    cls=LensGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=exit_codes.HELP,
)
@click.version_option(__version__, "--version", prog_name="lens", message="%(prog)s, version %(version)s")
def main() -> None:
    """See PyTorch autograd graphs and find out why your gradients are wrong."""


main.add_command(trace)
main.add_command(draw)
main.add_command(explain)
main.add_command(rules)
main.add_command(report)


def run() -> None:
    """The ``lens`` program (and ``python -m autograd_lens``): :data:`main`, and a program that
    SIGTERM or Ctrl-C stopped ends the lens by the same signal once the report is written."""
    try:
        main(prog_name="lens")
    except exit_codes.SignalExit as exc:
        exit_codes.exit_by_signal(exc.signum)


if __name__ == "__main__":  # pragma: no cover
    run()
