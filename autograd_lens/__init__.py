"""autograd_lens: see PyTorch autograd graphs and find out why your gradients are wrong."""

from __future__ import annotations

from .draw import draw
from .errors import LensError
from .findings import Finding, Label, Site
from .graph import Graph, Highlight, Node, Output, SavedTensor
from .report import Report
from .testing import expect, expect_clean
from .watch import Watch, watch

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext autograd_lens``: the ``%%lens`` cell magic (see :mod:`autograd_lens.ipython`)."""
    from .ipython import load_ipython_extension as load

    load(ipython)


__all__ = [
    "Finding",
    "Graph",
    "Label",
    "Report",
    "Site",
    "Watch",
    "watch",
    "Highlight",
    "LensError",
    "Node",
    "Output",
    "SavedTensor",
    "__version__",
    "draw",
    "expect",
    "expect_clean",
]
