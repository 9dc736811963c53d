"""Helpers for the tests that run examples and training loops under the lens."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

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
    return run_path(example(name), *args, raises=raises)


def run_path(
    path: Path, *args: str, raises: type[BaseException] | None = None, **options: object
) -> tuple[lens.Watch, BaseException | None]:
    """Run the script ``path`` as ``__main__`` with ``args`` under ``lens.watch(**options)``."""
    name = path.name
    argv = sys.argv
    sys.argv = [str(path), *args]
    error: BaseException | None = None
    try:
        with lens.watch(**options) as w:  # type: ignore[arg-type]
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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny convolutions and matmuls are far slower with intra-op threads than without."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def watched(fn: Callable[[], None], raises: type[BaseException] | None = None) -> tuple[Finding, ...]:
    """The findings of the loop ``fn`` run under ``lens.watch()`` (seeded); it must raise ``raises``."""
    torch.manual_seed(0)
    with lens.watch() as w:
        if raises is None:
            fn()
        else:
            with pytest.raises(raises):
                fn()
    assert w.internal_errors == []
    return w.report.findings


def short(findings: Sequence[Finding]) -> list[str]:
    return [f"{f.rule}:{f.site.line if f.site else None}:{f.optimizer}:{sorted(f.params)}" for f in findings]


@dataclass
class Expect:
    """A finding a buggy loop must give."""

    rule: str
    at: str  # the statement the finding points at (its first characters)
    params: Callable[[], set[str]] | None = None
    optimizer: str | None = None
    backward: str | None = None  # the statement of the backward call it names
    tensor: str | None = None
