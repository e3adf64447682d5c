"""The axolotl plugin, through `axolotl train` as a user runs it (runs only where axolotl is installed: CI's axolotl
environment, `bash scripts/test_axolotl.sh`).

Each run trains a tiny random Llama (saved by the test, with a word-level tokenizer and a jsonl of random words) for 4
optimizer steps on CPU, offline, and saves a checkpoint at the end; the runs are independent processes started
together. The expectations are other runs: plain axolotl (no plugin) is the reference for `cot_mode: off` and for
joint with `complement_weight: 0`; an uninterrupted alternating run is the reference for its resumed twin.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")  # axolotl's telemetry would retry its upload for minutes offline
pytest.importorskip("axolotl", reason="the axolotl plugin is tested in its own environment (scripts/test_axolotl.sh)")

from safetensors.torch import load_file  # noqa: E402

from testing_utils import VOCAB, tiny_llama, word_tokenizer  # noqa: E402

PLUGIN = "hf_cot.integrations.axolotl.COTPlugin"
STEPS = 4
COMPLEMENT_KEYS = ("complement_entropy", "complement_loss")
TIMEOUT = 600


def _base_config(root: Path, name: str) -> dict:
    assets = root / "assets"  # written by the `root` fixture
    return {
        "base_model": str(assets / "model"),
        "tokenizer_type": "AutoTokenizer",
        "datasets": [{"path": str(assets / "data.jsonl"), "ds_type": "json", "type": "completion"}],
        "dataset_prepared_path": str(root / f"prepared_{name}"),  # one each: the runs start together
        "val_set_size": 0.25,
        "sequence_len": 32,
        "output_dir": str(root / name),
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": STEPS,
        "optimizer": "adamw_torch",
        "learning_rate": 0.01,
        "lr_scheduler": "cosine",
        "seed": 7,
        "flash_attention": False,
        "sdp_attention": False,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": STEPS,
        "save_strategy": "steps",
        "save_steps": STEPS,
        "use_cpu": True,
    }


def _write_config(root: Path, name: str, extra_yaml: str = "", **overrides) -> Path:
    import yaml

    config = {**_base_config(root, name), **overrides}
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False) + extra_yaml)
    return path


def _env() -> dict:
    bin_dir = os.path.dirname(sys.executable)  # `axolotl train` execs `accelerate launch` from PATH
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_DISABLED": "true",
        "AXOLOTL_DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _start(config: Path) -> subprocess.Popen:
    axolotl = os.path.join(os.path.dirname(sys.executable), "axolotl")
    log = open(config.with_suffix(".log"), "w")  # noqa: SIM115 - closed by _finish
    return subprocess.Popen([axolotl, "train", str(config)], stdout=log, stderr=subprocess.STDOUT, env=_env())


def _finish(process: subprocess.Popen, config: Path) -> None:
    try:
        process.wait(timeout=TIMEOUT)
    finally:
        process.kill()
        process.stdout and process.stdout.close()
    log = config.with_suffix(".log").read_text()
    assert process.returncode == 0, f"axolotl train {config.name} failed:\n{log[-6000:]}"


class Run:
    """A finished run: its final weights and its log history."""

    def __init__(self, root: Path, name: str):
        self.dir = root / name
        self.weights = load_file(str(self.dir / "model.safetensors"))
        state = json.loads((self.dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
        self.train_logs = [e for e in state["log_history"] if "loss" in e]
        self.eval_log = next(e for e in state["log_history"] if "eval_loss" in e)

    def max_diff(self, other: Run) -> float:
        assert self.weights.keys() == other.weights.keys()
        return max((self.weights[k] - other.weights[k]).abs().max().item() for k in self.weights)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A folder whose `assets/` holds a tiny random Llama with a word-level tokenizer, and a jsonl of random words."""
    root = tmp_path_factory.mktemp("axolotl")
    assets = root / "assets"
    model, tokenizer = tiny_llama(), word_tokenizer()
    model.save_pretrained(assets / "model")
    tokenizer.save_pretrained(assets / "model")
    g = torch.Generator().manual_seed(0)
    with open(assets / "data.jsonl", "w") as f:
        for _ in range(48):
            n = int(torch.randint(4, 12, (1,), generator=g))
            words = " ".join(f"w{int(i)}" for i in torch.randint(2, VOCAB, (n,), generator=g))
            f.write(json.dumps({"text": words}) + "\n")
    return root


