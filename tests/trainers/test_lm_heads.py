"""COT on the heads most fine-tuning uses now: decoder-only LMs (per token over the vocabulary, shifted as their own
loss is) and token classification (per token over the tag set), in every mode, against independent references."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from hf_cot import COTTrainer, COTTrainingArguments
from testing_utils import (
    causal_lm_data,
    max_param_diff,
    naive_entropy,
    tiny_causal_lm,
    tiny_token_classifier,
    token_classification_data,
)

ARCHS = ["llama", "gpt2", "qwen2", "bert_decoder"]
MODES = ["alternating", "joint", "guided"]


def _model(kind):
    return tiny_token_classifier() if kind == "token" else tiny_causal_lm(kind)


def _data(kind, n=24):
    return token_classification_data(n=n) if kind == "token" else causal_lm_data(n=n)


def _args(out_dir, **kw):
    base = dict(
        output_dir=out_dir, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=4, data_seed=4,
        per_device_train_batch_size=8, max_steps=3, learning_rate=3e-3, logging_steps=1,
    )  # fmt: skip
    base.update(kw)
    return COTTrainingArguments(**base)


def _reference_objective(mode, logits, labels, weight=0.7, alpha=0.25, scale=None):
    """Float64, from the definitions, over the valid positions only."""
    valid = labels != -100
    z, y = logits[valid], labels[valid]
    ce = F.cross_entropy(z, y)
    H = naive_entropy(z, y)
    if mode == "joint":
        return ce, ce - weight * H.mean() / scale
    if mode == "guided":
        p_g = torch.softmax(z, -1).gather(1, y[:, None]).squeeze(1)
        return ce, (-(p_g**alpha) * H / math.log(z.shape[-1] - 1)).mean()
    return ce, ce


@pytest.mark.parametrize("mode", [*MODES, "off"])  # off: the model's own loss, through the parent Trainer
@pytest.mark.parametrize("kind", [*ARCHS, "token"])
def test_step_reports_ce_and_follows_the_objective_on_shifted_or_token_logits(kind, mode, out_dir):
    """-100 prompts and padding; the causal heads compare position t's logits with label t + 1."""
    rows = _data(kind, n=6)
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    model = _model(kind)
    # The reference loss is float64 math on the logits (a float64 BERT forward overflows in transformers 4.x's mask).
    reference = copy.deepcopy(model)
    trainer = COTTrainer(model=model, args=_args(out_dir, cot_mode=mode, complement_weight=0.7, guided_alpha=0.25))
    trainer.current_gradient_accumulation_steps = 1  # set by train() in the parent; "off" reads it
    reported = trainer.training_step(model, dict(batch))

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits, labels = reference(**inputs).logits.double(), batch["labels"]
    if kind != "token":
        logits, labels = logits[:, :-1], labels[:, 1:]
    ce, objective = _reference_objective(mode, logits, labels, scale=math.log(logits.shape[-1] - 1))
    objective.backward()
    assert reported.item() == pytest.approx(ce.item(), abs=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if q.grad is None:  # parameters the loss does not reach (e.g. a pooler)
            assert p.grad is None or p.grad.abs().max() == 0, name
            continue
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name


@pytest.mark.slow  # 9 pairs of runs; GA exactness is also in test_trainer.py (classifier, causal LM)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["llama", "gpt2", "token"])
def test_gradient_accumulation_is_exact_with_uneven_token_counts(kind, mode, out_dir):
    data = _data(kind)

    def run(bs, ga):
        trainer = COTTrainer(
            model=_model(kind),
            # SGD: the update is the gradient itself, so a wrong window normalization shows at full size (Adam's
            # per-element scaling would also amplify float32 summation-order noise on near-zero gradients).
            args=_args(
                out_dir,
                cot_mode=mode,
                per_device_train_batch_size=bs,
                gradient_accumulation_steps=ga,
                optim="sgd",
                learning_rate=0.5,
            ),  # fmt: skip
            train_dataset=data,
        )
        trainer.train()
        return trainer.model

    assert max_param_diff(run(8, 1), run(4, 2)) <= 1e-5


def test_resume_is_exact_for_a_causal_lm(tmp_path):
    kw = dict(cot_mode="alternating", max_steps=4, save_strategy="steps", save_steps=2, warmup_steps=1)
    data = _data("llama")
    full = COTTrainer(model=_model("llama"), args=_args(str(tmp_path), **kw), train_dataset=data)
    full.train()
    resumed = COTTrainer(model=_model("llama"), args=_args(str(tmp_path), **kw), train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert max_param_diff(full.model, resumed.model) == 0.0
    assert resumed.complement_steps == 4


@pytest.mark.parametrize("mode", MODES)
def test_lora_through_peft_on_a_causal_lm(mode, out_dir):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        _model("llama"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = COTTrainer(model=model, args=_args(out_dir, cot_mode=mode), train_dataset=_data("llama"))
    trainer.train()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"{name} is frozen but moved"
    if mode == "alternating":
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert {id(p) for g in trainer.complement_optimizer.param_groups for p in g["params"]} == trainable
        assert trainer.complement_steps == 3
