"""The files a run writes (their names) and writing a file atomically: a temporary file beside
it, flushed to disk, then renamed.

A reader never sees half a file, and an earlier file stays whole until it is replaced. Used for
``report.json``, the graph files and ``report.html``.

Imports only :mod:`autograd_lens.errors` from the package.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import LensError

__all__ = ["GRAPHS_DIR", "HTML_NAME", "REPORT_NAME", "write_bytes"]

REPORT_NAME = "report.json"
HTML_NAME = "report.html"  # the page of the report, beside it
GRAPHS_DIR = "graphs"  # graphs/<file>_<line>.svg and .json, beside the report


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; ``LensError`` naming the path when it cannot be written."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise LensError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
