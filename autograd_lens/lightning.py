"""``LensCallback``: the lens for people who launch PyTorch Lightning from their own entry point.

```python
from autograd_lens.lightning import LensCallback

trainer = pl.Trainer(callbacks=[LensCallback()])
trainer.fit(model)           # watched; the report is printed and written to lens-out/
```

It watches ``trainer.fit()`` from start to end (also when it ends in an exception, which then
carries the lens's explanation), prints the report to stderr and writes ``report.json`` and the
graphs, as ``lens trace`` does. ``callback.report`` holds the report afterwards. The callback
subclasses the ``Callback`` of whichever Lightning is installed (``lightning.pytorch`` or
``pytorch_lightning``); importing this module without Lightning raises a ``LensError`` that says so.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import LensError
from .findings import Finding, rel_path
from .report import Report, print_report


def _callback_base() -> type:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name).Callback
        except ImportError:
            continue
    raise LensError("autograd_lens.lightning needs PyTorch Lightning: pip install lightning (or pytorch-lightning)")


class LensCallback(_callback_base()):  # type: ignore[misc]
    """Watch ``trainer.fit()`` with ``autograd_lens.watch()``.

    Args:
        out: folder for ``report.json`` and ``graphs/`` (None: write nothing).
        graphs: draw the graphs of the backward sites (SVG when ``dot`` is installed).
        quiet: print nothing (the report is still in ``callback.report`` and ``out``).
        skip: packages whose frames are not your code, besides Lightning itself.
    """

    def __init__(
        self,
        out: str | Path | None = "lens-out",
        *,
        graphs: bool = True,
        quiet: bool = False,
        skip: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.out = Path(out).resolve() if out is not None else None
        self.graphs = graphs
        self.quiet = quiet
        self.skip = tuple(skip)
        self.report: Report | None = None
        self._watch: Any = None

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self.report.findings if self.report is not None else ()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from .watch import watch

        self._watch = watch(skip=self.skip, on_finding=None if self.quiet else _live)
        self._watch.__enter__()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish(None)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._finish(exception)

    def _finish(self, exc: BaseException | None) -> None:
        w, self._watch = self._watch, None
        if w is None:
            return
        w.__exit__(type(exc) if exc is not None else None, exc, exc.__traceback__ if exc is not None else None)
        self.report = w.build_report(script=" ".join(sys.argv) or None)
        if self.out is not None:
            from . import output

            calls: dict[str, Any] = {}
            for call in w.calls:
                if call.graph_key and call.graph_key not in calls:
                    calls[call.graph_key] = call.site
            written = output.write_or_fallback(
                self.report, self.out, dict(w.graphs) if self.graphs else {}, sites=calls,
                draw=self.graphs, warn=None if self.quiet else _warn,
            )
            self.report = written.report
        if not self.quiet:
            from rich.console import Console

            err = Console(file=sys.stderr, highlight=False, soft_wrap=False, emoji=False)
            err.rule("autograd_lens report", align="left", style="dim")
            print_report(err, self.report)


def _live(f: Finding) -> None:
    if f.site is not None:
        f = dataclasses.replace(f, site=dataclasses.replace(f.site, file=rel_path(f.site.file)))
    print(f"lens: {f.short()}", file=sys.stderr)


def _warn(text: str) -> None:
    print(f"lens: warning: {text}", file=sys.stderr)
