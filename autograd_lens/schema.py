"""The JSON Schema of ``report.json``, shipped with the package.

``report_schema()`` returns it as a dict (JSON Schema draft 2020-12); ``REPORT_SCHEMA`` is the path
of the file. Validate a report with any JSON Schema validator, e.g.::

    import json, jsonschema
    from autograd_lens.schema import report_schema
    jsonschema.validate(json.load(open("lens-out/report.json")), report_schema())
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

#: The schema file inside the installed package.
REPORT_SCHEMA = Path(__file__).resolve().parent / "schemas" / "report.schema.json"


@lru_cache(maxsize=1)
def _load() -> str:
    return REPORT_SCHEMA.read_text(encoding="utf-8")


def report_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json`` (a new dict each call)."""
    return json.loads(_load())
