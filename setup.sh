#!/usr/bin/env bash
# Sets up .venv with what unitune needs at the exact versions of requirements.lock (CPU torch from the local
# wheel here, never CUDA wheels), and unitune itself as an editable install with its console commands.
#   bash setup.sh          fine-tuning, the front-ends and the web page ([web])
#   bash setup.sh --test   also tensorboard, wandb, the test tools and, where apt is usable, headless Chromium
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_install() {  # quiet, minus this machine's harmless find-links warnings; fails when pip fails
  .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}
extras=web
[ "${1:-}" = "--test" ] && extras=web,tensorboard,wandb,test
pip_install -c requirements.lock -e ".[$extras]"
if [ "${1:-}" = "--test" ]; then
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
      >/dev/null) || echo "setup.sh: could not install chromium; the browser test will skip" >&2
  fi
fi
.venv/bin/unitune env | grep -E "^(torch|transformers|peft|lock):"
