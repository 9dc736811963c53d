"""autograd_lens: see PyTorch autograd graphs and find out why your gradients are wrong."""

from __future__ import annotations

from .draw import draw
from .errors import LensError
from .graph import Graph, Highlight, Node, Output, SavedTensor

__version__ = "0.1.0"

__all__ = [
    "Graph",
    "Highlight",
    "LensError",
    "Node",
    "Output",
    "SavedTensor",
    "__version__",
    "draw",
]
