#!/usr/bin/env bash
# The axolotl plugin's tests, and hf_cot.trl on the oldest TRL pyproject.toml allows, in their own environment:
# axolotl pins its own transformers / TRL / accelerate / peft, so it cannot share .venv. Idempotent (a second run only
# checks what is there). Usage: bash scripts/test_axolotl.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HF_COT_AXOLOTL_VENV:-.venv-axolotl}
AXOLOTL=${HF_COT_AXOLOTL:-0.19.0}  # the version the plugin is written against (README "axolotl")
TRL_OLDEST=$(sed -n 's/.*"trl>=\([0-9.]*\)[,"].*/\1/p' pyproject.toml)
export PIP_DISABLE_PIP_VERSION_CHECK=1
pipq() { python -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
[ -x "$VENV/bin/python" ] || { echo "[axolotl] creating $VENV"; "${PYTHON:-python3}" -m venv "$VENV"; }
. "$VENV/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  pipq "torch==${HF_COT_TORCH:-2.13.0}"  # first: a bare torch requirement may pull a multi-GB CUDA build
fi
if ! python -c "import importlib.metadata as m, sys; sys.exit(m.version('axolotl') != '$AXOLOTL')" 2>/dev/null; then
  echo "[axolotl] installing axolotl==$AXOLOTL"
  pipq "axolotl==$AXOLOTL"
fi
if ! python -c "import hf_cot, pytest, hypothesis" 2>/dev/null; then
  pipq -e . "pytest>=8" "hypothesis>=6"  # after axolotl: its pins satisfy hf-cot's ranges, so pip keeps them
fi
python - "$TRL_OLDEST" <<'PY'
import sys, axolotl, transformers, trl
from packaging.version import Version
print(f"[axolotl] axolotl {axolotl.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
assert Version(trl.__version__) == Version(sys.argv[1]), f"axolotl's TRL {trl.__version__} != oldest allowed {sys.argv[1]}"
PY
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
export TOKENIZERS_PARALLELISM=false WANDB_DISABLED=true AXOLOTL_DO_NOT_TRACK=1
exec python -m pytest tests/integrations/test_axolotl.py tests/integrations/test_trl.py "$@"
