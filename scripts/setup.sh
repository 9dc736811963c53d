#!/usr/bin/env bash
# Set up everything autograd_lens needs on a fresh Debian machine with Python 3.11:
# Debian's graphviz (for `dot`) when it is absent, Debian's chromium and chromium-driver (the HTML
# report is tested in a headless browser), a virtual environment in .venv, the CPU build of
# torch 2.13.0, and the project itself with its test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dot >/dev/null 2>&1; then
    echo "setup: installing Debian's graphviz (for dot)" >&2
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq graphviz >/dev/null
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium and chromium-driver (for the HTML report's browser tests)" >&2
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "setup: Python 3.11 or newer is needed; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
    echo "setup: installing torch 2.13.0 (CPU build)" >&2
    "${PIP[@]}" install torch==2.13.0
fi
if ! .venv/bin/python -c 'import autograd_lens.cli.main, pytest, numpy, jsonschema, hypothesis, xdist' >/dev/null 2>&1 \
        || [ pyproject.toml -nt .venv/.autograd_lens-installed ]; then
    echo "setup: installing autograd_lens (editable) and its test dependencies" >&2
    "${PIP[@]}" install -e '.[test]' numpy
    touch .venv/.autograd_lens-installed
fi
if ! .venv/bin/python -c 'import selenium, nbclient, nbformat, ipykernel' >/dev/null 2>&1 \
        || [ pyproject.toml -nt .venv/.autograd_lens-report-tests ]; then
    echo "setup: installing the browser and notebook test dependencies (pinned)" >&2
    "${PIP[@]}" install -e '.[test,test-browser,test-notebook]'
    touch .venv/.autograd_lens-report-tests
fi
