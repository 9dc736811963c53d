"""Exit statuses of ``lens``, in one place."""

from __future__ import annotations

#: Success: the command did what was asked and found nothing wrong.
OK = 0
#: The command ran and reported findings (errors in the traced program's autograd use).
FINDINGS = 1
#: Bad usage or input: unknown option, missing or invalid file, missing Graphviz, unwritable output.
USAGE = 2

HELP = "Exit status: 0 ok, 1 findings reported, 2 usage or input error."
