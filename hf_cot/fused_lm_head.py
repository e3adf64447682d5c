"""The fused LM head: causal LMs compute the COT terms from their final hidden states, never building the logits.

Modelled on TRL's `add_fused_lm_head` (trl/trainer/utils.py, read on TRL 1.16.0 / transformers 5.24.0): the model's
forward is wrapped on the instance, so that ``model(**inputs, labels=labels, cot_fused_lm_head=True)`` - called
through every wrapper (DDP, PEFT, TRL's own patched forward) - runs the backbone (``model.base_model``), shifts by
one, and projects through ``get_output_embeddings()`` chunk by chunk (`hf_cot.linear_losses`). Without the keyword
the original forward runs, so generation and evaluation with logits are unchanged.

Which models qualify (`fused_lm_head_problem` says why one does not): a causal LM whose head is a plain
``nn.Linear`` that is a direct child of the model, applied to the backbone's ``last_hidden_state``, whose forward
computes nothing between the backbone and its loss that the fused head does not reproduce: a scale of the hidden
state, a scale and a soft cap of the logits, the first N rows of the head (`hf_cot.head_transforms`: one table keyed
by class, values read on the instance). Heads with more layers (``BertLMHeadModel``'s transform), quantized or
PEFT-wrapped heads, forwards the table refuses (Chameleon masks logits, Bamba's z-loss when on), label smoothing and
FSDP1 keep the materialized path; a transform no table knows is caught on the first batch (`hf_cot.alignment_check`).
Mixture-of-experts models that add a router load-balancing loss get it computed from the backbone's router logits,
as their own forward (and TRL's fused forward) computes it (``FusedCOTOutput.aux_loss``).

Sharded heads (`_project`): the projection runs where each engine's own machinery gathers the head's weight for the
forward *and* the backward and reduces its gradient, instead of reading whatever the weight happens to be:

* FSDP2, head in an FSDP unit of its own or grouped with the final norm (accelerate's default): the projection is
  registered as one of the head's FSDP forward methods (`register_fsdp_forward_method`), so FSDP all-gathers the
  weight before it, re-gathers before its backward if it resharded, and reduce-scatters the gradient after. Reading
  the sharded weight and calling ``DTensor.full_tensor()`` instead (TRL 1.16) treats the gradient as replicated and
  never reduces it across ranks when the head is its own unit.
* DeepSpeed ZeRO-3: the projection runs as the head module's forward for one call, so ZeRO-3's module hooks fetch
  the partitioned weight for it, fetch it again for its backward, and release it after each.
* DDP, ZeRO-1/2 and a single process: the weight is whole; the projection reads it directly.
"""

from __future__ import annotations

import functools
import inspect
import types
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput, logging

from .head_transforms import HeadTransform, HeadTransformError, head_transform, router_loss_weight
from .linear_losses import linear_complement_terms
from .modeling import base_model, shifts_labels, text_config

logger = logging.get_logger(__name__)


@dataclass
class FusedCOTOutput(ModelOutput):
    """Per scored position (``[batch, seq - 1]``, or ``[batch, seq]`` with pre-shifted ``shift_labels``; 0 where the
    label is -100): the COT terms of the fused head."""

    complement_entropy: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    vocab_size: int | None = None
    aux_loss: torch.Tensor | None = None  # mixture-of-experts: the router load-balancing loss, unweighted


def is_plain_linear(head) -> bool:
    """An ``nn.Linear`` computing ``x @ W.T + b``: the class itself, or one whose engine made it a subclass without a
    forward of its own (FSDP2 turns ``nn.Linear`` into ``FSDPLinear``). Quantized subclasses compute something else;
    parametrized heads compute their weight."""
    return (
        isinstance(head, nn.Linear)
        and type(head).forward is nn.Linear.forward
        and not nn.utils.parametrize.is_parametrized(head)
    )


def fused_lm_head_problem(model, *, label_smoothing: float = 0.0, distributed: str | None = None) -> str | None:
    """Why the fused head cannot replace this model's logits (None when it can)."""
    if not shifts_labels(model):
        return f"{type(base_model(model)).__name__} is not a causal LM (the fused head covers causal LM heads only)"
    base = base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not is_plain_linear(head):
        return (
            f"{type(base).__name__}'s output embeddings are {type(head).__module__}.{type(head).__qualname__}, not a "
            "plain torch.nn.Linear "
            "(quantized, PEFT-wrapped or missing heads cannot be projected chunk by chunk)"
        )
    backbone = backbone_of(base)
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
    try:
        head_transform(base)
    except HeadTransformError as err:
        return f"{type(base).__name__}'s forward {err}"
    if label_smoothing > 0:
        return "label_smoothing_factor > 0 needs every logit of the cross-entropy"
    if distributed:  # the engine's reason, e.g. FSDP1's flat parameters
        return distributed
    return None


