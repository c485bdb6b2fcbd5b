#!/usr/bin/env bash
# `make bench`: bench/.venv with qfsync (from this checkout) and the bench's tools, then the
# measurements, which print a table and write bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
venv=.venv
# The stamp is newer than both requirement files once the venv holds what they ask for.
stamp=$venv/.installed
if [[ ! -f $stamp || requirements.txt -nt $stamp || ../pyproject.toml -nt $stamp ]]; then
  echo "bench: installing $venv (qfsync and requirements.txt)"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install --quiet --quiet --upgrade pip
  "$venv/bin/pip" install --quiet --quiet -e '..[postgres,mysql]' -r requirements.txt
  touch "$stamp"
fi
# pip byte-compiles what it installs (dlt, SQLAlchemy, qfsync from a wheel), but not an editable
# install: its modules are compiled on import, and at every start where PYTHONDONTWRITEBYTECODE
# is set (as on the CI machines), which cost each qfsync process 20-60 ms that a user's does not.
"$venv/bin/python" -m compileall -q ../qfsync ../migrations >/dev/null
exec "$venv/bin/python" bench.py
