"""Test environment (set before torch is imported) and fixtures; shared helpers are in tests/testing_utils.py."""

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU, tests/ops/test_triton_kernels.py runs the Triton kernels on Triton's CPU interpreter. That has to be chosen
# before anything imports triton (its standard library is decorated at import), hence here, before torch.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

# The models here are tiny: extra threads only add synchronization (measured: a tiny-BERT test took 37 s instead of
# 0.5 s with 2 threads on a loaded 2-core machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_environment():
    """Undo what a test writes into os.environ. transformers 4.x's `TrainingArguments(bf16=True)` sets
    ACCELERATE_MIXED_PRECISION=bf16 and no later `TrainingArguments` resets it, so every later Trainer in the process
    ran under bf16 autocast (test_peft's LoRA reload 1e-3 off, test_trainer's GA equalities broken)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def out_dir(tmp_path):
    return str(tmp_path / "out")
