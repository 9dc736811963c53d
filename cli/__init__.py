"""The ``lens`` command line (installed as ``autograd_lens.cli``)."""

from __future__ import annotations
