"""The fused LM head: causal LMs compute the COT terms from their final hidden states, never building the logits.

Modelled on TRL's `add_fused_lm_head` (trl/trainer/utils.py, read on TRL 1.16.0 / transformers 5.24.0): the model's
forward is wrapped on the instance, so that ``model(**inputs, labels=labels, cot_fused_lm_head=True)`` - called
through every wrapper (DDP, PEFT, TRL's own patched forward) - runs the backbone (``model.base_model``), shifts by
one, and projects through ``get_output_embeddings()`` chunk by chunk (`hf_cot.linear_losses`). Without the keyword
the original forward runs, so generation and evaluation with logits are unchanged.

Which models qualify (`fused_lm_head_problem` says why one does not): a causal LM whose head is a plain
``nn.Linear`` that is a direct child of the model, applied to the backbone's ``last_hidden_state`` with at most the
logit transforms TRL knows (a scale under one of four config names, final soft-capping). Heads with more layers
(``BertLMHeadModel``'s transform), quantized or PEFT-wrapped heads, mixture-of-experts models that add a router loss,
label smoothing, FSDP and DeepSpeed keep the materialized path.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .linear_losses import linear_complement_terms
from .modeling import base_model, shifts_labels

_INSTALLED = "_hf_cot_fused_lm_head"


@dataclass
class FusedCOTOutput(ModelOutput):
    """Per shifted position (``[batch, seq - 1]``, 0 where the label is -100): the COT terms of the fused head."""

    complement_entropy: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    vocab_size: int | None = None


def _text_config(model):
    config = base_model(model).config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def logit_transform(model) -> tuple[float, float | None]:
    """``(logit_scale, final_logit_softcapping)`` the model applies after its head (TRL 1.16's list of config names)."""
    config = _text_config(model)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)  # Cohere; None on models that do not scale (MPT)
    if scale is None:
        scale = getattr(config, "output_multiplier", None)
    if scale is None:
        scale = getattr(config, "lm_head_multiplier", None)  # Falcon-H1
    if (
        scale is None and getattr(config, "logits_scaling", None) is not None
    ):  # Granite divides, HyperCLOVA X multiplies
        scale = config.logits_scaling if config.model_type == "hyperclovax" else 1 / config.logits_scaling
    return (1.0 if scale is None else float(scale)), (None if softcap is None else float(softcap))


def fused_lm_head_problem(model, *, label_smoothing: float = 0.0, distributed: str | None = None) -> str | None:
    """Why the fused head cannot replace this model's logits (None when it can)."""
    if not shifts_labels(model):
        return f"{type(base_model(model)).__name__} is not a causal LM (the fused head covers causal LM heads only)"
    base = base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        return (
            f"{type(base).__name__}'s output embeddings are {type(head).__name__}, not a plain torch.nn.Linear "
            "(quantized, PEFT-wrapped or missing heads cannot be projected chunk by chunk)"
        )
    backbone = getattr(base, "base_model", base)
    extra = [
        name
        for name, child in base.named_children()
        if child is not head and child is not backbone and any(True for _ in child.parameters())
    ]
    if backbone is base or not any(child is head for child in base.children()) or extra:
        return (
            f"{type(base).__name__} does not apply its head directly to the backbone's last hidden state "
            f"(modules with weights besides backbone and head: {extra or 'the head is nested'})"
        )
    if getattr(_text_config(model), "output_router_logits", False):
        return "the model adds a router load-balancing loss (output_router_logits=True)"
    if label_smoothing > 0:
        return "label_smoothing_factor > 0 needs every logit of the cross-entropy"
    if distributed:
        return f"{distributed} shards the head's weight"
    return None


def install_fused_lm_head(model) -> None:
    """Wrap the model's forward (on the instance, once) to accept ``cot_fused_lm_head=True``."""
    base = base_model(model)
    if getattr(base, _INSTALLED, False):
        return
    original_forward = base.forward
    logit_scale, softcap = logit_transform(model)

    # The original signature is kept: `generate` validates its keyword arguments against it.
    @functools.wraps(type(base).forward)
    def forward(self, *args, cot_fused_lm_head: bool = False, labels=None, **kwargs):
        if not cot_fused_lm_head:
            if labels is not None:
                kwargs["labels"] = labels
            return original_forward(*args, **kwargs)
        kwargs["use_cache"] = False
        # Looked up on every call: PEFT injects its layers into the backbone after installation.
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        head = self.get_output_embeddings()
        weight = getattr(head, "weight", None)
        # Checked again per call: the head may have been wrapped (PEFT, sharding) after the trainer was built.
        if type(head) is not torch.nn.Linear or type(weight) not in (torch.nn.Parameter, torch.Tensor):
            raise TypeError(
                f"the fused LM head needs a plain nn.Linear with a plain weight tensor, got {type(head).__name__} "
                f"with {type(weight).__name__} (wrapped or sharded after the trainer was built?): set "
                "--cot_fused_lm_head false"
            )
        labels = labels[:, 1:].to(weight.device)
        terms = linear_complement_terms(
            hidden.to(weight.device),
            weight,
            labels,
            bias=head.bias,
            logit_scale=logit_scale,
            final_logit_softcapping=softcap,
        )
        return FusedCOTOutput(**terms, vocab_size=weight.shape[0])

    base.forward = types.MethodType(forward, base)
    setattr(base, _INSTALLED, True)
