"""Checks that hold for every test: each ``report.json`` a test writes under its ``tmp_path``
matches the JSON Schema shipped in the package, and each graph file next to it reads back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from autograd_lens.graph import Graph
from autograd_lens.schema import report_schema

_VALIDATOR = jsonschema.Draft202012Validator(report_schema(), format_checker=jsonschema.FormatChecker())


def check_report(data: Any) -> None:
    """Fail with the first schema error of a ``report.json`` (as data)."""
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        pytest.fail(f"report.json does not match its schema at {where}: {e.message}", pytrace=False)


def check_report_files(folder: Path) -> int:
    """Validate every ``report.json`` below ``folder`` and the graphs it lists; how many."""
    n = 0
    for path in sorted(folder.rglob("report.json")):
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        check_report(data)
        for entry in data.get("graphs", []):
            if entry.get("json"):
                Graph.from_json(path.parent / entry["json"])
        n += 1
    return n


@pytest.fixture(autouse=True)
def _reports_match_their_schema(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    tmp = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if isinstance(tmp, Path) and tmp.is_dir():
        check_report_files(tmp)
