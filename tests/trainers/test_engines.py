"""COT under FSDP2 and DeepSpeed ZeRO-2/3 for real: 2 gloo processes on CPU, against one process on the same global
batch (tests/scripts/cot_engines.py trains; this file compares).

The 2-process runs shard for real (the head's weight is a DTensor under FSDP2, an empty ZeRO-3 partition outside a
gather): accelerate only enables these engines for GPU-like distributed types, so each rank applies the test-only
patch of tests/scripts/cpu_engines.py first. Data order is the DDP one (see test_distributed.py): with per-device
batch B on 2 ranks, both ranks together hold the single-process batch 2B of every step.

What is checked, per engine and configuration:

* the final parameters (gathered by the engine) equal the single-process ones (SGD, so that a gradient that is not
  reduced across ranks - TRL 1.16's fused head under FSDP2 with the head as its own unit - shows at full size);
* the logged ``loss`` / ``complement_*`` (and TRL's ``entropy`` / ``mean_token_accuracy`` / ``num_tokens``), and
  ``eval_loss`` / ``eval_complement_entropy`` (per-device eval batch 4 on both sides: the Trainer's eval_loss is a mean
  of per-batch means, so the batches must be the same);
* the fused head is used and the head module's own ``nn.Linear.forward`` (the ``[tokens, vocab]`` logits) never runs,
  in training and evaluation; the logits configuration, which does call it, shows that the count works;
* alternating under FSDP2: complement steps taken, and a resume from checkpoint-2 (AdamW) is bit-identical to the
  uninterrupted run, with the state-dict type configured (sharded folder ``optimizer_1/`` or full ``optimizer_1.bin``);
* alternating under DeepSpeed is refused at construction by a real engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from testing_utils import tiny_causal_lm

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from cot_engines import CONFIGS  # noqa: E402
from cpu_engines import launch_command, run  # noqa: E402

pytestmark = pytest.mark.slow

SCRIPT = str(Path(__file__).parents[1] / "scripts" / "cot_engines.py")
TOL = 1e-5
FUSED = ["joint", "guided_ga2", "joint_tied", "sft_joint"]
ALTERNATING = ["alternating", "alternating_ga2", "alternating_adamw"]
# engine -> (configurations trained, configurations resumed from checkpoint-2, configurations that must be refused)
ENGINES = {
    # accelerate's default FSDP2 wrapping: decoder layers, the embeddings, [final norm, head] as one unit
    "fsdp2": (FUSED + ["joint_logits"] + ALTERNATING, ["alternating_adamw"], []),
    # every nn.Linear its own unit: the head is gathered only if something asks FSDP to
    "fsdp2_head_unit": (["joint", "guided_ga2", "alternating", "alternating_adamw"], ["alternating_adamw"], []),
    "zero2": (["joint", "guided_ga2", "sft_joint"], [], ["alternating"]),
    "zero3": (FUSED + ["joint_logits"], [], ["alternating"]),
}
SHARDED_HEAD = {"fsdp2", "fsdp2_head_unit", "zero3"}
LOG_KEYS = ["loss", "complement_entropy", "complement_loss", "entropy", "mean_token_accuracy", "num_tokens"]
# TRL's eval_entropy / eval_mean_token_accuracy are means of per-step means over each step's gathered rows, so they
# depend on the world size in TRL itself; its training-time values (one step = the global batch) are compared above.
EVAL_KEYS = ["eval_loss", "eval_complement_entropy"]


def _launch(cmd: list[str], timeout: int = 600) -> None:
    proc = run(cmd, timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-10000:]}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "reference"
    _launch([sys.executable, SCRIPT, str(out), "--engine", "none", "--batch", "8"])
    return out


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """``launched(engine)``: the output folder of that engine's 2-process launch (each launch runs once per module)."""
    outputs = {}

    def get(name: str) -> Path:
        if name.startswith("zero"):
            pytest.importorskip("deepspeed")
        if name not in outputs:
            configs, resume, refused = ENGINES[name]
            out = tmp_path_factory.mktemp("engines") / name
            args = [str(out), "--engine", name, "--batch", "4", "--configs", *configs]
            args += (["--resume", *resume] if resume else []) + (["--refused", *refused] if refused else [])
            _launch(launch_command(SCRIPT, args))
            outputs[name] = out
        return outputs[name]

    return get