def backbone_of(model):
    """The module whose ``last_hidden_state`` the head reads: ``model.base_model`` (transformers' base model prefix);
    for the multimodal LMs of transformers 4.x, whose prefix is empty, their ``model`` (text and vision towers)."""
    backbone = getattr(model, "base_model", model)
    if backbone is model and isinstance(getattr(model, "model", None), nn.Module):
        return model.model
    return backbone


def use_fused_lm_head(model, requested: bool | None, label_smoothing: float, fsdp_version: int | None) -> bool:
    """``cot_fused_lm_head`` resolved for ``model``: installs the fused forward and returns True where it applies;
    False where it was turned off or does not apply (``requested=True`` then raises, saying why)."""
    if requested is False:
        return False
    distributed = (
        "FSDP1 keeps the head's weight inside a flat sharded parameter (use FSDP2: `fsdp_version: 2` in the "
        "accelerate config, or fsdp_config={'version': 2} on transformers 5)"
        if fsdp_version == 1
        else None
    )
    problem = fused_lm_head_problem(model, label_smoothing=label_smoothing, distributed=distributed)
    if problem is None:
        install_fused_lm_head(model)
        return True
    if requested:
        raise ValueError(
            f"cot_fused_lm_head=True cannot be used: {problem}. Set --cot_fused_lm_head false, or leave it unset "
            "to build the logits wherever the fused head does not apply."
        )
    if shifts_labels(model):
        logger.info(f"cot_fused_lm_head: building the logits ({problem})")
    return False


def install_fused_lm_head(model) -> None:
    """Wrap the model's forward (on the instance, once) to accept ``cot_fused_lm_head=True``.

    The wrapper is a `functools.partial` of a module-level function over the model, the forward it replaces and the
    `HeadTransform` (a frozen dataclass of numbers) - no closure over the instance - so that ``copy.deepcopy`` and
    pickling give a copy whose forward (ordinary and fused) computes with the *copy's* parameters (deepcopy maps the
    partial's arguments to the copy). Raises `HeadTransformError` where the table refuses the model's forward
    (`fused_lm_head_problem` says so first).
    """
    base = base_model(model)
    if is_installed(base):
        return
    transform = head_transform(base)
    forward = functools.partial(_forward, base, base.forward, transform)
    # The original signature is kept: `generate` validates its keyword arguments against it.
    functools.update_wrapper(forward, base.forward)
    base.forward = forward


def uninstall_fused_lm_head(model) -> bool:
    """Put back the forward `install_fused_lm_head` replaced (the logits path again); False where none was
    installed. A forward that was itself set on the instance (accelerate's output conversion) is restored as it was."""
    base = base_model(model)
    if not is_installed(base):
        return False
    original = base.__dict__["forward"].args[1]
    bound_class_forward = getattr(original, "__self__", None) is base and getattr(
        original, "__func__", None
    ) is getattr(type(base), "forward", None)
    if bound_class_forward:
        del base.forward  # the class's forward shows through again
    else:
        base.forward = original
    return True


def is_installed(model) -> bool:
    forward = base_model(model).__dict__.get("forward")
    return isinstance(forward, functools.partial) and forward.func is _forward


