"""What the assertions of :mod:`autograd_lens.testing` share: how messages list names, and the
findings an assertion already judged (the pytest plugin's ``--lens`` leaves those to the test).

It imports only :mod:`autograd_lens.naming` (and, for types, findings and watch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..naming import user_frame

if TYPE_CHECKING:
    from ..findings import Finding
    from ..watch import Watch

#: How many names a message lists before it says "and N more".
SHOWN_NAMES = 4
#: How many steps a path shows before it abbreviates the middle with "…".
PATH_STEPS = 9
ARROW = " ← "


def name_list(names: Sequence[str]) -> str:
    """``a``, ``b`` and ``c``, or the first few and "and N more"."""
    shown = [f"`{n}`" for n in names[:SHOWN_NAMES]]
    if len(names) > SHOWN_NAMES:
        return ", ".join(shown) + f" and {len(names) - SHOWN_NAMES} more"
    if len(shown) > 1:
        return ", ".join(shown[:-1]) + " and " + shown[-1]
    return shown[0] if shown else ""


def plural(n: int, word: str) -> str:
    """``1 error``, ``2 errors``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


#: Findings that an assertion of this module already judged, as ``(rule, file, line)``; a rule of
#: None claims every rule at that line. The pytest plugin's ``--lens`` leaves them to the test.
_claimed: set[tuple[str | None, str, int]] = set()


def claimed(f: Finding) -> bool:
    """Whether an assertion of this module already judged ``f`` (so ``--lens`` leaves it alone)."""
    if f.site is None:
        return False
    return (f.rule, f.site.file, f.site.line) in _claimed or (None, f.site.file, f.site.line) in _claimed


def reset_claims() -> None:
    """Forget what the assertions judged (the pytest plugin calls this before each test)."""
    _claimed.clear()


def claim_findings(w: Watch) -> None:
    """Every finding of ``w`` was judged by the assertion that ran it."""
    for f in w.report.findings:
        if f.site is not None:
            _claimed.add((f.rule, f.site.file, f.site.line))


def claim_caller() -> None:
    """Every finding at the calling line of the test was judged by the assertion."""
    frame = user_frame()
    try:
        if frame is not None:
            _claimed.add((None, frame.f_code.co_filename, frame.f_lineno))
    finally:
        del frame