def _json(path: Path):
    return json.loads(path.read_text())


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _initial(config: str) -> dict:
    model = tiny_causal_lm(CONFIGS[config][0], seed=0)
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(ENGINES))
def test_every_engine_equals_one_process(name, launched, reference):
    out = launched(name)
    for config in ENGINES[name][0]:
        got, want = out / config, reference / config
        info = _json(got / "info_rank0.json")
        assert info["world_size"] == 2, info
        assert info["fsdp"] == name.startswith("fsdp2") and info["deepspeed"] == name.startswith("zero"), info
        if name in SHARDED_HEAD:  # the head's weight is really split across the ranks
            assert info["local_numel"] < info["full_numel"], info

        fused = CONFIGS[config][2] is None
        assert info["fused"] is fused, (config, info)
        if fused:
            assert info["head_forward_calls_train"] == info["head_forward_calls_eval"] == 0, (config, info)
        else:  # control: the logits path calls the head, and the counter sees it
            assert info["head_forward_calls_train"] == info["global_step"] > 0, (config, info)

        ref = torch.load(want / "params.pt", weights_only=True)
        diff = _max_diff(torch.load(got / "params.pt", weights_only=True), ref)
        assert diff <= TOL, f"{name}/{config}: 2 processes != 1 process ({diff:.2e})"
        assert _max_diff(ref, _initial(config)) > 100 * TOL, "training must move the weights far beyond the tolerance"

        ref_logs = [e for e in _json(want / "logs_rank0.json") if "loss" in e]
        logs = [e for e in _json(got / "logs_rank0.json") if "loss" in e]
        assert len(logs) == len(ref_logs) == info["global_step"]
        for got_line, want_line in zip(logs, ref_logs, strict=True):
            keys = [k for k in LOG_KEYS if k in want_line]
            assert "loss" in keys and "complement_entropy" in keys
            assert config.startswith("sft_") == ("mean_token_accuracy" in keys)
            for key in keys:
                assert got_line[key] == pytest.approx(want_line[key], rel=1e-4, abs=1e-5), (config, key)
        got_eval, want_eval = _json(got / "eval_rank0.json"), _json(want / "eval_rank0.json")
        for key in EVAL_KEYS:
            assert got_eval[key] == pytest.approx(want_eval[key], abs=1e-5), (config, key)
        if CONFIGS[config][1] == "alternating":
            assert info["complement_steps"] == info["global_step"] > 0


@pytest.mark.parametrize("name", [name for name, (_, resume, _) in ENGINES.items() if resume])
def test_alternating_resumes_exactly_under_fsdp2(name, launched):
    out = launched(name)
    for config in ENGINES[name][1]:
        full = torch.load(out / config / "params.pt", weights_only=True)
        resumed = torch.load(out / f"{config}_resumed" / "params.pt", weights_only=True)
        assert _max_diff(resumed, full) == 0.0, f"{name}/{config}: resumed run differs from the uninterrupted one"
        info = _json(out / f"{config}_resumed" / "info_rank0.json")
        assert info["global_step"] == info["complement_steps"] == CONFIGS[config][4]
        checkpoint = out / config / "checkpoint-2"
        # the configured state-dict type decides the complement optimizer's format, as for the Trainer's own
        sharded = name == "fsdp2"
        assert info["state_dict_type"].endswith("SHARDED_STATE_DICT" if sharded else "FULL_STATE_DICT"), info
        assert (checkpoint / "optimizer_1").is_dir() == sharded
        assert (checkpoint / "optimizer_1.bin").is_file() == (not sharded)
        assert _json(checkpoint / "complement_state.json")["complement_steps"] == 2


@pytest.mark.parametrize("name", [name for name, (_, _, refused) in ENGINES.items() if refused])
def test_alternating_is_refused_by_a_real_deepspeed_engine(name, launched):
    out = launched(name)
    for config in ENGINES[name][2]:
        for rank in (0, 1):
            error = _json(out / config / f"refused_rank{rank}.json")
            assert error is not None and error["type"] == "NotImplementedError", error
            assert "DeepSpeed" in error["message"] and "cot_mode='joint'" in error["message"]
