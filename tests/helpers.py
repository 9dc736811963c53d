"""Helpers for the tests that run the examples under the lens."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

import autograd_lens as lens
from autograd_lens import Finding

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str) -> Path:
    return EXAMPLES / name


def line_of(path: Path, text: str) -> int:
    """The line number of the one statement of ``path`` that starts with ``text``."""
    hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(text)]
    assert len(hits) == 1, f"{text!r} is on lines {hits} of {path.name}, expected exactly one"
    return hits[0]


def run_example(name: str, *args: str, raises: type[BaseException] | None = None) -> tuple[lens.Watch, BaseException | None]:
    """Run ``examples/NAME`` as ``__main__`` with ``args`` under ``lens.watch()``.

    Returns the watch and the exception the script raised (which must be of type ``raises``).
    """
    path = example(name)
    argv = sys.argv
    sys.argv = [str(path), *args]
    error: BaseException | None = None
    try:
        with lens.watch() as w:
            if raises is None:
                runpy.run_path(str(path), run_name="__main__")
            else:
                try:
                    runpy.run_path(str(path), run_name="__main__")
                except raises as exc:
                    error = exc
    finally:
        sys.argv = argv
    if raises is not None:
        assert error is not None, f"{name} {' '.join(args)} did not raise {raises.__name__}"
    return w, error


def by_rule(findings: Sequence[Finding], rule: str) -> Finding:
    """The one finding of ``rule``."""
    hits = [f for f in findings if f.rule == rule]
    assert len(hits) == 1, f"expected one {rule} finding, got {[f.short() for f in findings]}"
    return hits[0]


def rules(findings: Sequence[Finding]) -> set[str]:
    return {f.rule for f in findings}
