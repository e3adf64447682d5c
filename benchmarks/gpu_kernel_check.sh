#!/usr/bin/env bash
# The fused Triton kernels on a real GPU, as one short prepared command for a lent machine (the `device` tool):
# the kernel tests compiled (not interpreted), then the loss benchmark with the fused path (default on CUDA) and with
# the eager chunked path (HF_COT_TRITON=0) side by side, then the trainer-step benchmark in fp16. Results to $OUT.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_kernel_check.log") 2>&1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PY:-python3}
$PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/ops/test_triton_kernels.py || echo "[check] kernel tests exit $?"
timeout 60 $PY benchmarks/bench_loss.py --device cuda --repeats 20 --json "$OUT/bench_loss_cuda_triton.json" || echo "[check] bench_loss exit $?"
HF_COT_TRITON=0 timeout 60 $PY benchmarks/bench_loss.py --device cuda --repeats 20 --json "$OUT/bench_loss_cuda_eager.json" || echo "[check] eager bench_loss exit $?"
timeout 100 $PY benchmarks/bench_step.py --device cuda --fp16 --rounds 2 --steps 8 --json "$OUT/bench_step_cuda_triton_fp16.json" || echo "[check] bench_step exit $?"
echo "[check] done"
