"""Views of a :class:`~autograd_lens.graph.Graph`: DOT/SVG/PNG/PDF through Graphviz (what reaches
``dot`` is planned in :mod:`.layout`: folds, module clusters, a layout budget), JSON, a rich tree
for the terminal, the marks a drawing shows (:mod:`.marks`), the rows of the report's tables
(:mod:`.tables`), HTML fragments for notebooks (:mod:`.fragment`) and the HTML report (:mod:`.html`).

All but :mod:`.html` read graphs and reports by their attributes and import neither
:mod:`autograd_lens.graph` nor :mod:`autograd_lens.report` at run time, so both can use them;
:mod:`.html` builds the page from the saved files and imports both."""

from __future__ import annotations

from .dot import FORMATS, render, save, to_dot
from .tree import to_text, to_tree

__all__ = ["FORMATS", "render", "save", "to_dot", "to_text", "to_tree"]
