#!/usr/bin/env bash
# The distributed engines on real GPUs, as one short prepared command for a lent machine (the `device` tool): a few
# steps of examples/language-modeling/run_sft.py (the offline default: a small Llama from scratch on es->en verses,
# bf16, the fused LM head required with --cot_fused_lm_head true) under each accelerate config of
# examples/accelerate_configs/, in the COT modes each engine supports:
#
#   multi_gpu (DDP; only with 2+ GPUs)   joint guided alternating
#   fsdp2                                joint guided alternating
#   deepspeed_zero2, deepspeed_zero3     joint guided            (alternating is refused under DeepSpeed)
#
# Each run: `accelerate launch --config_file examples/accelerate_configs/<engine>.yaml --num_processes N ...` under
# `timeout`; a failed run is recorded and the next one starts. One line per run goes to $OUT/gpu_engines_smoke.txt:
# engine, processes, mode, rc, wall seconds, steps, final logged loss and train_loss (trainer_state.json), eval_loss,
# peak GPU memory (max `nvidia-smi` memory.used over the GPUs, sampled every 250 ms) and whether a checkpoint was
# written; each run's log is in $OUT/logs/.
#
# Usage (repository root):  bash benchmarks/gpu_engines_smoke.sh
#   DRY_RUN=1        print the commands instead of running them (works on a CPU-only machine)
#   NGPU=N           processes per engine (default: the GPUs nvidia-smi lists); multi_gpu runs only if N >= 2
#   ENGINES, MODES   subsets, e.g. ENGINES="fsdp2 deepspeed_zero3" MODES="joint" (default: all of the table above)
#   STEPS=20  RUN_TIMEOUT=240 (s per run)  BUDGET=500 (s in all: later runs are skipped, and recorded as skipped)
#   SFT_ARGS="..."   extra run_sft.py arguments (e.g. a larger model: --hidden_size 1024 --num_hidden_layers 8)
#   BF16=true, LAUNCH_ARGS="" (extra `accelerate launch` arguments), SFT_SCRIPT, PY=python3, RUN_DIR
#
# Not yet run on a GPU. On the 2-core CPU box the whole script ran (NGPU=2 STEPS=4, a tiny model through SFT_ARGS,
# BF16=false LAUNCH_ARGS="--mixed_precision no", SFT_SCRIPT a wrapper that applies the test-only patch of
# tests/scripts/cpu_engines.py first; DDP with --use_cpu true): all 10 runs rc 0 with a checkpoint. The from-scratch
# model starts from other weights under ZeRO-3 (transformers builds it inside deepspeed.zero.Init; the first logged
# loss already differs), so its losses are not the other engines' at the same seed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
DRY_RUN=${DRY_RUN:-0}
PY=${PY:-python3}
STEPS=${STEPS:-20}
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
BUDGET=${BUDGET:-500}
BF16=${BF16:-true}
LAUNCH_ARGS=${LAUNCH_ARGS:-}
SFT_ARGS=${SFT_ARGS:-}
SFT_SCRIPT=${SFT_SCRIPT:-examples/language-modeling/run_sft.py}
RUN_DIR=${RUN_DIR:-/tmp/gpu_engines_smoke}
ENGINES=${ENGINES:-multi_gpu fsdp2 deepspeed_zero2 deepspeed_zero3}
MODES=${MODES:-joint guided alternating}
SUMMARY="$OUT/gpu_engines_smoke.txt"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
export WANDB_DISABLED=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

have_smi() { command -v nvidia-smi > /dev/null 2>&1; }
if [ -z "${NGPU:-}" ]; then
    NGPU=0
    if have_smi; then NGPU=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU'); fi
fi
if [ "$NGPU" -lt 1 ]; then
    if [ "$DRY_RUN" = 1 ]; then
        echo "[smoke] no GPU found: dry run with NGPU=1 (set NGPU=2 to see the multi_gpu commands)"
        NGPU=1
    else
        mkdir -p "$OUT"
        echo "no GPU found (nvidia-smi lists none): nothing run; set NGPU to override" | tee "$SUMMARY"
        exit 1
    fi
fi

# The modes an engine runs: alternating is refused under DeepSpeed (it owns the optimizer step).
engine_modes() {
    local mode
    for mode in $MODES; do
        case "$1:$mode" in
            deepspeed_*:alternating) ;;
            *) printf '%s ' "$mode" ;;
        esac
    done
}

