#!/usr/bin/env bash
# The main job: set up, then trace the bundled GAN that forgets `.detach()`.
# Prints the findings and writes lens-out/report.json and lens-out/graphs/*.svg.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit $?
.venv/bin/lens trace examples/gan_no_detach.py "$@"
status=$?
# lens trace: 0 no findings, 3 findings, the script's own status when it fails, 64 usage error
echo "lens trace exited with status $status (3: error-level findings, as expected for this example)" >&2
ls lens-out/report.json lens-out/graphs/*.svg >&2 || exit 1
.venv/bin/python - <<'PY' || exit 1
import json, sys
status = json.load(open("lens-out/report.json"))["status"]
print(f"report.json status: {status}", file=sys.stderr)
sys.exit(0 if status in ("ok", "findings") else 1)
PY
# 0 (no findings) and 3 (findings) are both a completed trace; anything else is a failure
[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || exit "$status"
