"""`ComplementStep` on its own, without a Trainer: one update equals a hand-written SGD step on -H / c, its schedule
follows the primary's, skipped windows are counted, and its checkpoint files round-trip."""

import math
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from hf_cot.complement_optimizer import copy_optimizer
from hf_cot.complement_step import ComplementStep
from testing_utils import naive_entropy


def _args(**kw):
    base = dict(
        learning_rate=0.1, effective_complement_learning_rate=0.05, lr_scheduler_type="linear", lr_scheduler_kwargs={},
        complement_normalization="log", complement_every=1, max_grad_norm=0.0, seed=42,
    )  # fmt: skip
    base.update(kw)
    args = SimpleNamespace(**base)
    args.get_warmup_steps = lambda n: 0
    return args


def _setup(**kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 6)
    primary = torch.optim.SGD(model.parameters(), lr=0.1)
    window = [
        {"x": torch.randn(3, 4), "labels": torch.tensor([0, 5, -100])},
        {"x": torch.randn(2, 4), "labels": torch.tensor([2, 2])},
    ]
    return model, primary, window, ComplementStep(primary, _args(**kw), num_training_steps=10)


def _sums_fn(model):
    def fn(inputs):
        from hf_cot.objective import sums_from_logits

        return sums_from_logits("complement", model(inputs["x"]), inputs["labels"])

    return fn


def test_one_update_is_a_hand_written_sgd_step_on_the_normalized_complement_objective():
    model, _, window, step = _setup()
    reference = torch.nn.Linear(4, 6)
    reference.load_state_dict(model.state_dict())
    reference = reference.double()
    count = torch.tensor(4)  # valid labels in the window

    values = step(model=model, window=window, count=count, denominator=count.float(), sums_fn=_sums_fn(model),
                  accelerator=Accelerator(cpu=True), step_number=1)  # fmt: skip

    total = sum(naive_entropy(reference(b["x"].double())[b["labels"] != -100], b["labels"][b["labels"] != -100]).sum()
                for b in window)  # fmt: skip
    (-total / math.log(5) / 4).backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        expected = q.detach() - 0.05 * q.grad  # complement lr 0.05 (first step of a linear schedule, no warm-up)
        assert torch.allclose(p.double(), expected, atol=1e-6)
    assert step.steps == 1 and step.skipped_steps == 0
    assert values["complement_entropy"].item() == pytest.approx(total.item() / 4, rel=1e-5)
    assert step.scheduler.get_last_lr()[0] == pytest.approx(0.05 * 9 / 10)  # advanced one step of ten


def test_every_k_steps_and_an_empty_window():
    model, _, window, step = _setup(complement_every=2)
    before = [p.detach().clone() for p in model.parameters()]
    kw = dict(model=model, window=window, denominator=torch.tensor(4.0), sums_fn=_sums_fn(model),
              accelerator=Accelerator(cpu=True))  # fmt: skip
    assert step(count=torch.tensor(4), step_number=1, **kw) is None  # not a multiple of 2: schedule only
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert step.scheduler.last_epoch == 1
    assert step(count=torch.tensor(0), step_number=2, **kw) is None  # every label ignored
    assert step.skipped_steps == 1 and step.steps == 0


def test_copy_keeps_the_groups_hyper_parameters_and_drops_frozen_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    model[0].bias.requires_grad_(False)
    primary = torch.optim.AdamW(
        [{"params": list(model[0].parameters()), "weight_decay": 0.0}, {"params": list(model[1].parameters())}],
        lr=0.01, weight_decay=0.1, betas=(0.8, 0.9),
    )  # fmt: skip
    copy = copy_optimizer(primary, 0.5)
    assert type(copy) is torch.optim.AdamW and copy.defaults["betas"] == (0.8, 0.9)
    assert [g["weight_decay"] for g in copy.param_groups] == [0.0, 0.1]
    assert [g["lr"] for g in copy.param_groups] == [0.005, 0.005]
    assert copy.param_groups[0]["params"] == [model[0].weight]


def test_checkpoint_files_round_trip(tmp_path):
    model, _, window, step = _setup()
    count = torch.tensor(4)
    step(model=model, window=window, count=count, denominator=count.float(), sums_fn=_sums_fn(model),
         accelerator=Accelerator(cpu=True), step_number=1)  # fmt: skip
    step.save(str(tmp_path))
    _, _, _, fresh = _setup()
    assert fresh.load(str(tmp_path), torch.device("cpu"))
    assert fresh.steps == 1 and fresh.scheduler.last_epoch == step.scheduler.last_epoch
    assert fresh.optimizer.state_dict()["param_groups"] == step.optimizer.state_dict()["param_groups"]
    with pytest.warns(UserWarning, match="start fresh"):
        assert not fresh.load(str(tmp_path / "missing"), torch.device("cpu"))
