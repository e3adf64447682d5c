"""What each causal LM's forward computes between its backbone and its loss, for the fused LM head to reproduce.

One table (`TRANSFORMS`), keyed by transformers' class names and looked up along the MRO as `hf_cot.heads` does:
per class, the steps its forward applies to the backbone's last hidden state ``h`` and to the logits ``z``, each
naming the attribute it reads on the instance (``"config.x"``: the text config, as multimodal forwards read
``self.config.text_config.x``). A step whose value is None does nothing, as in the forwards (``if
self.config.final_logit_softcapping is not None``). A class not listed computes nothing there, so a config value its
forward never reads is never applied (a Llama config given ``final_logit_softcapping``); what no entry knows (remote
code, next month's architecture) is caught on the first batch by `hf_cot.alignment_check`. Filled from the forwards
of transformers' causal-LM and image-text-to-text classes (4.57, 5.25); tests/trainers/test_causal_lm_walk.py checks.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from .heads import base_model


class HeadTransformError(ValueError):
    """The model's forward does something between its backbone and its loss that the fused head cannot reproduce."""


@dataclass(frozen=True)
class HeadTransform:
    """What the fused head computes from the backbone's last hidden state ``h``::

    z = (hidden_scale * h) @ W[:N].T + b[:N]             N = vocab_limit (every row when None)
    logits = softcap * tanh(logit_scale * z / softcap)   (logit_scale * z when softcap is None)
    """

    hidden_scale: float = 1.0
    logit_scale: float = 1.0
    softcap: float | None = None
    vocab_limit: int | None = None


@dataclass(frozen=True)
class Step:
    """One operation of a forward, reading the value at ``path`` on the model. ``since`` / ``before``: the
    transformers versions (major.minor) from which / until which the forward does it."""

    path: str
    since: str | None = None
    before: str | None = None


class HiddenDivide(Step):
    """``h / value`` before the head."""


class LogitScale(Step):
    """``z * value``."""


class LogitDivide(Step):
    """``z / value``."""


class Softcap(Step):
    """``value * tanh(z / value)``, after the scales."""


class VocabLimit(Step):
    """``z[..., :value]`` where value is below the head's rows: the head's first rows."""


@dataclass(frozen=True)
class Refused:
    """A forward the fused head does not reproduce: the logits path. ``when``: only while the value at that path is
    truthy (a coefficient above 0, a flag on)."""

    reason: str
    when: str | None = None
    since: str | None = None
    before: str | None = None


def _each(names: str, *steps: Step | Refused) -> dict[str, tuple[Step | Refused, ...]]:
    return dict.fromkeys(names.split(), steps)


