"""Views of a :class:`~autograd_lens.graph.Graph`: DOT/SVG/PNG/PDF through Graphviz, JSON, and a
rich tree for the terminal."""

from __future__ import annotations

from .dot import FORMATS, render, save, to_dot
from .tree import to_text, to_tree

__all__ = ["FORMATS", "render", "save", "to_dot", "to_text", "to_tree"]