def _forward(self, original_forward, transform, *args, cot_fused_lm_head=False, labels=None, shift_labels=None, **kw):
    if not cot_fused_lm_head:
        for key, value in (("labels", labels), ("shift_labels", shift_labels)):
            if value is not None:
                kw[key] = value
        return original_forward(*args, **kw)
    backbone_module = backbone_of(self)  # looked up on every call: PEFT injects its layers after installation
    if _accepts(type(backbone_module), "use_cache"):  # no cache to build (OpenAI GPT's backbone takes no use_cache)
        kw["use_cache"] = False
    config = text_config(self)
    router_weight = router_loss_weight(self)  # 0 where the forward adds no router loss
    if router_weight:  # the router logits, as the model's own forward asks for them
        kw.setdefault("output_router_logits", True)
    backbone = backbone_module(*args, **kw)
    # pre-shifted labels (context parallelism) are scored as they are; plain labels are shifted by one
    hidden = backbone.last_hidden_state if shift_labels is not None else backbone.last_hidden_state[:, :-1]
    labels = shift_labels if shift_labels is not None else labels[:, 1:]
    head = self.get_output_embeddings()
    # Checked again per call: the head may have been wrapped (PEFT, quantization) after the trainer was built.
    if not is_plain_linear(head):
        raise TypeError(
            f"the fused LM head needs a plain nn.Linear head, got {type(head).__name__} (wrapped after the trainer "
            "was built?): set --cot_fused_lm_head false"
        )
    if transform.hidden_scale != 1.0:  # before the head, in the hidden state's dtype, as the forward scales it
        hidden = hidden * transform.hidden_scale
    terms = _project(head, hidden, labels, transform)
    aux_loss = None
    if router_weight and getattr(backbone, "router_logits", None) is not None:
        aux_loss = _router_loss(self, config, backbone, kw)
    vocab = head.out_features if transform.vocab_limit is None else min(transform.vocab_limit, head.out_features)
    return FusedCOTOutput(**terms, vocab_size=vocab, aux_loss=aux_loss)


@functools.lru_cache(maxsize=64)
def _accepts(module_class, name: str) -> bool:
    parameters = inspect.signature(module_class.forward).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _router_loss(model, config, backbone_outputs, kwargs) -> torch.Tensor:
    """The load-balancing loss the model's own forward computes from its router logits: its module's
    ``load_balancing_loss_func`` (Mixtral's, which the other mixture-of-experts families of transformers copy with
    its four arguments; Doge's own is refused by the table), expert counts read as TRL 1.16 reads them."""
    function = inspect.unwrap(type(model).forward).__globals__.get("load_balancing_loss_func")
    if function is None:
        from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as function

    # transformers 4.x keeps the expert counts on the model (Mixtral's config says num_local_experts), 5.x on the config
    num_experts = getattr(model, "num_experts", None) or getattr(config, "num_experts", None)
    num_experts = num_experts or config.num_local_experts
    top_k = getattr(model, "num_experts_per_tok", None) or config.num_experts_per_tok
    return function(backbone_outputs.router_logits, num_experts, top_k, kwargs.get("attention_mask"))


_FSDP_METHOD = "_hf_cot_complement_terms"


def _head_terms(head, hidden, labels, transform: HeadTransform) -> dict:
    weight, bias = head.weight, head.bias
    if type(weight) not in (nn.Parameter, torch.Tensor) or weight.numel() != head.in_features * head.out_features:
        raise TypeError(
            f"the fused LM head found its weight sharded ({type(weight).__name__} of {weight.numel()} elements for a "
            f"{head.out_features} x {head.in_features} head) although the engine should have gathered it: the head "
            "shares its weight with a module of another FSDP unit? Set --cot_fused_lm_head false"
        )
    if transform.vocab_limit is not None:  # the forward keeps the first N logits: the head's first N rows
        weight = weight[: transform.vocab_limit]
        bias = None if bias is None else bias[: transform.vocab_limit]
    return linear_complement_terms(
        hidden.to(weight.device),
        weight,
        labels.to(weight.device),
        bias=bias,
        logit_scale=transform.logit_scale,
        final_logit_softcapping=transform.softcap,
    )


def _project(head, hidden, labels, transform: HeadTransform) -> dict:
    """`linear_complement_terms` through ``head``, with its weight gathered by the engine that shards it (module
    docstring). Nothing is left on the head afterwards: the temporary attributes are removed."""
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    def terms(module, hidden, labels):
        return _head_terms(module, hidden, labels, transform)

    if isinstance(head, FSDPModule):
        setattr(head, _FSDP_METHOD, types.MethodType(terms, head))
        try:
            register_fsdp_forward_method(head, _FSDP_METHOD)
            return getattr(head, _FSDP_METHOD)(hidden, labels)
        finally:
            delattr(head, _FSDP_METHOD)
    if hasattr(head.weight, "ds_id"):  # a ZeRO-3 parameter
        head.forward = types.MethodType(terms, head)
        try:
            return head(hidden, labels)
        finally:
            del head.forward
    return terms(head, hidden, labels)
