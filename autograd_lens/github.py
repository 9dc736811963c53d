"""The report as GitHub Actions workflow commands: one annotation per finding.

``::error file=train.py,line=71,title=autograd_lens stray-grad::message%0Ahelp: fix`` shows the
finding on that line of the pull request's diff and in the run's summary. Paths are relative to the
working directory (the checkout, in a workflow); the message carries the notes and the fix.
Property values and the message are escaped as the runner expects (``%``, line breaks, and in
properties also ``:`` and ``,``), so nothing in a message can end the command early or start
another one.

Example::

    $ lens trace --format github train.py
"""

from __future__ import annotations

from .findings import ERROR, Finding, rel_path
from .report import Report
from .sarif import result_text


def escape_data(text: str) -> str:
    """Escape the message part of a workflow command."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a property value (``file=...``, ``title=...``) of a workflow command."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(f: Finding) -> str:
    """One ``::error ...::...`` (or ``::warning``) line for ``f``."""
    props = []
    if f.site is not None:
        props.append(f"file={escape_property(rel_path(f.site.file))}")
        if f.site.line >= 1:
            props.append(f"line={f.site.line}")
    props.append(f"title={escape_property(f'autograd_lens {f.rule}')}")
    command = "error" if f.severity == ERROR else "warning"
    return f"::{command} {','.join(props)}::{escape_data(result_text(f))}"


def annotations(report: Report) -> str:
    """Every finding of ``report`` as a workflow command, one per line."""
    return "".join(annotation(f) + "\n" for f in report.findings)
