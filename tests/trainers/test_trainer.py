"""COTTrainer / COTSeq2SeqTrainer against independent expectations: a hand-written reference loop, equivalent runs,
hand-computed losses, and the parent Trainer."""

import copy
import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_cot import COTSeq2SeqTrainer, COTSeq2SeqTrainingArguments, COTTrainer, COTTrainingArguments
from hf_cot.heads import _REGISTERED, register_head
from testing_utils import (
    batch_of,
    classification_data,
    max_param_diff,
    naive_entropy,
    seq2seq_data,
    tiny_bert,
    tiny_marian,
)


def make_args(out_dir, **kw):
    base = dict(
        output_dir=out_dir,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=8,
        max_steps=3,
        logging_steps=1,
        seed=7,
        data_seed=7,
        cot_mode="alternating",  # the mode with the most machinery; the others are asked for by name
    )
    base.update(kw)
    return COTTrainingArguments(**base)


def train(model, args, data, cls=COTTrainer, **kw):
    trainer = cls(model=model, args=args, train_dataset=data, **kw)
    trainer.train()
    return trainer


# ----------------------------------------------------------------------------- the alternating algorithm


def test_alternating_equals_a_hand_written_reference_loop(out_dir):
    """Paper's Algorithm 1 with two SGD optimizers, written by hand, vs COTTrainer (one batch = whole dataset)."""
    data = classification_data(n=16)
    lr, lr_c, steps, K = 0.5, 0.3, 3, 5
    model = tiny_bert(num_labels=K)
    reference = copy.deepcopy(model)
    args = make_args(
        out_dir,
        optim="sgd",
        learning_rate=lr,
        complement_learning_rate=lr_c,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        per_device_train_batch_size=16,
        max_steps=steps,
    )
    trainer = train(model, args, data)

    batch = batch_of(data)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    opt_ce = torch.optim.SGD(reference.parameters(), lr=lr)
    opt_c = torch.optim.SGD(reference.parameters(), lr=lr_c)
    reference.train()
    for _ in range(steps):
        F.cross_entropy(reference(**inputs).logits, batch["labels"]).backward()
        opt_ce.step()
        opt_ce.zero_grad()
        objective = -naive_entropy(reference(**inputs).logits, batch["labels"]).mean() / math.log(K - 1)
        objective.float().backward()
        opt_c.step()
        opt_c.zero_grad()
    assert max_param_diff(trainer.model, reference) < 2e-6
    assert trainer.complement_steps == steps


