#!/usr/bin/env bash
# The project's test command: sets up .venv if needed (the test profile of scripts/setup_env.sh: everything the tests
# need), then runs the whole suite offline.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
. "${HF_COT_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
export TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true
exec python -m pytest "$@"
