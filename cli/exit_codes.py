"""Exit statuses of ``lens``, in one place (``docs/cli.md``, the README and ``--help`` say the same).

``lens trace`` runs a program, so three kinds of outcome must stay apart for CI:

- the program failed: ``lens trace`` exits with the program's own status, as ``python`` would
  (an uncaught exception gives 1, ``sys.exit(n)`` gives ``n``; Ctrl-C and SIGTERM end the lens
  by that signal, which shells show as 130 and 143);
- the program succeeded and the lens has findings: :data:`FINDINGS`;
- the lens was used wrongly: :data:`USAGE` (64, ``EX_USAGE`` of BSD's ``sysexits.h``), kept
  apart from the small numbers that programs and ``argparse`` (2) use for themselves;
  a failure of the lens itself is :data:`INTERNAL` (70, ``EX_SOFTWARE``).

``report.json``'s ``status`` names the outcome: ``ok``, ``findings``, ``script-error``,
``interrupted`` or ``terminated``.
"""

from __future__ import annotations

import os
import signal
import sys

#: Success: the command did what was asked and found nothing wrong.
OK = 0
#: The program succeeded and the lens reported findings at or above ``--fail-on``. Not 1, which
#: is what a Python program that raises exits with, and not 2, which is ``argparse``'s.
FINDINGS = 3
#: The lens was used wrongly: unknown option or rule, missing or invalid file or module, a script
#: with a syntax error, an invalid graph file or a missing Graphviz for ``lens draw``, an unusable
#: output folder (``EX_USAGE``).
USAGE = 64
#: The lens itself failed (a bug in autograd_lens; ``EX_SOFTWARE``).
INTERNAL = 70
#: ``lens trace``: the program was stopped by Ctrl-C (128 + SIGINT); the report of what ran is
#: written, then the lens ends by SIGINT as Python does.
INTERRUPTED = 128 + signal.SIGINT
#: ``lens trace``: the program was stopped by SIGTERM (128 + SIGTERM); the report of what ran is
#: written, then the lens ends by SIGTERM.
TERMINATED = 128 + signal.SIGTERM

HELP = "Exit status: 0 ok, 3 findings, 64 usage or input error, 70 internal error."

#: ``lens trace --help`` epilog (``\b`` keeps click from rewrapping the lines).
TRACE_HELP = """\b
Exit status:
  0    the script succeeded, and no findings at or above --fail-on
  3    the script succeeded, and findings at or above --fail-on were reported
  n    the script failed: its own status, as python gives it (an uncaught
       exception gives 1, sys.exit(n) gives n, sys.exit("message") gives 1);
       Ctrl-C and SIGTERM write the report of what ran, then end lens by that
       signal (the shell shows 130 and 143)
  64   the lens was used wrongly: unknown option or rule, missing script or
       module, a file that is not Python, a syntax error, an unusable --out
  70   an internal error of the lens
report.json's "status" says which: ok, findings, script-error, interrupted,
terminated.
"""


class SignalExit(SystemExit):
    """Leave ``lens`` as if killed by ``signum``: the status is ``128 + signum`` in-process, and
    :func:`exit_by_signal` re-raises the signal when the command runs as a program."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)


def exit_by_signal(signum: int) -> None:
    """End this process by ``signum`` with its default action (as the program would have ended)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    sys.exit(128 + signum)