@pytest.fixture(scope="module")
def runs(root) -> dict[str, Run]:
    plugin = {"plugins": [PLUGIN]}
    configs = {
        "plain": _write_config(root, "plain"),
        # unquoted: YAML reads it as false, which the plugin takes as "off"
        "off": _write_config(root, "off", "cot_mode: off\n", **plugin),
        "joint_w0": _write_config(root, "joint_w0", cot_mode="joint", complement_weight=0.0, **plugin),
        # gradient accumulation 2 over rows of different lengths: axolotl's mean of micro-batch means
        "plain_ga2": _write_config(root, "plain_ga2", gradient_accumulation_steps=2),
        "joint_w0_ga2": _write_config(
            root, "joint_w0_ga2", cot_mode="joint", complement_weight=0.0, gradient_accumulation_steps=2, **plugin
        ),
        "joint": _write_config(root, "joint", cot_mode="joint", **plugin),
        "guided": _write_config(root, "guided", cot_mode="guided", **plugin),
        # axolotl's own scheduler (cosine with a floor), built without the Trainer's create_scheduler; GA 2; a
        # checkpoint half-way for the resume run
        "alternating": _write_config(
            root,
            "alternating",
            cot_mode="alternating",
            cosine_min_lr_ratio=0.5,
            gradient_accumulation_steps=2,
            save_steps=STEPS // 2,
            **plugin,
        ),
    }
    processes = {name: _start(path) for name, path in configs.items()}
    for name, process in processes.items():
        _finish(process, configs[name])
    # The resumed twin: a fresh output directory holding only the half-way checkpoint.
    shutil.copytree(root / "alternating" / f"checkpoint-{STEPS // 2}", root / "resumed" / f"checkpoint-{STEPS // 2}")
    resumed = _write_config(
        root,
        "resumed",
        cot_mode="alternating",
        cosine_min_lr_ratio=0.5,
        gradient_accumulation_steps=2,
        save_steps=STEPS // 2,
        resume_from_checkpoint=str(root / "resumed" / f"checkpoint-{STEPS // 2}"),
        **plugin,
    )
    _finish(_start(resumed), resumed)
    return {name: Run(root, name) for name in [*configs, "resumed"]}


def test_off_is_plain_axolotl(runs):
    """`cot_mode: off` (unquoted in YAML) is axolotl's own trainer: the same weights and logs, no COT keys."""
    plain, off = runs["plain"], runs["off"]
    assert off.max_diff(plain) == 0.0
    assert [e["loss"] for e in off.train_logs] == [e["loss"] for e in plain.train_logs]
    assert not any(k.startswith("complement") for e in off.train_logs for k in e)
    assert "hf-cot" not in (off.dir / "README.md").read_text()


def test_joint_with_zero_weight_equals_plain_axolotl(runs):
    """Gradient accumulation 1: COT's loss (the token mean of the micro-batch) is axolotl's; with the complement term
    weighted 0 the run is plain axolotl's up to float rounding (the fused head sums the loss in chunks)."""
    plain, joint = runs["plain"], runs["joint_w0"]
    assert joint.max_diff(plain) < 1e-5
    for ours, theirs in zip(joint.train_logs, plain.train_logs, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-4)
    assert joint.eval_log["eval_loss"] == pytest.approx(plain.eval_log["eval_loss"], abs=1e-5)


def test_joint_with_zero_weight_follows_axolotls_normalization_under_accumulation(runs):
    """Gradient accumulation 2, micro-batches of different token counts: axolotl averages the micro-batches' means
    (before: COT took the window's token mean, and the weights ended 0.044 apart after 4 steps)."""
    plain, joint = runs["plain_ga2"], runs["joint_w0_ga2"]
    assert joint.max_diff(plain) < 1e-5
    for ours, theirs in zip(joint.train_logs, plain.train_logs, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-4)


@pytest.mark.parametrize("mode", ["joint", "guided", "alternating"])
def test_each_mode_trains_and_logs_its_keys_next_to_axolotls(runs, mode):
    run, plain = runs[mode], runs["plain"]
    first = run.train_logs[0]
    for key in (*COMPLEMENT_KEYS, "ppl", "tokens/trainable", "tokens/total"):  # COT's keys and axolotl's own
        assert key in first, (key, first)
    if mode != "alternating":  # same weights and batch before the first update: the logged loss is plain CE
        assert first["loss"] == pytest.approx(plain.train_logs[0]["loss"], abs=1e-4)
        assert run.max_diff(plain) > 1e-4  # and the objective is not plain CE
    assert "eval_complement_entropy" in run.eval_log
    assert all(torch.isfinite(w).all() for w in run.weights.values())
    card = (run.dir / "README.md").read_text()
    assert "- hf-cot" in card and "## Complement Objective Training" in card and f"cot_mode={mode!r}" in card


