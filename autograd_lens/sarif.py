"""The report as SARIF 2.1.0, the format code-scanning views and editors read.

``to_sarif(report)`` is one run of the tool ``autograd_lens``: the rules with their metadata from
the rule pages (``lens explain``: the docstrings of the check modules), and one result per finding
with its primary location, the secondary sites as related locations, and the fix as text. SARIF's
``fix`` object must carry concrete edits to files, which a finding's advice is not, so the fix goes
in the result's message (after ``help:``) and in its ``properties.fix``.

Locations below the working directory are relative to ``%SRCROOT%`` (the working directory, given
in ``originalUriBaseIds``); others are absolute ``file://`` URIs.

Example::

    $ lens trace --format sarif train.py > lens.sarif
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .checks import RULES, Rule
from .findings import ERROR, Finding, Site, abs_path, rel_path
from .report import Report

VERSION = "2.1.0"
SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SRCROOT = "%SRCROOT%"


def _level(severity: str) -> str:
    return "error" if severity == ERROR else "warning"


def rule_name(rule_id: str) -> str:
    """``stray-grad`` -> ``StrayGrad`` (SARIF's ``name``: an identifier-like friendly name)."""
    return "".join(part.capitalize() for part in rule_id.split("-"))


def rule_descriptor(rule: Rule) -> dict[str, Any]:
    """A SARIF ``reportingDescriptor`` from a rule's page."""
    doc = rule.doc.strip()
    return {
        "id": rule.id,
        "name": rule_name(rule.id),
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.section("What it does") or rule.title},
        "help": {"text": doc, "markdown": doc},
        "defaultConfiguration": {"level": _level(rule.severity)},
        "properties": {"tags": ["autograd", "pytorch"]},
    }


def _uri(file: str) -> tuple[str, str | None]:
    """(uri, uriBaseId): relative to ``%SRCROOT%`` below the working directory, else ``file://``."""
    rel = rel_path(file)
    if not os.path.isabs(rel) and not (rel.startswith("<") and rel.endswith(">")):
        return quote(Path(rel).as_posix()), SRCROOT
    full = abs_path(file)
    if full.startswith("<"):
        return quote(full), None
    return Path(full).as_uri(), None


def _location(site: Site, message: str | None = None, index: int | None = None) -> dict[str, Any]:
    uri, base = _uri(site.file)
    artifact: dict[str, Any] = {"uri": uri}
    if base is not None:
        artifact["uriBaseId"] = base
    physical: dict[str, Any] = {"artifactLocation": artifact}
    if site.line >= 1:
        physical["region"] = {"startLine": site.line}
    loc: dict[str, Any] = {"physicalLocation": physical}
    if index is not None:
        loc["id"] = index
    if message:
        loc["message"] = {"text": message}
    if site.function and site.function != "<module>":
        loc["logicalLocations"] = [{"name": site.function, "kind": "function"}]
    return loc


def result_text(f: Finding) -> str:
    """The message of a result: the finding's message, its notes, then ``help:`` and the fix."""
    parts = [f.message + (f" (x{f.count})" if f.count > 1 else "")]
    parts += [f"note: {n}" for n in f.notes]
    if f.fix:
        parts.append(f"help: {f.fix}")
    return "\n".join(parts)


def _result(f: Finding, index: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ruleId": f.rule,
        "level": _level(f.severity),
        "message": {"text": result_text(f)},
    }
    if f.rule in index:
        out["ruleIndex"] = index[f.rule]
    if f.site is not None:
        out["locations"] = [_location(f.site)]
    related = [lab for lab in f.labels if not (lab.primary and f.site is not None and lab.site == f.site)]
    if related:
        out["relatedLocations"] = [_location(lab.site, lab.text or None, i) for i, lab in enumerate(related)]
    props: dict[str, Any] = {"count": f.count}
    if f.fix:
        props["fix"] = f.fix
    if f.params:
        props["params"] = list(f.params)
    if f.optimizer:
        props["optimizer"] = f.optimizer
    if f.tensor:
        props["tensor"] = f.tensor
    out["properties"] = props
    return out


def to_sarif(report: Report) -> dict[str, Any]:
    """The SARIF 2.1.0 log of ``report``: one run, every rule, one result per finding."""
    from . import __version__

    rules = list(RULES.values())
    index = {r.id: i for i, r in enumerate(rules)}
    try:
        root = Path(os.getcwd()).as_uri() + "/"
    except OSError:
        root = None
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "autograd_lens",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [rule_descriptor(r) for r in rules],
            }
        },
        "invocations": [
            {
                "executionSuccessful": report.status in ("ok", "findings"),
                "properties": {"status": report.status, "error": report.error, "script": report.script},
            }
        ],
        "results": [_result(f, index) for f in report.findings],
        "columnKind": "unicodeCodePoints",
    }
    if root is not None:
        run["originalUriBaseIds"] = {SRCROOT: {"uri": root}}
    return {"$schema": SCHEMA_URI, "version": VERSION, "runs": [run]}


def to_json(report: Report, *, indent: int | None = 2) -> str:
    return json.dumps(to_sarif(report), indent=indent)
