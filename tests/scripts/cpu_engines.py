"""TEST-ONLY: run FSDP2 and DeepSpeed ZeRO on a CPU-only machine with 2 gloo processes.

accelerate turns FSDP (and, for the process count, DeepSpeed) on only for GPU-like distributed types, never for
MULTI_CPU (read on accelerate 1.15: ``AcceleratorState.__init__`` and ``PartialState._prepare_backend``). So a
``torchrun --nproc_per_node 2`` of a Trainer with ``fsdp=...`` or ``deepspeed=...`` on a machine without GPUs either
refuses ("Using fsdp only works in distributed training") or trains two unsharded copies. This module makes each
torchrun rank report itself as a MULTI_GPU process on the gloo backend, with the CPU as its device, which is enough for
FSDP2's ``fully_shard`` and DeepSpeed's ZeRO-1/2/3 to shard for real (parameters become DTensors / ZeRO partitions).
FSDP1 does not run this way ("There are currently no available devices found").

Never use this outside tests: on a real cluster accelerate's own detection is right, and gloo is much slower than
NCCL. Call `patch_accelerate_for_cpu_engines()` in every rank before the `TrainingArguments` are built.

`launch(script, args, nproc)` starts ``torch.distributed.run`` (what ``torchrun`` is) with a free port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def patch_accelerate_for_cpu_engines() -> None:
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if getattr(PartialState._prepare_backend, "_hf_cot_cpu_engines", False):
        return
    original = PartialState._prepare_backend

    def _prepare_backend(self, cpu: bool = False, sagemaker_dp=False, backend=None):
        if int(os.environ.get("LOCAL_RANK", -1)) != -1 and not cpu and not torch.cuda.is_available():
            return "gloo", DistributedType.MULTI_GPU
        return original(self, cpu, sagemaker_dp, backend)

    _prepare_backend._hf_cot_cpu_engines = True
    PartialState._prepare_backend = _prepare_backend
    # accelerate then asks for a torch device of the "GPU" kind: this makes it the CPU (and skips torch.cuda calls).
    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(script: str, args: list[str], nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), script, *args,
    ]  # fmt: skip


def run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    """Run a launch; on a timeout, SIGTERM the launcher first: torch.distributed.run then stops its ranks (which live in
    sessions of their own, so killing the launcher outright would leave them waiting for each other forever)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_DISABLED="true", OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        stderr += f"\n[cpu_engines] timed out after {timeout} s; the launcher was sent SIGTERM"
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
