"""The rules: one module per rule, whose docstring is the page ``lens explain RULE`` prints.

A check reads events, the registry and graphs through a :class:`context.Context` and returns
findings; it never installs hooks, never prints, and never imports the runtime (the recorder, the
judge, the watch). The judge (:mod:`judge`) decides when each check runs.
"""

from __future__ import annotations

import ast
import importlib.resources
import re
from dataclasses import dataclass

#: the rule modules, in the order ``lens rules`` lists them
_NAMES = (
    "second_backward",
    "inplace_saved",
    "stray_grad",
    "detach_leak",
    "missing_zero_grad",
    "dead_param",
    "retained_graph",
    "nonscalar_backward",
    "no_grad_path",
    "nonleaf_grad",
    "ctx_tensor",
)

SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead")


@dataclass(frozen=True)
class Rule:
    """A rule: stable id, severity, one line, and its page of text."""

    id: str
    severity: str
    summary: str
    doc: str

    def section(self, title: str) -> str:
        """The text of one ``## title`` section of the page."""
        m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", self.doc, re.S | re.M)
        return m.group(1).strip() if m else ""

    @property
    def title(self) -> str:
        return self.doc.strip().split("\n\n", 1)[0].replace("\n", " ")


def _read(name: str) -> Rule:
    """A rule from its module's source (docstring, ``RULE``, ``SEVERITY``, ``SUMMARY``), without
    running the module: the catalog needs no torch (``lens rules`` and ``lens explain`` start fast)."""
    tree = ast.parse(importlib.resources.files(__name__).joinpath(f"{name}.py").read_text(encoding="utf-8"))
    values = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id in ("RULE", "SEVERITY", "SUMMARY")
    }
    return Rule(values["RULE"], values["SEVERITY"], values["SUMMARY"], ast.get_docstring(tree, clean=False) or "")


_RULES: dict[str, Rule] = {}


def rules() -> dict[str, Rule]:
    """Rule id -> rule, in catalog order; read on first use (a watch never needs the pages)."""
    if not _RULES:
        _RULES.update((r.id, r) for r in map(_read, _NAMES))
    return _RULES


def __getattr__(name: str) -> object:
    if name == "RULES":  # `from autograd_lens.checks import RULES` reads the catalog then
        return rules()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_rule(rule_id: str) -> Rule:
    from ..errors import LensError

    try:
        return rules()[rule_id]
    except KeyError:
        raise LensError(f"unknown rule {rule_id!r}; known rules: {', '.join(rules())}") from None
