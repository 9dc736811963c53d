"""Exit statuses of ``lens``, in one place (``docs/cli.md`` and ``--help`` say the same)."""

from __future__ import annotations

#: Success: the command did what was asked and found nothing wrong.
OK = 0
#: The command ran and reported findings (for ``lens trace``: at or above ``--fail-on``).
FINDINGS = 1
#: Bad usage or input: unknown option or rule, missing or invalid file or module, a script with a
#: syntax error, missing Graphviz for ``lens draw``, an unwritable output folder.
USAGE = 2
#: ``lens trace``: the script was stopped by Ctrl-C (the report of what ran is still written).
INTERRUPTED = 130

HELP = "Exit status: 0 ok, 1 findings reported, 2 usage or input error."

#: ``lens trace --help`` epilog (``\b`` keeps click from rewrapping the lines).
TRACE_HELP = """\b
Exit status:
  n    the script's own status when it fails: an uncaught exception gives 1,
       sys.exit(n) gives n, sys.exit("message") gives 1
  130  the script was interrupted (Ctrl-C); the report of what ran is written
  1    the script succeeded, and findings at or above --fail-on were reported
  0    the script succeeded, and no such findings
  2    usage or input error: unknown option or rule, missing script or module,
       a file that is not Python, a syntax error, an unwritable --out
"""
