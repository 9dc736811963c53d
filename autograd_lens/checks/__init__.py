"""The rules: one module per rule, whose docstring is the page ``lens explain RULE`` prints.

A check reads events, the registry and graphs through a :class:`context.Context` and returns
findings; it never installs hooks, never prints, and never imports the runtime (the recorder, the
judge, the watch). The judge (:mod:`judge`) decides when each check runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType


from . import (
    ctx_tensor,
    dead_param,
    detach_leak,
    inplace_saved,
    missing_zero_grad,
    no_grad_path,
    nonleaf_grad,
    nonscalar_backward,
    retained_graph,
    second_backward,
    stray_grad,
)

_MODULES: tuple[ModuleType, ...] = (
    second_backward,
    inplace_saved,
    stray_grad,
    detach_leak,
    missing_zero_grad,
    dead_param,
    retained_graph,
    nonscalar_backward,
    no_grad_path,
    nonleaf_grad,
    ctx_tensor,
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


RULES: dict[str, Rule] = {
    m.RULE: Rule(m.RULE, m.SEVERITY, m.SUMMARY, m.__doc__ or "") for m in _MODULES
}


def get_rule(rule_id: str) -> Rule:
    from ..errors import LensError

    try:
        return RULES[rule_id]
    except KeyError:
        raise LensError(f"unknown rule {rule_id!r}; known rules: {', '.join(RULES)}") from None
