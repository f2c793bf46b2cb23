#!/usr/bin/env bash
# Sets up .venv with everything unitune needs (CPU torch from the local wheel, never CUDA wheels).
#   bash setup.sh          runtime only
#   bash setup.sh --test   also the test tools and, where apt is usable, headless Chromium
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_install() {  # quiet, minus this machine's harmless find-links warnings; fails when pip fails
  .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}
# torch==2.13.0 is pinned in requirements.txt: pip takes the local CPU wheel where one is offered.
pip_install -r requirements.txt
pip_install --no-deps -e .
if [ "${1:-}" = "--test" ]; then
  pip_install -r requirements-test.txt
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
      >/dev/null) || echo "setup.sh: could not install chromium; the browser test will skip" >&2
  fi
fi
.venv/bin/python -c "import torch, transformers, peft; print(f'torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
