#!/usr/bin/env bash
# Set up (idempotent) and run the test suite: unit and integration tests, the app (AppTest and, where Debian's
# chromium is installed, a real headless browser), and the notebooks executed top to bottom.
#   bash scripts/test.sh                 # default suite (slow tests excluded)
#   bash scripts/test.sh -m ci           # the CI tier: the slow tests .ci/run adds to the default suite
#   bash scripts/test.sh -m slow         # all slow tests (real model runs, multi-process training)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# lint and format check first (seconds): a style slip fails here, before the long test run
.venv/bin/ruff check . && .venv/bin/ruff format --check . >/dev/null || { echo "ruff: run .venv/bin/ruff check --fix . && .venv/bin/ruff format ."; exit 1; }
# types of the typed core (config, stage, rundir, batching: [tool.mypy] in pyproject.toml)
.venv/bin/mypy --no-error-summary || { echo "mypy: the typed core has type errors (above)"; exit 1; }
exec .venv/bin/python -m pytest tests notebooks --nbmake --nbmake-timeout=900 -q "$@"
