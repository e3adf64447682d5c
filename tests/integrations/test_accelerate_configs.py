"""examples/accelerate_configs/: every YAML loads with accelerate's own loader and resolves, through `accelerate
launch`'s own argument handling (no process is started), to the engine its name and header claim: the environment
the launcher hands each process, and the FSDP / DeepSpeed plugin each process's `Accelerator` builds from it.

What training under these configs gives is tested in tests/trainers/test_engines.py (2 CPU processes per engine) and, on GPUs,
by benchmarks/gpu_engines_smoke.sh."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "examples" / "accelerate_configs"

# file -> (distributed type, mixed precision, what the launcher must put in each process's environment)
CONFIGS = {
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, "no", {}),
    "fsdp2.yaml": (
        DistributedType.FSDP,
        "bf16",
        {
            "ACCELERATE_USE_FSDP": "true",
            "FSDP_VERSION": "2",
            "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
            "FSDP_OFFLOAD_PARAMS": "false",
        },
    ),
    "deepspeed_zero2.yaml": (
        DistributedType.DEEPSPEED,
        "bf16",
        {
            "ACCELERATE_USE_DEEPSPEED": "true",
            "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false",
        },
    ),
    "deepspeed_zero3.yaml": (
        DistributedType.DEEPSPEED,
        "bf16",
        {
            "ACCELERATE_USE_DEEPSPEED": "true",
            "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true",
            "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true",
        },
    ),
}


def _launch_environment(path: Path, num_processes: int = 2):
    """What `accelerate launch --config_file path --num_processes N script.py` resolves, short of starting processes:
    the parsed arguments, the loaded config and the environment every process gets."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(path), "--num_processes", str(num_processes), "script.py"]
    )
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, defaults, env


def test_the_directory_holds_exactly_the_tested_configs():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_loads_with_accelerates_loader(name):
    path = CONFIG_DIR / name
    distributed_type, mixed_precision, _ = CONFIGS[name]
    config = load_config_from_file(str(path))  # what `accelerate launch --config_file` calls; unknown keys raise
    assert isinstance(config, ClusterConfig)
    assert config == ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type == distributed_type
    assert config.mixed_precision == mixed_precision
    assert config.num_machines == 1 and config.machine_rank == 0 and not config.use_cpu
    if name == "fsdp2.yaml":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    else:
        assert config.fsdp_config == {}
    if distributed_type == DistributedType.DEEPSPEED:
        stage = int(name[-6])  # deepspeed_zero<stage>.yaml
        assert config.deepspeed_config["zero_stage"] == stage
        assert config.deepspeed_config["zero3_init_flag"] is (stage == 3)
        # Left out on purpose: DeepSpeed then takes "auto", which the Trainer fills with --gradient_accumulation_steps
        # (a fixed value here would be a mismatch error for any other GA).
        assert "gradient_accumulation_steps" not in config.deepspeed_config
    else:
        assert config.deepspeed_config == {}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_resolves_to_its_engine_in_accelerate_launch(name):
    distributed_type, mixed_precision, expected_env = CONFIGS[name]
    args, defaults, env = _launch_environment(CONFIG_DIR / name)
    assert args.multi_gpu is (distributed_type == DistributedType.MULTI_GPU)
    assert args.use_fsdp is (distributed_type == DistributedType.FSDP)
    assert args.use_deepspeed is (distributed_type == DistributedType.DEEPSPEED)
    # accelerate copies the sections' keys onto the launch arguments without checking them: a misspelt key would be
    # silently ignored, so every key must name a launch argument
    for key in defaults.fsdp_config:
        assert hasattr(args, key if key.startswith("fsdp_") else f"fsdp_{key}"), key
    for key in defaults.deepspeed_config:
        assert hasattr(args, key), key
    assert env["ACCELERATE_MIXED_PRECISION"] == mixed_precision
    assert {k: env.get(k) for k in expected_env} == expected_env
    if distributed_type != DistributedType.FSDP:
        assert "ACCELERATE_USE_FSDP" not in env
    if distributed_type != DistributedType.DEEPSPEED:
        assert "ACCELERATE_USE_DEEPSPEED" not in env
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env


@pytest.mark.parametrize("name", ["fsdp2.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_each_process_builds_the_claimed_plugin(name, monkeypatch):
    """The plugin an `Accelerator` (or `TrainingArguments`) builds from the launcher's environment."""
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    _, _, env = _launch_environment(CONFIG_DIR / name)
    for key in [k for k in os.environ if k.startswith(("ACCELERATE_", "FSDP_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    if name == "fsdp2.yaml":
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2
        assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
        assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
        assert plugin.reshard_after_forward is True
    else:
        stage = int(name[-6])
        plugin = DeepSpeedPlugin()
        assert plugin.zero_stage == stage
        assert plugin.zero3_init_flag is (stage == 3)
        config = plugin.deepspeed_config
        assert config["zero_optimization"]["stage"] == stage
        assert config["zero_optimization"]["offload_optimizer"]["device"] == "none"
        for key in ("gradient_accumulation_steps", "train_micro_batch_size_per_gpu", "train_batch_size"):
            assert config[key] == "auto", key  # filled by the Trainer from its arguments


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_header_gives_the_launch_commands(name):
    text = (CONFIG_DIR / name).read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert f"accelerate launch --config_file examples/accelerate_configs/{name}" in header
    assert "examples/language-modeling/run_sft.py" in header
    for flag in ("--num_machines 2", "--machine_rank $RANK", "--main_process_ip $MASTER_ADDR", "--main_process_port"):
        assert flag in header, flag
    # the header says which COT modes run there, and it agrees with the engine
    assert "joint" in header and "guided" in header
    if name.startswith("deepspeed"):
        assert re.search(r"alternating is refused", header)
    else:
        assert "alternating" in header and "refused" not in header


def test_the_docs_name_only_existing_configs():
    """docs/compatibility.md (the engine table) and examples/accelerate_configs/README.md name every config, and every
    config they name exists; the README points at both."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](examples/accelerate_configs/README.md)" in readme and "](docs/compatibility.md)" in readme
    for doc in (ROOT / "docs" / "compatibility.md", CONFIG_DIR / "README.md"):
        text = doc.read_text(encoding="utf-8")
        named = set(re.findall(r"examples/accelerate_configs/([\w.-]+\.yaml)", text))
        named |= set(re.findall(r"\]\(([\w.-]+\.yaml)\)", text))  # relative links inside the configs' README
        assert named == set(CONFIGS), (doc, named)
        assert "benchmarks/gpu_engines_smoke.sh" in text
