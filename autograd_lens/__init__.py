"""autograd_lens: see PyTorch autograd graphs and find out why your gradients are wrong.

The names below are imported when first used (PEP 562), so ``import autograd_lens`` and the parts
that need no tensors (``lens --help``, ``lens rules``, ``lens explain``) do not import torch.
``autograd_lens.watch`` and ``autograd_lens.draw`` are the functions, as they always were, even
once their modules (``autograd_lens.watch``, ``autograd_lens.draw`` in ``sys.modules``) are loaded.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "draw": ".draw",
    "LensError": ".errors",
    "Finding": ".findings",
    "Label": ".findings",
    "Site": ".findings",
    "Graph": ".graph",
    "Highlight": ".graph",
    "Node": ".graph",
    "Output": ".graph",
    "SavedTensor": ".graph",
    "Report": ".report",
    "expect": ".testing",
    "expect_clean": ".testing",
    "Watch": ".watch",
    "watch": ".watch",
}

if TYPE_CHECKING:
    from .draw import draw
    from .errors import LensError
    from .findings import Finding, Label, Site
    from .graph import Graph, Highlight, Node, Output, SavedTensor
    from .report import Report
    from .testing import expect, expect_clean
    from .watch import Watch, watch


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, "load_ipython_extension"})


class _Package(types.ModuleType):
    """The package's module type: a submodule that shares a public function's name (``watch``,
    ``draw``) does not replace the function when the import system loads it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f".{name}":
            return  # the module stays reachable as sys.modules["autograd_lens.<name>"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
