"""``lens draw``: render a saved graph JSON again, as SVG, PNG, PDF, DOT or JSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from autograd_lens.graphfile import parse_text
from autograd_lens.render.dot import COLLAPSE_MODES, FORMATS, save

if TYPE_CHECKING:
    from autograd_lens.graph import Graph


def load_graph(path: Path) -> Graph:
    """A graph from a ``.json`` file written by ``Graph.save``; ``LensError`` with one clear line."""
    from autograd_lens.graph import Graph, read_text  # imports torch: only when the command runs

    return Graph.from_dict(parse_text(read_text(path, "graph file", "the JSON of a saved graph")))


class Seconds(click.ParamType):
    """A finite number of seconds above 0 (``nan`` and ``inf`` are not)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} is not a finite number of seconds above 0", param, ctx)
        return seconds


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("graph", metavar="GRAPH.json", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"File to write; the format follows the extension ({', '.join(FORMATS)}).",
)
@click.option("--collapse", type=click.Choice(COLLAPSE_MODES), default=None, help="How to reduce a large graph (default auto).")
@click.option("--max-nodes", type=click.IntRange(min=1), default=None, help="Most nodes handed to Graphviz (default 2000).")
@click.option("--no-saved", is_flag=True, help="Do not list saved tensors on op nodes.")
@click.option("--depth", type=click.IntRange(min=1), default=None, help="Module depth when collapsing to modules.")
@click.option("--timeout", type=Seconds(), default=None, help="Seconds to give Graphviz (default 60).")
def draw(
    graph: Path,
    output: Path,
    collapse: str | None,
    max_nodes: int | None,
    no_saved: bool,
    depth: int | None,
    timeout: float | None,
) -> None:
    """Render a saved graph to another format.

    GRAPH.json is a graph written by `lens.draw(loss).save("g.json")` or by `lens trace`.
    """
    g = load_graph(graph)
    options = {"collapse": collapse, "max_nodes": max_nodes, "depth": depth, "timeout": timeout}
    if no_saved:
        options["show_saved"] = False
    path = save(g, output, **{k: v for k, v in options.items() if v is not None})
    click.echo(f"wrote {path} ({len(g)} nodes)")
