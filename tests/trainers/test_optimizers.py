"""Every `--optim` the plain Trainer runs on a CPU machine either trains in cot_mode='alternating' (one complement step
per optimizer step, finite weights, a copy of the primary's class, exact resume) or is refused when the trainer is
built, with a message naming cot_mode='joint' - which then trains with it. Never a crash in the middle of a run.

The optional optimizer packages (bitsandbytes, galore-torch, apollo-torch, lomo-optim, schedulefree, grokadamw,
torch-optimi) come with the `test` extra. The matrix and the reasons are in docs/compatibility.md ("Optimizers").
"""

import os

import pytest
import torch
import transformers
from packaging import version
from transformers import Trainer, TrainingArguments

from hf_cot import COTTrainer, COTTrainingArguments
from testing_utils import classification_data, tiny_bert

pytestmark = pytest.mark.slow  # one short training run per optional optimizer package

# Trains in alternating mode and resumes exactly.
SUPPORTED = [
    "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop",
    "stable_adamw",  # torch-optimi: its constructor requires `lr`
    # bitsandbytes (CPU backend)
    "adamw_bnb_8bit", "adamw_8bit", "ademamix", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit",
    "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
]  # fmt: skip
# Train in alternating mode; their checkpoints cannot be resumed by the plain Trainer either (see the tests below).
SUPPORTED_NO_RESUME = ["galore_adamw", "galore_adafactor", "apollo_adamw"]
# Trains in alternating mode; resumes only approximately, as with the plain Trainer (state outside its state_dict).
SUPPORTED_INEXACT_RESUME = ["grokadamw"]
# Refused at construction (the reason is in the message); joint mode trains with them.
REFUSED = [
    "galore_adamw_layerwise", "galore_adafactor_layerwise", "apollo_adamw_layerwise",  # step inside backward()
    "lomo", "adalomo",  # update fused into backward()
    "schedule_free_adamw", "schedule_free_radam", "schedule_free_sgd",  # own parameter averages, train/eval modes
]  # fmt: skip
# Runnable with the plain Trainer on this CPU machine (the others need CUDA or fail in the plain Trainer here).
REFUSED_RUNNABLE_ON_CPU = ["galore_adamw_layerwise", "apollo_adamw_layerwise", "lomo", "schedule_free_adamw",
                           "schedule_free_radam", "schedule_free_sgd"]  # fmt: skip


def _args(out_dir, optim, mode="alternating", **kw):
    base = dict(
        output_dir=out_dir, report_to=[], use_cpu=True, disable_tqdm=True, optim=optim, cot_mode=mode,
        per_device_train_batch_size=8, max_steps=4, learning_rate=1e-3, logging_steps=1, seed=3, data_seed=3,
        save_strategy="steps", save_steps=2, save_only_model=False,
    )  # fmt: skip
    if optim.startswith(("galore", "apollo")):  # they project the matrices of the named modules only
        base["optim_target_modules"] = ["attention", "intermediate"]
    base.update(kw)
    return COTTrainingArguments(**base)


def _train(out_dir, optim, resume_from=None, **kw):
    trainer = COTTrainer(model=tiny_bert(), args=_args(out_dir, optim, **kw), train_dataset=classification_data(n=32))
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer


