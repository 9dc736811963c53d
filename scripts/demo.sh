#!/usr/bin/env bash
# The main job: set up, then trace the bundled GAN that forgets `.detach()`.
# Prints the findings and writes lens-out/report.json and lens-out/graphs/*.svg.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit $?
.venv/bin/lens trace examples/gan_no_detach.py "$@"
status=$?
echo "lens trace exited with status $status (1: error-level findings, as expected for this example)" >&2
ls lens-out/report.json lens-out/graphs/*.svg >&2 || exit 1
# 0 (no findings) and 1 (findings) are both a completed trace; anything else is a failure
[ "$status" -le 1 ] || exit "$status"