def test_alternating_complement_scheduler_follows_axolotls_schedule(runs):
    """axolotl's cosine_min_lr_ratio schedule is built outside the Trainer's create_scheduler; the complement
    optimizer's scheduler is built by the same code and ends where the primary ends."""
    for step in (STEPS // 2, STEPS):
        checkpoint = runs["alternating"].dir / f"checkpoint-{step}"
        primary = torch.load(checkpoint / "scheduler.pt", weights_only=False)["_last_lr"]
        complement = torch.load(checkpoint / "complement_scheduler.pt", weights_only=False)["_last_lr"]
        assert complement == pytest.approx(primary)
    assert primary[0] == pytest.approx(0.01 * 0.5)  # the floor: min-lr ratio 0.5 at the last step


def test_alternating_resume_matches_the_uninterrupted_run(runs):
    resumed, full = runs["resumed"], runs["alternating"]
    assert resumed.max_diff(full) < 1e-6
    assert resumed.train_logs[-1]["loss"] == pytest.approx(full.train_logs[-1]["loss"], abs=1e-5)
    assert resumed.train_logs[-1]["complement_loss"] == pytest.approx(full.train_logs[-1]["complement_loss"], abs=1e-5)


# ---------------------------------------------------------------------------------------------- config-time checks


_loads = itertools.count()  # a fresh config file per load


def _load(root: Path, extra_yaml: str = "", **overrides):
    """axolotl's own config loading and validation (what `axolotl train` does before it loads a model)."""
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager

    PluginManager.get_instance().plugins.clear()  # a process-wide registry: only this config's plugins
    overrides.setdefault("plugins", [PLUGIN])
    config = _write_config(root, f"load_{next(_loads)}", extra_yaml, **overrides)
    return load_cfg(str(config))


@pytest.mark.parametrize(
    "option",
    [
        {"chunked_cross_entropy": True},
        {"liger_fused_linear_cross_entropy": True},
        {"use_eaft": True},
        {"orpo_alpha": 0.1},
        {"reward_model": True},
        {"rl": "dpo"},
        {"context_parallel_size": 2},
        {"trainer_cls": "axolotl.core.trainers.base.AxolotlTrainer"},
    ],
    ids=lambda o: next(iter(o)),
)
def test_options_that_replace_the_loss_are_refused_at_config_time(root, option):
    key = next(iter(option))
    with pytest.raises(
        Exception, match=rf"{key}.*cannot be combined with cot_mode='joint'|{key}.*is not a COT trainer"
    ):
        _load(root, cot_mode="joint", **option)


def test_cut_cross_entropy_plugin_is_refused_unless_turned_off(root):
    cce = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
    with pytest.raises(Exception, match="cut_cross_entropy.*cannot be combined"):
        _load(root, plugins=[PLUGIN, cce])  # its key defaults to true when the plugin is listed
    assert _load(root, plugins=[PLUGIN, cce], cut_cross_entropy=False).cot_mode == "joint"


def test_conflicting_options_are_fine_with_cot_off(root):
    assert _load(root, "cot_mode: off\n", chunked_cross_entropy=True).cot_mode == "off"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cot_mode": "sideways"}, "cot_mode must be one of"),
        ({"complement_weight": -1.0}, "complement_weight must be >= 0"),
        ({"complement_every": 0}, "complement_every must be an integer >= 1"),
        ({"complement_normalization": "max"}, "complement_normalization must be one of"),
        ({"cot_mode": True}, "not a mode"),
        ({"cot_mode": "alternating", "deepspeed": "zero2.json"}, "alternating' cannot run under DeepSpeed"),
    ],
)
def test_bad_cot_values_are_refused_at_config_time(root, fields, message):
    with pytest.raises(Exception, match=message):
        _load(root, **fields)


def test_every_cot_field_is_settable_from_yaml(root):
    cfg = _load(
        root,
        cot_mode="alternating",
        complement_learning_rate=0.003,
        complement_weight=0.5,
        guided_alpha=0.25,
        complement_normalization="paper",
        complement_every=2,
        cot_fused_lm_head=False,
    )
    from hf_cot.integrations.axolotl import COT_FIELDS, COTPlugin

    assert COTPlugin().get_training_args(cfg) == {
        "cot_mode": "alternating",
        "complement_learning_rate": 0.003,
        "complement_weight": 0.5,
        "guided_alpha": 0.25,
        "complement_normalization": "paper",
        "complement_every": 2,
        "cot_fused_lm_head": False,
        "class_weights": None,
    }
    assert set(COT_FIELDS) == set(COTPlugin().get_training_args(cfg))
    # class weights are for classification heads: an axolotl config (a language model) refuses them by name
    with pytest.raises(Exception, match="class_weights apply to classification heads"):
        _load(root, class_weights=[1.0, 2.0])


def test_the_example_config_validates(root):
    """examples/axolotl/cot_sft.yml, with its Hub model and dataset swapped for the local tiny ones."""
    import yaml

    example = yaml.safe_load((Path(__file__).parents[2] / "examples" / "axolotl" / "cot_sft.yml").read_text())
    local = _base_config(root, "example")
    example.update({k: local[k] for k in ("base_model", "datasets", "output_dir", "dataset_prepared_path")})
    cfg = _load(root, **example)
    assert (cfg.cot_mode, cfg.complement_weight, cfg.plugins) == ("joint", 1.0, [PLUGIN])