TRANSFORMS: dict[str, tuple[Step | Refused, ...]] = {
    # Gemma-style final soft cap, `if self.config.final_logit_softcapping is not None` (the multimodal ones read
    # `self.config.get_text_config()`); PaliGemma's forward caps since 5.x (4.57's does not).
    **_each(
        "BeamForCausalLM Gemma2ForCausalLM Gemma3ForCausalLM Gemma3nForCausalLM Gemma3nForConditionalGeneration "
        "Gemma4ForCausalLM Gemma4ForConditionalGeneration Gemma4UnifiedForCausalLM "
        "Gemma4UnifiedForConditionalGeneration NanoChatForCausalLM VaultGemmaForCausalLM",
        Softcap("config.final_logit_softcapping"),
    ),
    **_each("PaliGemmaForConditionalGeneration", Softcap("config.final_logit_softcapping", since="5.0")),
    **_each("RecurrentGemmaForCausalLM", Softcap("config.logits_soft_cap")),
    # The cap read from what __init__ built from the text config: an attribute, an Inkling2Softcap module.
    **_each("MistralLarge4ForConditionalGeneration", Softcap("final_logit_softcapping")),
    **_each(
        "Inkling2ForCausalLM Inkling2LoopForCausalLM Inkling2ForConditionalGeneration "
        "Inkling2LoopForConditionalGeneration",
        Softcap("logit_softcap.softcap"),
    ),
    # A scale, then the cap: `T * tanh(z * output_multiplier / T)`.
    **_each(
        "MuseGlimmerForConditionalGeneration MuseSparkForConditionalGeneration",
        LogitScale("config.output_multiplier"),
        Softcap("config.final_logit_softcapping"),
    ),
    # Cohere: `logits * self.logit_scale` (config.logit_scale, copied in __init__); Aya Vision reads its text
    # config's since 5.x (4.57's scales nothing); Falcon-H1 its backbone's multiplier.
    **_each(
        "CohereForCausalLM Cohere2ForCausalLM Cohere2MoeForCausalLM CohereCompassForCausalLM "
        "CohereCompassForConditionalGeneration",
        LogitScale("logit_scale"),
    ),
    **_each("AyaVisionForConditionalGeneration", LogitScale("config.logit_scale", since="5.0")),
    **_each("FalconH1ForCausalLM", LogitScale("model.lm_head_multiplier")),
    # `logits_scaling` means three things: Granite divides the logits, HyperCLOVA X multiplies them, MiniCPM3
    # divides the hidden state (its config computes it: hidden_size / dim_model_base).
    **_each(
        "GraniteForCausalLM GraniteSWAForCausalLM GraniteMoeForCausalLM GraniteMoeSWAForCausalLM "
        "GraniteMoeHybridForCausalLM GraniteMoeSharedForCausalLM Granite4VisionForConditionalGeneration",
        LogitDivide("config.logits_scaling"),
    ),
    **_each("HyperCLOVAXForCausalLM HyperCLOVAXVisionV2ForConditionalGeneration", LogitScale("config.logits_scaling")),
    **_each("MiniCPM3ForCausalLM", HiddenDivide("config.logits_scaling")),
    # muP: the hidden state divided by the width multiplier; the logits of the padded vocabulary rows dropped.
    **_each(
        "InklingForCausalLM InklingForConditionalGeneration",
        HiddenDivide("config.logits_mup_width_multiplier"),
        VocabLimit("config.unpadded_vocab_size"),
    ),
    # Forwards the fused head does not reproduce (Bamba and Doge only while the value named is set).
    **_each("BambaForCausalLM", Refused("adds a z-loss of its logits to its loss", when="z_loss_coefficient")),
    **_each("ChameleonForConditionalGeneration", Refused("sets the image tokens' logits to the dtype's minimum")),
    **_each("DiffusionGemmaForBlockDiffusion", Refused("computes no loss of its own (a block-diffusion model)")),
    **_each(
        "DogeForCausalLM",
        Refused(
            "adds a router loss of its own (not Mixtral's load_balancing_loss_func)", "config.output_router_logits"
        ),
    ),
    **_each("GitForCausalLM", Refused("scores the logits after its image-patch positions only")),
    **_each(
        "GraniteDoclingForConditionalGeneration", Refused("adds a density-router loss (router_labels) to its loss")
    ),
    **_each("MoshiForCausalLM", Refused("shifts its labels twice (itself, then its loss function)", before="5.0")),
    **_each("xLSTMForCausalLM", Refused("soft-caps its logits chunk by chunk, in place, in evaluation")),
}

# The router load-balancing loss weight, where the forward does not read `router_aux_loss_coef`: the attributes it
# reads, the first one that applies and that the model has wins; none: the forward adds no router loss although its
# config has `output_router_logits` (0). JetMoE reads `aux_loss_coef` (config.aux_loss_coef) on 5.x; 4.57's forward
# adds its router loss only when `output_router_logits` is passed in the call, and then fails (no `num_experts`).
# DBRX's `moe_loss_weight` (config.ffn_config.moe_loss_weight) exists on 4.x only; 5.x reads `router_aux_loss_coef`.
ROUTER_LOSS_WEIGHTS: dict[str, tuple[Step, ...]] = {
    "JetMoeForCausalLM": (Step("aux_loss_coef", since="5.0"),),
    "DbrxForCausalLM": (Step("moe_loss_weight"), Step("config.router_aux_loss_coef")),
    "Llama4ForCausalLM": (),
    "Llama4ForConditionalGeneration": (),
}
_DEFAULT_ROUTER_WEIGHT = (Step("config.router_aux_loss_coef"),)