def _state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("optim", SUPPORTED + SUPPORTED_NO_RESUME + SUPPORTED_INEXACT_RESUME)
def test_alternating_trains_one_complement_step_per_optimizer_step(optim, tmp_path):
    full = _train(str(tmp_path / "full"), optim)
    assert full.complement_steps == 4 and full.complement_skipped_steps == 0
    assert type(full.complement_optimizer) is type(full.optimizer.optimizer)  # a copy of the primary's class
    assert all(torch.isfinite(p).all() for p in full.model.parameters())
    start = tiny_bert().state_dict()
    assert max((v - start[k]).abs().max().item() for k, v in _state(full).items()) > 1e-4  # it did train
    if optim not in SUPPORTED:
        return
    resumed = _train(str(tmp_path / "full"), optim, resume_from=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed.complement_steps == 4
    a, b = _state(full), _state(resumed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, "resume differs from the uninterrupted run"


@pytest.mark.parametrize("optim", SUPPORTED_NO_RESUME)
def test_their_checkpoints_do_not_load_in_the_plain_trainer_either(optim, tmp_path):
    """GaLore/APOLLO keep projector objects in their state; transformers loads optimizer.pt with weights_only=True."""
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True, optim=optim, max_steps=2,
        save_steps=1, per_device_train_batch_size=8, optim_target_modules=["attention", "intermediate"],
    )  # fmt: skip
    Trainer(model=tiny_bert(), args=args, train_dataset=classification_data(n=16)).train()
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        trainer = Trainer(model=tiny_bert(), args=args, train_dataset=classification_data(n=16))
        trainer.train(resume_from_checkpoint=os.path.join(str(tmp_path), "checkpoint-1"))


def test_bitsandbytes_copies_keep_8_bit_paged_state():
    """bitsandbytes keeps optim_bits / min_8bit_size / is_paged on the instance, not in `defaults`: the copy must
    have them too, or the complement optimizer silently holds 32-bit state (4x the memory)."""
    import bitsandbytes as bnb

    from hf_cot.complement_optimizer import copy_optimizer

    # bitsandbytes' global per-parameter overrides (the Trainer registers embeddings as 32-bit) are keyed by id(p):
    # clear them, or a new tensor at a recycled address inherits one.
    bnb.optim.GlobalOptimManager.get_instance().initialize()
    layer = torch.nn.Linear(64, 32)
    primary = bnb.optim.AdamW(layer.parameters(), lr=1e-3, optim_bits=8, min_8bit_size=16, is_paged=True)
    copy = copy_optimizer(primary, 0.5)
    layer(torch.randn(2, 64)).sum().backward()
    primary.step()
    copy.step()
    assert copy.is_paged and copy.args.optim_bits == 8 and copy.param_groups[0]["lr"] == 0.5e-3
    assert primary.state[layer.weight]["state1"].dtype == torch.uint8
    assert copy.state[layer.weight]["state1"].dtype == torch.uint8


def test_grokadamw_resumes_inexactly_in_the_plain_trainer_too(tmp_path):
    def run(resume=None):
        args = TrainingArguments(
            output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True, optim="grokadamw", max_steps=4,
            save_steps=2, per_device_train_batch_size=8, learning_rate=1e-3, seed=3, data_seed=3,
        )  # fmt: skip
        trainer = Trainer(model=tiny_bert(), args=args, train_dataset=classification_data(n=32))
        trainer.train(resume_from_checkpoint=resume)
        return _state(trainer)

    a, b = run(), run(os.path.join(str(tmp_path), "checkpoint-2"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-4


@pytest.mark.parametrize("optim", REFUSED)
def test_refused_when_the_trainer_is_built(optim, out_dir):
    with pytest.raises(ValueError, match="cot_mode='joint'") as err:
        COTTrainer(model=tiny_bert(), args=_args(out_dir, optim), train_dataset=classification_data(n=8))
    assert optim in str(err.value)


@pytest.mark.parametrize("optim", REFUSED_RUNNABLE_ON_CPU)
def test_joint_mode_trains_with_the_refused_ones(optim, out_dir):
    if optim.endswith("_layerwise") and version.parse(transformers.__version__).major < 5:
        pytest.skip("transformers 4.x's layer-wise setup fails in the plain Trainer too with torch 2.13 (zip() error)")
    trainer = _train(out_dir, optim, mode="joint", max_steps=2, save_strategy="no")
    assert trainer.state.global_step == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


class _ScheduleFreeLike(torch.optim.SGD):
    """Has the train()/eval() mode switch of the schedule-free optimizers."""

    def train(self):
        pass

    def eval(self):
        pass


class _NeedsExtraArgument(torch.optim.AdamW):
    def __init__(self, params, my_flag, **kwargs):
        super().__init__(params, **kwargs)


class _Lookahead(torch.optim.Optimizer):
    """A wrapper around another optimizer, as Lookahead implementations are."""

    def __init__(self, optimizer, k=5):
        self.optimizer, self.k = optimizer, k
        self.param_groups, self.defaults, self.state = optimizer.param_groups, optimizer.defaults, optimizer.state

    def step(self, closure=None):
        return self.optimizer.step(closure)


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda ps: _ScheduleFreeLike(ps, lr=0.1), ValueError, "schedule-free"),
        (lambda ps: _NeedsExtraArgument(ps, True, lr=0.1), TypeError, "my_flag"),
        (lambda ps: _Lookahead(torch.optim.SGD(ps, lr=0.1)), ValueError, "wraps another optimizer"),
    ],
)
def test_user_optimizers_that_cannot_be_copied_are_refused_at_construction(make, error, match, out_dir):
    model = tiny_bert()
    with pytest.raises(error, match=match) as err:
        COTTrainer(model=model, args=_args(out_dir, "adamw_torch"), train_dataset=classification_data(n=8),
                   optimizers=(make(model.parameters()), None))  # fmt: skip
    assert "cot_mode='joint'" in str(err.value)


def test_optimizer_cls_and_kwargs_that_cannot_be_copied_is_refused_at_construction(out_dir):
    with pytest.raises(TypeError, match="my_flag"):
        COTTrainer(model=tiny_bert(), args=_args(out_dir, "adamw_torch"), train_dataset=classification_data(n=8),
                   optimizer_cls_and_kwargs=(_NeedsExtraArgument, {"my_flag": True, "lr": 0.1}))  # fmt: skip


def test_a_user_optimizer_instance_is_copied(out_dir):
    model = tiny_bert()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    trainer = COTTrainer(model=model, args=_args(out_dir, "adamw_torch", save_strategy="no"),
                         train_dataset=classification_data(n=32), optimizers=(optimizer, None))  # fmt: skip
    trainer.train()
    copy = trainer.complement_optimizer
    assert type(copy) is torch.optim.SGD and copy.defaults["momentum"] == 0.9 and copy.defaults["nesterov"]
    assert trainer.complement_steps == 4
