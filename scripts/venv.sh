#!/usr/bin/env bash
# Make a virtual environment with a Python >= 3.12 (arviz 1.x needs it): python3.12 / python3.13 on PATH when
# they run (a pyenv shim without a global version does not), else pyenv's installed interpreters.
# Usage: scripts/venv.sh [DIR]   (default .venv); used by the README's commands and by .ci/run.
set -euo pipefail
dir="${1:-.venv}"
for c in python3.12 python3.13 python3; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
    py=$(command -v "$c"); break
  fi
done
if [ -z "${py:-}" ]; then
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
    if [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then py="$c"; break; fi
  done
fi
if [ -z "${py:-}" ]; then
  echo "no Python >= 3.12 found (on PATH or under ~/.pyenv/versions); install one (e.g. pyenv install 3.12)" >&2
  exit 1
fi
echo "using $py ($("$py" --version))" >&2
"$py" -m venv "$dir"
"$dir/bin/python" -m pip install -q --upgrade pip
