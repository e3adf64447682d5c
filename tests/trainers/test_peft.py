"""COT (alternating) on a PEFT LoRA model: the complement optimizer holds exactly the trainable parameters, the
frozen base never moves, and the saved adapter reloads to the same model."""

from __future__ import annotations

import os

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, TaskType, get_peft_model  # noqa: E402

from hf_cot import COTTrainer, COTTrainingArguments  # noqa: E402
from testing_utils import classification_data, tiny_bert  # noqa: E402


def _lora_model():
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"]
    )
    return get_peft_model(tiny_bert(num_labels=5, seed=0), config)


def test_lora_alternating(out_dir):
    model = _lora_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    # What we expect to train: the LoRA factors and the (copied) classifier head, nothing else.
    assert trainable and all(("lora_" in n) or (".classifier." in n and "modules_to_save" in n) for n in trainable)
    assert any("lora_" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert len(frozen) > len(trainable)

    args = COTTrainingArguments(
        output_dir=out_dir,
        use_cpu=True,
        cot_mode="alternating",
        per_device_train_batch_size=8,
        max_steps=4,
        learning_rate=5e-2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=4,
        report_to="none",
        disable_tqdm=True,
    )
    data = classification_data(n=32)
    trainer = COTTrainer(model=model, args=args, train_dataset=data)
    trainer.train()

    # The complement optimizer holds exactly the trainable parameters (by identity), like the primary one.
    complement = [p for g in trainer.complement_optimizer.param_groups for p in g["params"]]
    primary = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len(complement) == len({id(p) for p in complement})
    assert {id(p) for p in complement} == {id(p) for p in trainable.values()} == {id(p) for p in primary}
    # ... and it really stepped them: Adam moments exist for every trainable parameter.
    assert trainer.complement_steps == 4
    state = trainer.complement_optimizer.state
    assert all(p in state and state[p]["exp_avg"].abs().sum() > 0 for p in trainable.values())

    # The frozen base did not move (not by the CE step, not by the complement step); the adapter did.
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.detach(), frozen[n]), f"frozen {n} changed"
    lora_b = [n for n in trainable if "lora_B" in n]
    assert lora_b and all(trainable[n].detach().abs().sum() > 0 for n in lora_b)  # LoRA B starts at zero
    assert all(not torch.equal(trainable[n].detach(), before[n]) for n in trainable)

    # The checkpoint holds the adapter (not the full model) plus the complement state.
    ckpt = os.path.join(out_dir, "checkpoint-4")
    for name in ("adapter_model.safetensors", "adapter_config.json", "complement_optimizer.pt"):
        assert os.path.isfile(os.path.join(ckpt, name)), name
    assert not os.path.isfile(os.path.join(ckpt, "model.safetensors"))

    # save_model writes the adapter; it reloads onto a fresh copy of the base with identical outputs.
    final = os.path.join(out_dir, "final")
    trainer.save_model(final)
    reloaded = PeftModel.from_pretrained(tiny_bert(num_labels=5, seed=0), final).eval()
    model.eval()
    batch = {k: torch.stack([torch.as_tensor(r[k]) for r in data[:8]]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        want, got = model(**batch).logits, reloaded(**batch).logits
        untrained = tiny_bert(num_labels=5, seed=0).eval()(**batch).logits
    assert torch.equal(got, want)
    assert (got - untrained).abs().max() > 1e-3  # the reloaded model carries the trained adapter and head