# trainer_state.json / eval_results.json of a finished run -> "steps=.. final_loss=.. train_loss=.. eval_loss=.."
read_results() {
    "$PY" - "$1" << 'EOF'
import json, os, sys

out = sys.argv[1]
fields = {"steps": "n/a", "final_loss": "n/a", "train_loss": "n/a", "eval_loss": "n/a"}
try:
    with open(os.path.join(out, "trainer_state.json")) as f:
        state = json.load(f)
    fields["steps"] = state.get("global_step", "n/a")
    losses = [e["loss"] for e in state.get("log_history", []) if "loss" in e]
    train = [e["train_loss"] for e in state.get("log_history", []) if "train_loss" in e]
    if losses:
        fields["final_loss"] = f"{losses[-1]:.4f}"
    if train:
        fields["train_loss"] = f"{train[-1]:.4f}"
except (OSError, ValueError):
    pass
try:
    with open(os.path.join(out, "eval_results.json")) as f:
        fields["eval_loss"] = f"{json.load(f)['eval_loss']:.4f}"
except (OSError, ValueError, KeyError):
    pass
print(" ".join(f"{k}={v}" for k, v in fields.items()))
EOF
}

if [ "$DRY_RUN" != 1 ]; then
    mkdir -p "$OUT/logs"
    : > "$SUMMARY"
    {
        echo "# gpu_engines_smoke $(date -u +%Y-%m-%dT%H:%M:%SZ) NGPU=$NGPU STEPS=$STEPS BF16=$BF16 SFT_ARGS='$SFT_ARGS'"
        "$PY" -c "import torch, transformers, accelerate; print('# torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')" 2>&1 | tail -1
        "$PY" -c "import trl; print('# trl', trl.__version__)" 2>&1 | tail -1
        "$PY" -c "import deepspeed; print('# deepspeed', deepspeed.__version__)" 2>&1 | tail -1
    } >> "$SUMMARY"
fi

start=$(date +%s)
port=29500
for engine in $ENGINES; do
    config="examples/accelerate_configs/$engine.yaml"
    for mode in $(engine_modes "$engine"); do
        name="${engine}_${mode}"
        port=$((port + 1))
        if [ "$engine" = multi_gpu ] && [ "$NGPU" -lt 2 ]; then
            line="engine=$engine nproc=$NGPU mode=$mode rc=skipped (DDP needs 2+ GPUs)"
            if [ "$DRY_RUN" = 1 ]; then echo "# $line"; else echo "$line" | tee -a "$SUMMARY"; fi
            continue
        fi
        # shellcheck disable=SC2206  # LAUNCH_ARGS and SFT_ARGS are word-split on purpose
        cmd=(timeout --kill-after 30 "$RUN_TIMEOUT" "$PY" -m accelerate.commands.launch
            --config_file "$config" --num_processes "$NGPU" --main_process_port "$port" $LAUNCH_ARGS
            "$SFT_SCRIPT" --output_dir "$RUN_DIR/$name"
            --do_train --do_eval --max_steps "$STEPS" --per_device_train_batch_size 8 --learning_rate 1e-3
            --warmup_steps 2 --max_train_samples 2048 --max_eval_samples 64 --num_generate_samples 0
            --logging_steps 1 --save_strategy steps --save_steps "$STEPS" --bf16 "$BF16" --report_to none
            --disable_tqdm true --seed 0 --cot_fused_lm_head true --cot_mode "$mode" $SFT_ARGS)
        if [ "$DRY_RUN" = 1 ]; then
            printf '%q ' "${cmd[@]}"
            echo
            continue
        fi
        if [ $(($(date +%s) - start)) -gt "$BUDGET" ]; then
            echo "engine=$engine nproc=$NGPU mode=$mode rc=skipped (budget ${BUDGET}s spent)" | tee -a "$SUMMARY"
            continue
        fi
        rm -rf "${RUN_DIR:?}/$name"
        mkdir -p "$RUN_DIR"
        smi_pid=
        if have_smi; then
            nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 250 > "$RUN_DIR/$name.mem" 2> /dev/null &
            smi_pid=$!
        fi
        t0=$(date +%s.%N)
        "${cmd[@]}" > "$OUT/logs/$name.log" 2>&1
        rc=$?
        t1=$(date +%s.%N)
        peak=n/a
        if [ -n "$smi_pid" ]; then
            kill "$smi_pid" 2> /dev/null
            wait "$smi_pid" 2> /dev/null
            peak=$(awk -F', *' '$2 + 0 > m { m = $2 + 0 } END { if (m > 0) print m; else print "n/a" }' "$RUN_DIR/$name.mem")
        fi
        ckpt=no
        if [ -d "$RUN_DIR/$name/checkpoint-$STEPS" ]; then ckpt=yes; fi
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
        results=$(read_results "$RUN_DIR/$name")
        echo "engine=$engine nproc=$NGPU mode=$mode rc=$rc wall_s=$wall $results peak_mem_mib=$peak checkpoint=$ckpt" \
            | tee -a "$SUMMARY"
        if [ "$rc" != 0 ]; then
            grep -E 'Error|error:' "$OUT/logs/$name.log" | grep -v Warning | tail -3 | sed 's/^/    /' | tee -a "$SUMMARY"
        fi
    done
done
if [ "$DRY_RUN" != 1 ]; then
    echo "# done in $(($(date +%s) - start)) s" | tee -a "$SUMMARY"
fi
