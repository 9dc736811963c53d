"""Views of a :class:`~autograd_lens.graph.Graph`: DOT/SVG/PNG/PDF through Graphviz (what reaches
``dot`` is planned in :mod:`.layout`: folds, module clusters, a layout budget), JSON, a rich tree
for the terminal, the marks a drawing shows (:mod:`.marks`), and the HTML report (:mod:`.html`)."""

from __future__ import annotations

from .dot import FORMATS, render, save, to_dot
from .tree import to_text, to_tree

__all__ = ["FORMATS", "render", "save", "to_dot", "to_text", "to_tree"]
