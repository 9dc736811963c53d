"""``lens``: the command-line front end. Each command lives in its own module and is registered
here with ``main.add_command``."""

from __future__ import annotations

from typing import Any

import click

from autograd_lens import __version__
from autograd_lens.errors import LensError

from . import exit_codes
from .draw import draw
from .explain import explain, rules
from .report import report
from .trace import trace


class LensGroup(click.Group):
    """A click group that turns a ``LensError`` into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LensError as exc:
            detail = getattr(exc, "detail", None)
            if detail:
                click.echo(str(detail).rstrip("\n"), err=True)
            message = " ".join(str(exc).split())
            click.echo(f"lens: error: {message}", err=True)
            ctx.exit(exit_codes.USAGE)


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


if __name__ == "__main__":  # pragma: no cover
    main()
