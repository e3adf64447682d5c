"""COT under real multi-process data parallelism (DDP over gloo on CPU), against a single-process reference.

How the 2 processes are started (both verified with accelerate 1.15 on a machine without GPUs):

* ``accelerate launch --multi_gpu --num_processes 2 script.py`` goes through torchrun and starts two ranks. On a
  machine without GPUs a rank only becomes a MULTI_CPU (gloo) process if the script asks for the CPU:
  ``TrainingArguments(use_cpu=True)`` makes the Trainer build ``PartialState(cpu=True)``. Without it each rank sees
  ``DistributedType.NO`` and the two processes silently train two independent single-process models.
* ``accelerate launch --cpu --num_processes 2 script.py`` silently starts ONE process: with ``--cpu`` accelerate
  uses its "simple" launcher, which only fans out through ``mpirun`` when ``--mpirun_hostfile`` is given.

Data order: the Trainer's default ``RandomSampler`` becomes accelerate's ``SeedableRandomSampler`` (seeded with
``args.seed``, ``use_seedable_sampler=True`` by default), so every world size draws the same permutation; without
``split_batches`` the ``BatchSamplerShard`` hands consecutive per-device batches to consecutive ranks. So with
per-device batch B on 2 ranks, rank 0 + rank 1 in step s hold exactly the rows of the single-process batch 2B in step
s (and with gradient accumulation, the same accumulation window). The helper records the rows each rank consumed
and the test checks that claim directly before comparing parameters.

Resume: on transformers < 5.18 the parent Trainer itself cannot resume a MULTI_CPU run (it loads ``optimizer.pt``
with ``map_location="cpu:<rank>"``, which ``torch.load`` rejects; GPU ranks are unaffected), so the 2-process resume
check is skipped there. hf-cot loads its own complement state with a plain ``"cpu"`` map location on CPU.

Because COT normalizes every loss by the global number of valid labels in the window, the 2-process run and the
single-process run compute the same gradients up to float summation order: the tolerance is 5e-5 (measured: <= 4e-6
after 3-4 AdamW steps at lr 1e-2).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from testing_utils import tiny_bert, tiny_llama, tiny_marian

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from cot_ddp import PARENT_RESUMES_MULTI_CPU  # noqa: E402

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parents[1] / "scripts" / "cot_ddp.py"
CONFIGS = ["alternating", "alternating_ga2", "joint", "seq2seq", "causal_lm"]
TOL = 5e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_DISABLED="true", OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _run(cmd: list[str], timeout: int = 240) -> None:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    single, multi = root / "single", root / "multi"
    # Reference: one process, the doubled per-device batch.
    _run([sys.executable, str(SCRIPT), str(single), "--batch", "8"])
    # Two gloo ranks, per-device batch 4, plus a checkpoint at step 2 and a 2-process resume from it.
    _run(
        [
            sys.executable, "-m", "accelerate.commands.launch",
            "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()),
            str(SCRIPT), str(multi), "--batch", "4", "--resume",
        ]
    )  # fmt: skip
    return single, multi


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _json(path: Path):
    return json.loads(path.read_text())


def _initial(config: str) -> dict:
    builders = {"seq2seq": lambda: tiny_marian(seed=0), "causal_lm": lambda: tiny_llama(seed=0)}
    model = builders.get(config, lambda: tiny_bert(num_labels=5, seed=0))()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_real_gloo_ranks(runs):
    _, multi = runs
    for config in CONFIGS:
        for rank in (0, 1):
            info = _json(multi / config / f"info_rank{rank}.json")
            assert info["world_size"] == 2 and info["distributed_type"] == "DistributedType.MULTI_CPU", info


@pytest.mark.parametrize("config", CONFIGS)
def test_ranks_agree_and_match_single_process(runs, config):
    single, multi = runs
    # The data claim of the module docstring: rank 0 + rank 1 consumed exactly the single-process window per step.
    ref_steps = _json(single / config / "batches_rank0.json")
    r0, r1 = (_json(multi / config / f"batches_rank{r}.json") for r in (0, 1))
    assert len(ref_steps) == len(r0) == len(r1) > 0
    for s, (a, b) in enumerate(zip(r0, r1, strict=True)):
        assert not set(a) & set(b), f"step {s}: ranks share rows"
        assert sorted(a + b) == ref_steps[s], f"step {s}: the ranks' rows differ from the single-process batch"

    p0, p1 = _params(multi / config / "params_rank0.pt"), _params(multi / config / "params_rank1.pt")
    ref = _params(single / config / "params_rank0.pt")
    assert _max_diff(p0, p1) == 0.0, "DDP ranks ended with different parameters"
    assert _max_diff(p0, ref) < TOL, f"2 processes x batch 4 != 1 process x batch 8 ({_max_diff(p0, ref):.2e})"
    # Training really moved the weights (far beyond the tolerance), so the agreement above is not vacuous.
    assert _max_diff(ref, _initial(config)) > 1e-2

    # Logged values are global means on every world size (loss and the COT keys alike).
    ref_logs = [e for e in _json(single / config / "logs_rank0.json") if "loss" in e]
    logs = [e for e in _json(multi / config / "logs_rank0.json") if "loss" in e]
    assert len(logs) == len(ref_logs) > 0
    for got, want in zip(logs, ref_logs, strict=True):
        for key in ("loss", "complement_entropy", "complement_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (key, got, want)
    # Evaluation: the complement entropy is a global mean over valid labels with the rows that pad the last batch
    # dropped, on any world size. (The Trainer's own eval_loss is not: it averages per-batch means, and a padded
    # batch's mean includes its repeated rows; ours is that same number, see test_reported_numbers.py.)
    want, got = _json(single / config / "eval_rank0.json"), _json(multi / config / "eval_rank0.json")
    assert got["eval_complement_entropy"] == pytest.approx(want["eval_complement_entropy"], rel=1e-6), (got, want)
    if config not in ("joint", "causal_lm"):  # the alternating configurations
        info = _json(multi / config / "info_rank0.json")
        assert info["complement_steps"] == info["global_step"] == info["complement_scheduler_last_epoch"]


def test_checkpoint_written_once_by_rank0(runs):
    _, multi = runs
    run = multi / "alternating"
    for step in (2, 4):
        ckpt = run / f"checkpoint-{step}"
        for name in ("complement_optimizer.pt", "complement_scheduler.pt", "complement_state.json"):
            assert (ckpt / name).is_file(), f"{ckpt} lacks {name}"
        assert _json(ckpt / "complement_state.json") == {"complement_steps": step, "complement_skipped_steps": 0}
    saves0, saves1 = (_json(run / f"saves_rank{r}.json") for r in (0, 1))
    # Every torch.save of each rank was recorded: rank 1 writes only its own RNG states (the Trainer's and the
    # complement step's random stream).
    assert saves0.count("complement_optimizer.pt") == 2 and saves0.count("complement_scheduler.pt") == 2
    assert sorted(set(saves1)) == ["complement_rng_state_1.pth", "rng_state_1.pth"], saves1


@pytest.mark.skipif(
    not PARENT_RESUMES_MULTI_CPU,
    reason="transformers < 5.18: the parent Trainer cannot resume any MULTI_CPU run (it torch.loads optimizer.pt "
    "with map_location='cpu:<rank>'); GPU DDP is unaffected",
)
def test_two_process_resume_reproduces_uninterrupted_run(runs):
    _, multi = runs
    full = _params(multi / "alternating" / "params_rank0.pt")
    for rank in (0, 1):
        resumed = _params(multi / "alternating_resumed" / f"params_rank{rank}.pt")
        assert _max_diff(resumed, full) == 0.0, f"rank {rank}: resumed run differs from the uninterrupted one"
        info = _json(multi / "alternating_resumed" / f"info_rank{rank}.json")
        assert info["global_step"] == 4 and info["complement_steps"] == 4
        assert info["complement_scheduler_last_epoch"] == 4
    # The resumed run trained two more steps from checkpoint-2, which is far from the end point.
    from safetensors.torch import load_file

    at2 = load_file(str(multi / "alternating" / "checkpoint-2" / "model.safetensors"))
    assert max((at2[k] - full[k]).abs().max().item() for k in at2) > 1e-3