_MISSING = object()


def _lookup(table: dict, model_class):
    return next((table[cls.__name__] for cls in model_class.__mro__ if cls.__name__ in table), None)


def _text_config(model):
    config = getattr(model, "config", None)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _read(model, path: str, default=None):
    """The value at ``path`` on the model (``config.`` paths on its text config); ``default`` where it is missing."""
    first, *rest = path.split(".")
    obj = _text_config(model) if first == "config" else getattr(model, first, _MISSING)
    for name in rest:
        if obj is _MISSING:
            break
        obj = getattr(obj, name, _MISSING)
    return default if obj is _MISSING else obj


def applies(step) -> bool:
    """Whether this transformers' forward does ``step`` (its ``since`` / ``before`` versions)."""
    if step.since is None and step.before is None:
        return True
    import transformers
    from packaging.version import Version

    version = Version(transformers.__version__).release[:2]
    since = Version(step.since).release[:2] if step.since else ()
    before = Version(step.before).release[:2] if step.before else None
    return since <= version and (before is None or version < before)


def _number(model, step: Step):
    value = _read(model, step.path)
    if value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return value
    raise HeadTransformError(f"reads {step.path} = {value!r}, which is not a number")


def head_transform(model) -> HeadTransform:
    """The `HeadTransform` of ``model``'s class (`TRANSFORMS`), with the values read on the instance; raises
    `HeadTransformError` with the reason where its forward is `Refused`."""
    base = base_model(model)
    hidden_scale, logit_scale, softcap, vocab_limit = 1.0, 1.0, None, None
    for step in _lookup(TRANSFORMS, type(base)) or ():
        if not applies(step):
            continue
        if isinstance(step, Refused):
            value = True if step.when is None else _read(base, step.when)
            if value:
                raise HeadTransformError(step.reason + ("" if step.when is None else f" ({step.when} = {value!r})"))
            continue
        value = _number(base, step)
        if value is None:
            continue
        if isinstance(step, HiddenDivide):
            hidden_scale /= value
        elif isinstance(step, (LogitScale, LogitDivide)):
            if softcap is not None:
                raise TypeError(f"{type(base).__name__}: a table entry scales after the soft cap")
            logit_scale = logit_scale * value if isinstance(step, LogitScale) else logit_scale / value
        elif isinstance(step, Softcap):
            softcap = float(value)
        elif isinstance(step, VocabLimit):
            rows = getattr(base.get_output_embeddings(), "out_features", None)
            vocab_limit = int(value) if rows is None or value < rows else vocab_limit
    return HeadTransform(float(hidden_scale), float(logit_scale), softcap, vocab_limit)


def router_loss_weight(model) -> float:
    """The weight a mixture-of-experts model's forward gives its router load-balancing loss (0 where it adds none):
    ``config.router_aux_loss_coef``, or what `ROUTER_LOSS_WEIGHTS` names for its class, when its (text) config has
    ``output_router_logits`` on."""
    base = base_model(model)
    if not getattr(_text_config(base), "output_router_logits", False):
        return 0.0
    steps = _lookup(ROUTER_LOSS_WEIGHTS, type(base))
    for step in _DEFAULT_ROUTER_WEIGHT if steps is None else steps:
        value = _read(base, step.path, _MISSING) if applies(step) else _MISSING
        if value is not _MISSING:
            return float(value or 0.0)
    return 0.0
