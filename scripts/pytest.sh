#!/usr/bin/env bash
# Runs tests/python (the official `openai` client against `flint serve` on the default model).
# Creates its own venv (.venv-test) on first use; FLINT_BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-test
if [ ! -x "$VENV/bin/pytest" ] || ! cmp -s tests/python/requirements.txt "$VENV/.requirements"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
  cp tests/python/requirements.txt "$VENV/.requirements"
fi
exec "$VENV/bin/pytest" -q tests/python "$@"
