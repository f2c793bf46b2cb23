#!/usr/bin/env bash
# Catch an upstream release before a user does: build a side virtualenv with the NEWEST versions that
# requirements.txt and the pyproject extras allow (torch stays the locked build), run the default test suite
# there, and print which packages moved against requirements.lock and which tests broke.
#   bash tools/upgrade_check.sh               check only (exit status: the suite's)
#   bash tools/upgrade_check.sh --write-lock  also make the new set the lock when the suite passes
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${UPGRADE_VENV:-.venv-latest}
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
torch_pin=$(grep -E '^torch==' requirements.lock 2>/dev/null || echo "torch==2.13.0")
rm -rf "$VENV" && "$PY" -m venv "$VENV"
pin_file=$(mktemp) && echo "$torch_pin" > "$pin_file"
"$VENV/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -c "$pin_file" -e ".[web,tensorboard,wandb,test]" \
  2>&1 | { grep -v "is ignored: it is neither" || true; }
"$VENV/bin/python" -m pip check
"$VENV/bin/python" tools/lockfile.py freeze "$VENV/newest.lock"
"$VENV/bin/python" tools/lockfile.py diff requirements.lock "$VENV/newest.lock" || true
status=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider > "$VENV/pytest.log" 2>&1 || status=$?
tail -n 1 "$VENV/pytest.log"
if [ "$status" != 0 ]; then
  echo "tests that broke on the newest versions (full log: $VENV/pytest.log):"
  grep -E "^(FAILED|ERROR) " "$VENV/pytest.log" || true
elif [ "${1:-}" = "--write-lock" ]; then
  cp "$VENV/newest.lock" requirements.lock && echo "requirements.lock refreshed; commit it"
fi
exit "$status"
