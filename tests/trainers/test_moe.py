"""Mixture-of-experts models keep their router load-balancing loss in every COT mode.

The model's own forward adds ``router_aux_loss_coef x aux_loss`` to its loss when ``output_router_logits`` is on; a COT
mode that builds its loss from the logits (or from the fused head's per-token terms) must add it too, or the router
is never balanced. The independent expectation: with ``complement_weight=0`` the joint objective *is* the model's own
loss, so two SGD steps must equal ``cot_mode="off"`` (the plain Trainer, which uses the model's loss), router weights
included; and a run without the router loss must differ from both (so the check is not vacuous).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hf_cot import COTTrainer, COTTrainingArguments
from testing_utils import causal_lm_data, tiny_moe

ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]  # the MoE families transformers 4.57 and 5.x both have
pytestmark = pytest.mark.slow  # 4 MoE families x every mode: ~1 min


def _train(model, out_dir, **kw):
    args = dict(output_dir=str(out_dir), report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=3,
                per_device_train_batch_size=4, max_steps=2, optim="sgd", learning_rate=0.5, logging_steps=1,
                complement_weight=0.0, lr_scheduler_type="constant")  # fmt: skip
    args.update(kw)
    trainer = COTTrainer(model=model, args=COTTrainingArguments(**args), train_dataset=causal_lm_data(n=8, seed=1))
    trainer.train()
    return trainer


def _router_diff(a, b) -> float:
    pairs = [(p, q) for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True) if "gate" in n]
    assert pairs, "no router weights found"
    return max((p - q).abs().max().item() for p, q in pairs)


def _max_diff(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("arch", ARCHS)
def test_joint_without_complement_trains_like_off(arch, tmp_path):
    model = tiny_moe(arch)
    off = _train(copy.deepcopy(model), tmp_path / "off", cot_mode="off")
    joint = _train(copy.deepcopy(model), tmp_path / "joint", cot_mode="joint")
    assert joint._cot_fused  # the fused head computes the router loss too
    assert _max_diff(joint.model, off.model) <= 1e-6
    assert _losses(joint) == pytest.approx(_losses(off), abs=1e-5)  # the reported loss includes the router loss
    # control: without the router loss the router trains differently
    no_aux = _train(tiny_moe(arch, router_aux_loss_coef=0.0), tmp_path / "no_aux", cot_mode="off")
    assert _router_diff(no_aux.model, off.model) > 1e-4
    assert joint.evaluate(causal_lm_data(n=5, seed=2))["eval_loss"] == pytest.approx(
        off.evaluate(causal_lm_data(n=5, seed=2))["eval_loss"], abs=1e-5
    )


def test_the_logits_path_adds_it_too(tmp_path):
    model = tiny_moe("mixtral")
    off = _train(copy.deepcopy(model), tmp_path / "off", cot_mode="off")
    joint = _train(copy.deepcopy(model), tmp_path / "joint", cot_mode="joint", cot_fused_lm_head=False)
    assert not joint._cot_fused
    assert _max_diff(joint.model, off.model) <= 1e-6


def test_gradient_accumulation_averages_it_over_the_window(tmp_path):
    """As TRL's SFTTrainer: the per-micro-batch router loss is averaged over the accumulation window. One SGD step
    at GA 2 must equal a step on the hand-built objective CE(window) + coef x mean(router loss of each micro-batch),
    over the micro-batches the trainer really drew (recorded by its collator)."""
    from transformers.data.data_collator import default_data_collator

    seen = []

    def collator(features):
        batch = default_data_collator(features)
        seen.append(batch)
        return batch

    model = tiny_moe("mixtral")
    args = COTTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no",
                                disable_tqdm=True, seed=3, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                max_steps=1, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant",
                                cot_mode="joint", complement_weight=0.0, max_grad_norm=0.0)  # fmt: skip
    trainer = COTTrainer(model=copy.deepcopy(model), args=args, train_dataset=causal_lm_data(n=4, seed=1),
                         data_collator=collator)  # fmt: skip
    trainer.train()
    micro = seen[:2]
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    objective = 0.0
    for batch in micro:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
        objective = objective + ce / tokens + 0.5 * out.aux_loss / len(micro)
    objective.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    assert _max_diff(trainer.model, model) <= 1e-6


@pytest.mark.parametrize("mode", ["guided", "alternating"])
def test_every_mode_keeps_it(mode, tmp_path):
    """Fused and logits paths agree, and both differ from the same run without the router loss."""
    kw = dict(cot_mode=mode, complement_weight=0.7)
    fused = _train(tiny_moe("mixtral"), tmp_path / "f", **kw)
    logits = _train(tiny_moe("mixtral"), tmp_path / "l", cot_fused_lm_head=False, **kw)
    no_aux = _train(tiny_moe("mixtral", router_aux_loss_coef=0.0), tmp_path / "n", **kw)
    assert fused._cot_fused and not logits._cot_fused
    assert _max_diff(fused.model, logits.model) <= 1e-5
    assert _router_diff(no_aux.model, fused.model) > 1e-4


def test_alternating_with_a_zero_complement_rate_is_off(tmp_path):
    """The complement step adds no router loss (it is the CE step's, once per step): at complement lr 0 the
    alternating run is the plain run."""
    model = tiny_moe("mixtral")
    off = _train(copy.deepcopy(model), tmp_path / "off", cot_mode="off")
    alt = _train(copy.deepcopy(model), tmp_path / "alt", cot_mode="alternating", complement_learning_rate=0.0)
    assert alt.complement_steps == 2
    assert _max_diff(alt.model, off.model) <= 1e-6