@pytest.mark.parametrize("ga", [1, 2])
def test_exactly_one_complement_step_per_optimizer_step(ga, out_dir):
    args = make_args(out_dir, per_device_train_batch_size=8 // ga, gradient_accumulation_steps=ga, max_steps=4)
    trainer = train(tiny_bert(), args, classification_data())
    assert trainer.state.global_step == 4
    assert trainer.complement_steps == 4
    # AdamW counts its own steps: the complement optimizer stepped once per optimizer step, no more.
    steps = {int(s["step"]) for s in trainer.complement_optimizer.state.values()}
    assert steps == {4}
    assert trainer.complement_lr_scheduler.last_epoch == 4


def test_alternating_differs_from_cross_entropy_alone(out_dir):
    data = classification_data()
    ce = train(tiny_bert(), make_args(out_dir, cot_mode="off"), data)
    cot = train(tiny_bert(), make_args(out_dir), data)
    assert max_param_diff(ce.model, cot.model) > 1e-4


def test_off_is_bit_identical_to_the_parent_trainer(out_dir):
    data = classification_data()
    # The same arguments as make_args gives the COT trainer, as plain TrainingArguments.
    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    plain_args = TrainingArguments(**{k: v for k, v in make_args(out_dir).to_dict().items() if k in fields})
    plain = Trainer(model=tiny_bert(), args=plain_args, train_dataset=data)
    plain.train()
    off = train(tiny_bert(), make_args(out_dir, cot_mode="off"), data)
    for p, q in zip(plain.model.parameters(), off.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("mode", ["alternating", "joint", "guided"])
def test_gradient_accumulation_is_exact_for_classification(mode, out_dir):
    data = classification_data()
    a = train(tiny_bert(), make_args(out_dir, cot_mode=mode, per_device_train_batch_size=8), data)
    b = train(
        tiny_bert(),
        make_args(out_dir, cot_mode=mode, per_device_train_batch_size=4, gradient_accumulation_steps=2),
        data,
    )
    assert max_param_diff(a.model, b.model) < 1e-5
    assert a.state.log_history[0]["loss"] == pytest.approx(b.state.log_history[0]["loss"], rel=1e-4)


@pytest.mark.parametrize("mode", ["alternating", "joint", "guided"])
def test_gradient_accumulation_is_exact_for_seq2seq_with_uneven_targets(mode, out_dir):
    """Targets of different lengths: only a window-level token count makes (8, GA 1) == (4, GA 2)."""
    data = seq2seq_data()

    def run(bs, ga):
        args = COTSeq2SeqTrainingArguments(
            **{
                **make_args(out_dir).to_dict(),
                "cot_mode": mode,
                "per_device_train_batch_size": bs,
                "gradient_accumulation_steps": ga,
            }
        )
        return train(tiny_marian(), args, data, cls=COTSeq2SeqTrainer)

    assert max_param_diff(run(8, 1).model, run(4, 2).model) < 1e-5


def test_complement_every_k(out_dir):
    args = make_args(out_dir, complement_every=2, max_steps=5, warmup_steps=1, complement_learning_rate=1e-3)
    trainer = train(tiny_bert(), args, classification_data())
    assert trainer.complement_steps == 2  # steps 2 and 4
    assert {int(s["step"]) for s in trainer.complement_optimizer.state.values()} == {2}
    # The complement schedule advances every step and follows the primary's shape.
    assert trainer.complement_lr_scheduler.last_epoch == 5
    ratio = 1e-3 / args.learning_rate
    for g_c, g_p in zip(trainer.complement_optimizer.param_groups, trainer.optimizer.param_groups, strict=True):
        assert g_c["lr"] == pytest.approx(g_p["lr"] * ratio)
        assert g_c["weight_decay"] == g_p["weight_decay"]


def test_frozen_parameters_stay_out_of_the_complement_optimizer(out_dir):
    model = tiny_bert()
    frozen = model.bert.embeddings.word_embeddings.weight
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    trainer = train(model, make_args(out_dir), classification_data())
    in_complement = {id(p) for g in trainer.complement_optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_complement == trainable and id(frozen) not in in_complement
    assert torch.equal(frozen, before)


# ----------------------------------------------------------------------------- losses seen by the trainer


def test_log_lines_carry_complement_metrics(out_dir):
    K = 5
    for norm, scale in (("log", math.log(K - 1)), ("paper", K - 1)):
        trainer = train(
            tiny_bert(num_labels=K),
            make_args(out_dir, complement_normalization=norm, max_steps=4, logging_steps=2),
            classification_data(),
        )
        lines = [h for h in trainer.state.log_history if "loss" in h]
        assert len(lines) == 2
        for line in lines:
            assert 0 < line["complement_entropy"] <= math.log(K - 1) + 1e-6
            assert line["complement_loss"] == pytest.approx(-line["complement_entropy"] / scale, rel=1e-5)
            assert line["complement_skipped_steps"] == 0


def test_logged_entropy_is_the_mean_over_the_logged_steps(out_dir):
    """With SGD at lr 0 the model never changes, so every step's entropy is that of the same model on its batch."""
    data = classification_data(n=16)
    model = tiny_bert()
    args = make_args(
        out_dir, optim="sgd", learning_rate=0.0, per_device_train_batch_size=16, max_steps=2, logging_steps=2
    )
    trainer = train(model, args, data)
    batch = batch_of(data)
    with torch.no_grad():
        H = naive_entropy(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
    assert trainer.state.log_history[0]["complement_entropy"] == pytest.approx(H.mean().item(), rel=1e-5)


def test_alternating_at_zero_complement_rate_is_off_even_with_dropout(out_dir):
    """The complement forwards draw dropout masks from their own random stream, so the CE steps see exactly the
    masks of cot_mode='off' (before, the complement forward consumed the global stream: the CE from step 2 on
    differed by ~2e-3)."""
    data = classification_data()
    kw = dict(optim="sgd", learning_rate=0.5, max_steps=4, per_device_train_batch_size=4)
    model = tiny_bert(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    off = train(copy.deepcopy(model), make_args(f"{out_dir}/off", cot_mode="off", **kw), data)
    alt = train(copy.deepcopy(model), make_args(f"{out_dir}/alt", complement_learning_rate=0.0, **kw), data)
    assert alt.complement_steps == 4
    assert max_param_diff(alt.model, off.model) == 0.0
    assert [h["loss"] for h in alt.state.log_history if "loss" in h] == [
        h["loss"] for h in off.state.log_history if "loss" in h
    ]
    # control: the complement step does change the weights at a non-zero rate
    moved = train(copy.deepcopy(model), make_args(f"{out_dir}/mv", **kw), data)
    assert max_param_diff(moved.model, off.model) > 1e-4


def test_resume_with_dropout_is_exact(out_dir, tmp_path):
    """The complement's random stream is saved per process with the checkpoint and restored on resume."""
    data = classification_data()
    kw = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=4)
    dropout = dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    full = train(tiny_bert(**dropout), make_args(out_dir, **kw), data)
    ckpt = os.path.join(out_dir, "checkpoint-2")
    assert os.path.isfile(os.path.join(ckpt, "complement_rng_state_0.pth"))
    resumed = COTTrainer(model=tiny_bert(seed=99, **dropout), args=make_args(str(tmp_path / "r"), **kw),
                         train_dataset=data)  # fmt: skip
    resumed.train(resume_from_checkpoint=ckpt)
    assert max_param_diff(full.model, resumed.model) == 0.0


# ----------------------------------------------------------------------------- checkpoints


def test_resume_from_a_middle_checkpoint_is_exact(out_dir, tmp_path):
    data = classification_data()
    kw = dict(
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        warmup_steps=2,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=4,
    )
    full = train(tiny_bert(), make_args(out_dir, **kw), data)
    ckpt = os.path.join(out_dir, "checkpoint-2")
    for name in ("complement_optimizer.pt", "complement_scheduler.pt", "complement_state.json", "optimizer.pt"):
        assert os.path.isfile(os.path.join(ckpt, name)), name

    resumed = COTTrainer(model=tiny_bert(seed=99), args=make_args(str(tmp_path / "r"), **kw), train_dataset=data)
    resumed.train(resume_from_checkpoint=ckpt)
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert resumed.complement_steps == full.complement_steps == 6

    # Negative control: without the complement optimizer state the run diverges (and says so).
    os.remove(os.path.join(ckpt, "complement_optimizer.pt"))
    fresh = COTTrainer(model=tiny_bert(seed=99), args=make_args(str(tmp_path / "f"), **kw), train_dataset=data)
    with pytest.warns(UserWarning, match="complement_optimizer.pt"):
        fresh.train(resume_from_checkpoint=ckpt)
    assert max_param_diff(full.model, fresh.model) > 0


# ----------------------------------------------------------------------------- precision, card


def test_bf16_runs_and_stays_finite(out_dir):
    trainer = train(tiny_bert(), make_args(out_dir, bf16=True), classification_data())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.complement_steps == 3
    assert all(math.isfinite(h["complement_entropy"]) for h in trainer.state.log_history if "loss" in h)


def test_model_tags_and_card_cite_the_paper(out_dir):
    model = tiny_bert()
    trainer = train(model, make_args(out_dir, max_steps=1), classification_data())
    assert {"hf-cot", "complement-objective-training"} <= set(model.model_tags)
    trainer.create_model_card(model_name="tiny-cot")
    card = open(os.path.join(out_dir, "README.md"), encoding="utf-8").read()
    assert "hf-cot" in card and "complement-objective-training" in card
    assert "@inproceedings{chen2019complement" in card and "Complement Objective Training" in card
    assert "https://arxiv.org/abs/1903.01182" in card  # the paper, linked next to the bibtex


# ----------------------------------------------------------------------------- bad input


def test_regression_head_is_refused(out_dir):
    with pytest.raises(ValueError, match="regression"):
        COTTrainer(model=tiny_bert(num_labels=1), args=make_args(out_dir))


def test_multi_label_head_is_refused(out_dir):
    with pytest.raises(ValueError, match="multi_label"):
        COTTrainer(model=tiny_bert(problem_type="multi_label_classification"), args=make_args(out_dir))


def test_binary_head_warns_and_guided_refuses(out_dir):
    with pytest.warns(UserWarning, match="binary"):
        COTTrainer(model=tiny_bert(num_labels=2), args=make_args(out_dir))
    with pytest.raises(ValueError, match="binary"):
        COTTrainer(model=tiny_bert(num_labels=2), args=make_args(out_dir, cot_mode="guided"))


def test_compute_loss_func_is_refused(out_dir):
    with pytest.raises(ValueError, match="compute_loss_func"):
        COTTrainer(model=tiny_bert(), args=make_args(out_dir), compute_loss_func=lambda *a, **k: 0)


class NoLogitsModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 5)

    def forward(self, x, labels=None):
        return {"scores": self.linear(x)}


def test_model_without_loss_or_logits_gives_a_clear_error(out_dir):
    """No loss when given labels: refused (nothing to check against), unless its head was declared; a declared head
    without logits: the error names the missing output."""
    data = [{"x": torch.randn(4), "labels": i % 5} for i in range(16)]
    trainer = COTTrainer(model=NoLogitsModel(), args=make_args(out_dir), train_dataset=data)
    with pytest.raises(ValueError, match="NoLogitsModel returns no loss when given labels.*register_head"):
        trainer.train()
    register_head(NoLogitsModel, "classification")
    try:
        trainer = COTTrainer(model=NoLogitsModel(), args=make_args(out_dir), train_dataset=data)
        with pytest.raises(TypeError, match="logits"):
            trainer.train()
    finally:
        _REGISTERED.pop("NoLogitsModel")


def test_labels_outside_the_classes_are_refused(out_dir):
    data = classification_data(num_labels=5)
    data[3]["labels"] = 7
    for mode in ("alternating", "joint", "guided"):
        trainer = COTTrainer(
            model=tiny_bert(num_labels=5),
            args=make_args(out_dir, cot_mode=mode, per_device_train_batch_size=32, max_steps=1),
            train_dataset=data,
        )
        with pytest.raises(ValueError, match="label 7 is outside"):
            trainer.train()


def test_all_ignored_labels_skip_the_complement_step_with_a_warning(out_dir, caplog):
    data = seq2seq_data(n=8)
    for row in data:
        row["labels"] = torch.full_like(row["labels"], -100)
    args = COTSeq2SeqTrainingArguments(**{**make_args(out_dir).to_dict(), "max_steps": 2})
    with caplog.at_level("WARNING", logger="hf_cot.complement_step"):
        trainer = train(tiny_marian(), args, data, cls=COTSeq2SeqTrainer)
    assert "-100" in caplog.text
    assert trainer.complement_skipped_steps == 2 and trainer.complement_steps == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


class PoisonedComplementModel(torch.nn.Module):
    """Returns NaN logits on every second training forward: the complement forward of the alternating step."""

    def __init__(self, poison: bool):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 5)
        self.poison, self.calls = poison, 0

    def forward(self, x, labels=None):
        logits = self.linear(x)
        if self.training:
            self.calls += 1
            if self.poison and self.calls % 2 == 0:
                logits = logits * float("nan")
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def test_non_finite_complement_loss_is_skipped_and_counted(out_dir):
    data = [{"x": torch.randn(4, generator=torch.Generator().manual_seed(i)), "labels": i % 5} for i in range(16)]
    poisoned = train(PoisonedComplementModel(poison=True), make_args(out_dir, max_steps=3, logging_steps=3), data)
    assert poisoned.complement_skipped_steps == 3 and poisoned.complement_steps == 0
    assert poisoned.state.log_history[0]["complement_skipped_steps"] == 3
    assert all(torch.isfinite(p).all() for p in poisoned.model.parameters())
    # The CE steps went through untouched: same weights as a CE-only run of our loss (joint with weight 0).
    ce_only = train(
        PoisonedComplementModel(poison=False),
        make_args(out_dir, cot_mode="joint", complement_weight=0.0, max_steps=3),
        data,
    )
    assert max_param_diff(poisoned.model, ce_only.model) < 1e-7
