"""The fused LM head computes what each causal LM's own forward computes.

* The walk: every class of transformers' causal LM and image-text-to-text mappings that builds from a small config
  (text-only input), with every transform value the table of `hf_cot.head_transforms` reads set on its config to a
  value that shows: its own loss (less the router loss hf-cot adds itself), the fused head's cross-entropy and the
  cross-entropy of its logits agree (float32, rtol 1e-4) wherever the fused head accepts the model. ``pytest -s``
  prints per mapping the classes listed, built, compared and skipped (why).
* The forwards of every listed class, built or not: a forward whose source names a logit transform (a soft cap, a
  logit scale, a multiplier, a z-loss, a write into the logits) has a table entry, and an entry names what its
  forward reads.
* Directly: the transforms measured wrong before (RecurrentGemma's soft cap, Inkling's hidden-state scale and
  vocabulary slice), a config value the forward never reads (not applied), a conditional refusal (Bamba's z-loss),
  JetMoE's router loss weight, uninstalling and copies.

Runs on transformers 4.57 (CI's oldest) and 5.x: a class one version lacks is simply not in its mappings.
"""

from __future__ import annotations

import collections
import copy
import functools
import inspect
import pickle
import re
import time
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import PretrainedConfig

from hf_cot.fused_lm_head import fused_lm_head_problem, install_fused_lm_head, is_installed, uninstall_fused_lm_head
from hf_cot.head_transforms import ROUTER_LOSS_WEIGHTS, TRANSFORMS, HeadTransform, Refused, applies, head_transform
from hf_cot.heads import UnsupportedHeadError, head_for_class
from hf_cot.modeling import router_aux_loss_coef

MAPPINGS = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES")
MAX_PARAMETERS = 30_000_000  # at the smallest config (vision towers some size field does not reach): skipped
RTOL, ATOL = 1e-4, 1e-6
VOCAB, SEQ = 128, 8

# The usual size fields, shrunk wherever a config or sub-config has them; ints only (None keeps its meaning), except
# the few whose None makes the model compute a size that contradicts the small ones (`_FILL`).
SIZES = {
    "hidden_size": 32, "d_model": 32, "n_embd": 32, "embed_dim": 32,
    "num_hidden_layers": 2, "n_layer": 2, "n_layers": 2, "num_layers": 2, "decoder_layers": 2, "encoder_layers": 1,
    "num_attention_heads": 2, "n_head": 2, "n_heads": 2, "num_heads": 2, "decoder_attention_heads": 2,
    "encoder_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
    "intermediate_size": 64, "ffn_dim": 64, "n_inner": 64, "d_inner": 64, "decoder_ffn_dim": 64, "encoder_ffn_dim": 64,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "shared_intermediate_size": 32,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
    "first_k_dense_replace": 1, "num_dense_layers": 1, "num_kv_shared_layers": 0,
    "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 16,
    "linear_num_key_heads": 2, "linear_num_value_heads": 2, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
    "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_d_state": 16, "mamba_chunk_size": 8, "rotary_dim": 8,
    "vocab_size": VOCAB,
}  # fmt: skip
_FILL = {"head_dim", "num_key_value_heads", "n_routed_experts", "num_experts_per_tok"}
_LAYERS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
# Per family: what the size fields above leave inconsistent (a hybrid needs an attention layer among its 2 or 3).
OVERRIDES = {
    "mamba2": {"num_heads": 4},  # hidden_size * expand == num_heads * head_dim
    "falcon_h1": {"mamba_d_ssm": 32},  # mamba_n_heads * mamba_d_head
    "recurrent_gemma": {"num_hidden_layers": 3},  # recurrent, recurrent, attention
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1},
    "bamba": {"attn_layer_indices": [1]},
    "xlstm": {"embedding_dim": 32, "num_blocks": 2},
    "jetmoe": {"kv_channels": 16, "num_attention_heads": 4},  # 4.57: heads = kv heads x top-k, kv heads x 16 = hidden
}
# Every value the table of hf_cot.head_transforms reads (the config names behind its instance attributes too), set on
# *every* config and sub-config to a value that shows: a forward that reads one must be matched by the fused head, a
# forward that does not must not be (a Llama config with final_logit_softcapping). Soft caps are small so that they
# bend the logits. `test_every_value_the_table_reads_is_set_by_the_walk` keeps this list complete.
TRANSFORM_VALUES = {
    "final_logit_softcapping": 0.5, "logits_soft_cap": 0.5, "logit_scale": 3.0, "logits_scaling": 4.0,
    "lm_head_multiplier": 5.0, "output_multiplier": 6.0, "logits_mup_width_multiplier": 2.0,
    "unpadded_vocab_size": 100,
}  # fmt: skip
# Table paths that are instance attributes set from a config value of another name.
INSTANCE_VALUES = {"softcap": "final_logit_softcapping"}  # Inkling2's logit_softcap module
LABELS_BELOW = TRANSFORM_VALUES["unpadded_vocab_size"]  # the random tokens and labels stay in the sliced vocabulary


def _listed(mapping_name: str) -> list[tuple[str, str]]:
    """``(model_type, class name)`` of one Auto mapping (empty where this transformers has none)."""
    import transformers.models.auto.modeling_auto as auto

    pairs = []
    for model_type, names in getattr(auto, mapping_name, {}).items():
        for name in names if isinstance(names, (tuple, list)) else (names,):
            pairs.append((model_type, name))
    return pairs


def _field(config, key: str):
    try:
        return getattr(config, key, None)
    except Exception:  # Gemma 4's per-layer attributes refuse a global read
        return None


def _changes(config: PretrainedConfig, model_type: str, transforms: bool) -> dict:
    """The keyword arguments that make ``config``'s class small (sub-configs as dicts of their own changes)."""
    out = {}
    fields = config.to_dict()
    old = next((_field(config, k) for k in _LAYERS if isinstance(_field(config, k), int)), None)
    for key in fields:
        value = _field(config, key)
        if isinstance(value, PretrainedConfig):
            out[key] = {"model_type": value.model_type, **_changes(value, value.model_type, transforms)}
        elif key in SIZES and (
            isinstance(value, int) and not isinstance(value, bool) or value is None and key in _FILL
        ):
            if value != SIZES[key]:
                out[key] = SIZES[key] if key == "vocab_size" or value is None else min(value, SIZES[key])
    new = next((out[k] for k in _LAYERS if k in out), old)
    if isinstance(old, int) and new != old:  # per-layer lists and tables follow the layer count
        for key in fields:
            value = _field(config, key)
            if isinstance(value, list) and len(value) == old:
                kinds = list(dict.fromkeys(v for v in value if isinstance(v, str)))
                # every kind of layer kept where they fit (sliding and full attention, linear and full, ...)
                out[key] = [kinds[i % len(kinds)] for i in range(new)] if 0 < len(kinds) <= new else value[:new]
            elif isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
                out[key] = {k: v for k, v in value.items() if int(k) < new}
    for key in ("rope_parameters", "rope_scaling"):  # multimodal RoPE: sections summing to head_dim / 2
        value = _field(config, key)
        if isinstance(value, dict) and "mrope_section" in value:
            out[key] = {**value, "mrope_section": [2, 3, 3]}
    vocab = out.get("vocab_size", _field(config, "vocab_size"))
    if isinstance(vocab, int):  # special tokens at the top of the small vocabulary, above the random tokens
        top = vocab - 1
        for key in sorted(fields):
            value = _field(config, key)
            if key.endswith(("_token_id", "_token_index")) and isinstance(value, int) and value >= vocab:
                out[key], top = top, top - 1
    if _field(config, "output_router_logits") is False:  # the router loss is exercised
        out["output_router_logits"] = True
    if transforms:  # where a config computes one (MiniCPM3's logits_scaling is a property), it stays computed
        out.update(
            {k: v for k, v in TRANSFORM_VALUES.items() if not isinstance(getattr(type(config), k, None), property)}
        )
    out.update(OVERRIDES.get(model_type, {}))
    return out


def small_config(model_class, model_type: str, transforms: bool = True, **overrides) -> PretrainedConfig:
    """``model_class``'s config with the size fields shrunk (`SIZES`), `TRANSFORM_VALUES` set where ``transforms``
    and the config accepts them (transformers 4.57's DBRX refuses unknown keywords), then ``overrides``."""
    from transformers import CONFIG_MAPPING

    config_class = getattr(model_class, "config_class", None) or type(CONFIG_MAPPING[model_type]())
    default = config_class()
    try:
        return config_class(**{**_changes(default, model_type, transforms), **overrides})
    except Exception:
        if not transforms:
            raise
        return config_class(**{**_changes(default, model_type, False), **overrides})


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, LABELS_BELOW, (2, SEQ), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt
    labels[1, -2:] = -100  # padding
    return ids, torch.ones_like(ids), labels


def three_losses(model, ids, mask, labels) -> dict:
    """On one batch, in eval mode, without gradients: the model's own loss without the router loss it adds (weighed
    by `router_aux_loss_coef`, as hf-cot weighs the router loss it adds on its own; asked for in the call, as
    transformers 4.57's JetMoE adds it only then), the fused head's cross-entropy
    and the cross-entropy of its logits; the raw own loss; the router losses of both; the vocabulary sizes of the
    logits and of the fused head."""
    model.eval()
    coef = router_aux_loss_coef(model)
    router = {"output_router_logits": True} if coef else {}  # asked for in the call, as hf-cot's logits path does
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, **router)
        aux = getattr(out, "aux_loss", None)
        own = out.loss - coef * aux if coef and aux is not None else out.loss
        logits = out.logits.float()
        logits_ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        install_fused_lm_head(model)
        try:
            fused = model(input_ids=ids, attention_mask=mask, labels=labels, cot_fused_lm_head=True)
        finally:
            uninstall_fused_lm_head(model)
        fused_ce = -fused.log_probs.sum() / fused.valid.sum()
    return {
        "own": float(own),
        "raw": float(out.loss),
        "fused": float(fused_ce),
        "logits": float(logits_ce),
        "coef": coef,
        "aux": None if aux is None else float(aux),
        "fused_aux": None if fused.aux_loss is None else float(fused.aux_loss),
        "vocab": (logits.shape[-1], fused.vocab_size),
    }


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= ATOL + RTOL * abs(b)


def _disagreements(name: str, n: dict) -> list[str]:
    wrong = []
    if not (_close(n["fused"], n["own"]) and _close(n["logits"], n["own"])):
        wrong.append(f"{name}: own loss {n['own']:.6f}, fused CE {n['fused']:.6f}, logits CE {n['logits']:.6f}")
    if n["aux"] is not None and n["coef"] and not _close(n["fused_aux"] or 0.0, n["aux"]):
        wrong.append(f"{name}: router loss {n['aux']:.6f}, fused {n['fused_aux']}")
    if n["vocab"][0] != n["vocab"][1]:
        wrong.append(f"{name}: {n['vocab'][0]} logits, the fused head scores {n['vocab'][1]}")
    return wrong


@dataclass
class Outcome:
    status: str  # compared / refused / not causal / no config / no build / too big / no forward / missing
    detail: str = ""
    numbers: dict | None = None
    transform: HeadTransform | None = None


def _walk_one(class_name: str, model_type: str) -> Outcome:
    cls = getattr(transformers, class_name, None)
    if cls is None:
        return Outcome("missing", "not importable here (an optional dependency)")
    try:
        config = small_config(cls, model_type)
    except Exception as err:  # transformers' own validation of the shrunk config
        return Outcome("no config", f"{type(err).__name__}: {err}")
    try:
        head = head_for_class(cls, config)
    except UnsupportedHeadError as err:
        return Outcome("not causal", str(err))
    if not head.shift:
        return Outcome("not causal", head.task)
    try:
        with torch.device("meta"):
            parameters = sum(p.numel() for p in cls(config).parameters())
    except Exception:  # some build only with real tensors (transformers 4.57's Apertus): counted below
        parameters = 0
    if parameters > MAX_PARAMETERS:
        return Outcome("too big", f"{parameters / 1e6:.0f}M parameters at its smallest config")
    torch.manual_seed(0)
    try:
        model = cls(config).float()
    except Exception as err:
        return Outcome("no build", f"{type(err).__name__}: {err}")
    if sum(p.numel() for p in model.parameters()) > MAX_PARAMETERS:
        return Outcome("too big", "over the parameter budget at its smallest config")
    problem = fused_lm_head_problem(model)
    if problem is not None:
        return Outcome("refused", problem)
    try:
        numbers = three_losses(model, *_batch())
    except Exception as err:  # a forward that needs more than text (pixel values, ...) or fails at this size
        return Outcome("no forward", f"{type(err).__name__}: {err}")
    return Outcome("compared", numbers=numbers, transform=head_transform(model))


@functools.lru_cache(maxsize=1)
def walk() -> tuple[dict[str, Outcome], dict[str, list[str]], float]:
    """``(outcome per class, class names per mapping, seconds)``: each class built and compared once per session."""
    start = time.perf_counter()
    outcomes: dict[str, Outcome] = {}
    listed: dict[str, list[str]] = {}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for mapping in MAPPINGS:
                listed[mapping] = list(dict.fromkeys(name for _, name in _listed(mapping)))
                for model_type, class_name in _listed(mapping):
                    if class_name not in outcomes:
                        outcomes[class_name] = _walk_one(class_name, model_type)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return outcomes, listed, time.perf_counter() - start


def summary() -> str:
    outcomes, listed, seconds = walk()
    overall = collections.Counter(outcome.status for outcome in outcomes.values())
    lines = [
        f"transformers {transformers.__version__}: {len(outcomes)} classes walked in {seconds:.0f} s: "
        + ", ".join(f"{n} {s}" for s, n in overall.most_common())
    ]
    for mapping, names in listed.items():
        counts = collections.Counter(outcomes[name].status for name in names)
        lines.append(f"{mapping}: {len(names)} listed, " + ", ".join(f"{n} {s}" for s, n in counts.most_common()))
    for status in ("refused", "no config", "no build", "too big", "no forward", "missing"):
        names = sorted(name for name, outcome in outcomes.items() if outcome.status == status)
        if names:
            lines.append(f"{status}: " + "; ".join(f"{n} ({outcomes[n].detail.splitlines()[0][:150]})" for n in names))
    applied = collections.defaultdict(list)
    for name, outcome in sorted(outcomes.items()):
        t = outcome.transform
        if t is not None and (t.hidden_scale, t.logit_scale, t.softcap, t.vocab_limit) != (1.0, 1.0, None, None):
            applied[(t.hidden_scale, t.logit_scale, t.softcap, t.vocab_limit)].append(name)
    for (hidden_scale, logit_scale, softcap, vocab_limit), names in applied.items():
        lines.append(
            f"hidden_scale={hidden_scale:g} logit_scale={logit_scale:g} softcap={softcap} vocab_limit={vocab_limit}: "
            + ", ".join(names)
        )
    return "\n".join(lines)


def test_every_causal_lm_scores_with_the_fused_head_as_with_its_own_loss():
    """Own loss = fused cross-entropy = logits cross-entropy for every class that builds small and that the fused
    head accepts; where the forward adds a router loss, the fused head's is the same. (About 20 s on 5.25.)"""
    outcomes, _, _ = walk()
    print("\n" + summary())
    wrong = [
        line
        for name, outcome in sorted(outcomes.items())
        if outcome.status == "compared"
        for line in _disagreements(name, outcome.numbers)
    ]
    assert not wrong, "\n".join(wrong)
    compared = sum(outcome.status == "compared" for outcome in outcomes.values())
    # transformers 4.57 lists about 180 classes (90 compared), 5.25 about 290 (160 compared)
    assert compared >= 60, summary()
    kinds = {(o.transform.hidden_scale != 1, o.transform.logit_scale != 1, o.transform.softcap is not None)
             for o in outcomes.values() if o.status == "compared"}  # fmt: skip
    assert {(False, True, False), (False, False, True)} <= kinds  # a logit scale and a soft cap were exercised


def test_the_router_loss_weight_hf_cot_adds_is_the_one_the_forward_adds():
    """Wherever a compared model's forward adds a router loss: its loss less its logits' cross-entropy is
    ``router_aux_loss_coef(model) x aux_loss`` (JetMoE reads ``aux_loss_coef``, DBRX on 4.x ``moe_loss_weight``)."""
    outcomes, _, _ = walk()
    with_router = {name: o.numbers for name, o in outcomes.items() if o.status == "compared" and o.numbers["aux"]}
    wrong = [
        f"{name}: own loss - logits CE = {n['raw'] - n['logits']:.6f}, router_aux_loss_coef x aux = "
        f"{n['coef']} x {n['aux']:.6f}"
        for name, n in sorted(with_router.items())
        if abs(n["raw"] - n["logits"] - n["coef"] * n["aux"]) > ATOL + RTOL * abs(n["raw"])
    ]
    assert len(with_router) >= 10, sorted(with_router)
    assert not wrong, "\n".join(wrong)


# The names a forward uses for what it computes between its backbone and its loss: soft caps, logit scales and
# multipliers, a kept vocabulary, a z-loss, a write into the logits. A forward naming one needs a table entry.
TRANSFORM_NAMES = re.compile(
    r"soft_?cap|logit_scale|logits_scaling|multiplier|unpadded_vocab_size|z_loss|logits\[[^\]\n]*\]\s*=[^=]"
)
# Router loss weights under another name than router_aux_loss_coef: ROUTER_LOSS_WEIGHTS.
ROUTER_WEIGHT_NAMES = re.compile(r"\b(?!router_)\w*aux_loss_coef\b|\bmoe_loss_weight\b")
# Forwards that name a transform and need no entry, with the reason (checked by reading them).
CHECKED_IDENTITY = {
    "T5Gemma2ForConditionalGeneration": "an encoder-decoder (its config makes it a seq2seq head): scored through "
    "its logits, the fused head never applies",
}


def _entry(table: dict, cls) -> bool:
    return any(c.__name__ in table for c in cls.__mro__)


def _leaf(step) -> str:
    return step.path.rsplit(".", 1)[-1]


def _forward_source(cls) -> str:
    return inspect.getsource(inspect.unwrap(cls.forward))


def test_every_forward_that_names_a_transform_has_a_table_entry():
    """Over the forwards of every listed class of both mappings, built or not: one whose source names a transform
    has an entry in `TRANSFORMS` (itself or an ancestor) or is in `CHECKED_IDENTITY`; one that names a router loss
    weight other than ``router_aux_loss_coef`` has one in `ROUTER_LOSS_WEIGHTS`; and each step the table applies on
    this transformers names an attribute its forward reads."""
    names = dict.fromkeys(name for mapping in MAPPINGS for _, name in _listed(mapping))
    unexplained, unread, read = [], [], 0
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is None:
            continue
        source = _forward_source(cls)
        read += 1
        found = sorted(set(TRANSFORM_NAMES.findall(source)))
        if found and not _entry(TRANSFORMS, cls) and name not in CHECKED_IDENTITY:
            unexplained.append(f"{name}: its forward names {found}; no entry in TRANSFORMS")
        weights = sorted(set(ROUTER_WEIGHT_NAMES.findall(source)))
        if weights and not _entry(ROUTER_LOSS_WEIGHTS, cls):
            unexplained.append(
                f"{name}: its forward weighs its router loss by {weights}; no ROUTER_LOSS_WEIGHTS entry"
            )
        for step in TRANSFORMS.get(name, ()):
            if not isinstance(step, Refused) and applies(step) and _leaf(step) not in source:
                unread.append(f"{name}: {step} reads what its forward does not name")
        weights = [step for step in ROUTER_LOSS_WEIGHTS.get(name, ()) if applies(step)]
        if weights and not any(_leaf(step) in source for step in weights):  # the first the model has wins
            unread.append(f"{name}: its forward names none of {weights}")
    assert read >= 150, read
    assert not unexplained, "\n".join(unexplained)
    assert not unread, "\n".join(unread)


def test_every_value_the_table_reads_is_set_by_the_walk():
    """So that the walk shows a value read wrongly or not at all, it sets every one the table's steps read."""
    leaves = {_leaf(step) for steps in TRANSFORMS.values() for step in steps if not isinstance(step, Refused)}
    assert {INSTANCE_VALUES.get(leaf, leaf) for leaf in leaves} <= set(TRANSFORM_VALUES), leaves


# ------------------------------------------------------------------------------------------------ direct checks


def _small(class_name: str, model_type: str, transforms: bool = False, **overrides):
    cls = getattr(transformers, class_name, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {class_name}")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(small_config(cls, model_type, transforms, **overrides)).float()


def _assert_three_agree(model) -> dict:
    numbers = three_losses(model, *_batch())
    assert not _disagreements(type(model).__name__, numbers), numbers
    return numbers


def test_a_config_value_the_forward_never_reads_is_not_applied():
    """Llama's forward ignores ``final_logit_softcapping``: so does the fused head (a config-name list applied it)."""
    model = _small("LlamaForCausalLM", "llama", final_logit_softcapping=5.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # logits large enough that a cap of 5 would show
    assert model.config.final_logit_softcapping == 5.0
    assert head_transform(model) == HeadTransform()
    numbers = _assert_three_agree(model)
    capped = _capped_ce(model, 5.0)  # the control: applying the cap changes the number
    assert abs(capped - numbers["own"]) > 1e-2


def _capped_ce(model, cap: float) -> float:
    ids, mask, labels = _batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logits = cap * torch.tanh(logits / cap)
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)))


def test_recurrent_gemma_soft_caps_under_its_own_config_name():
    model = _small("RecurrentGemmaForCausalLM", "recurrent_gemma", logits_soft_cap=0.5)
    assert head_transform(model) == HeadTransform(softcap=0.5)
    numbers = _assert_three_agree(model)
    model.config.logits_soft_cap = 1e6  # the control: without the cap the loss differs
    assert abs(three_losses(model, *_batch())["own"] - numbers["own"]) > 1e-3


@pytest.mark.parametrize("unpadded", [None, 100])
def test_inkling_scales_its_hidden_state_and_keeps_the_unpadded_vocabulary(unpadded):
    overrides = {} if unpadded is None else {"unpadded_vocab_size": unpadded}
    model = _small("InklingForCausalLM", "inkling", **overrides)
    config = model.config
    transform = head_transform(model)
    assert transform.hidden_scale == pytest.approx(1 / config.logits_mup_width_multiplier)
    assert transform.vocab_limit == (unpadded if unpadded is not None and unpadded < VOCAB else None)
    numbers = _assert_three_agree(model)
    assert numbers["vocab"] == (unpadded or VOCAB,) * 2


def test_bamba_z_loss_keeps_the_logits_only_when_on():
    """Bamba adds a z-loss of the logits when ``z_loss_coefficient > 0``: read on the instance, as its forward does."""
    assert fused_lm_head_problem(_small("BambaForCausalLM", "bamba", z_loss_coefficient=0.0)) is None
    problem = fused_lm_head_problem(_small("BambaForCausalLM", "bamba", z_loss_coefficient=0.1))
    assert problem is not None and "z-loss" in problem and "z_loss_coefficient = 0.1" in problem, problem


def test_jetmoe_s_router_loss_is_weighed_by_its_own_coefficient():
    """JetMoE's forward weighs its router loss by ``aux_loss_coef``; a ``router_aux_loss_coef`` on its config is
    ignored by the forward, so by hf-cot too. (Transformers 4.57's forward adds it only when asked in the call, and
    then fails: it adds none, hf-cot neither.)"""
    model = _small("JetMoeForCausalLM", "jetmoe", aux_loss_coef=0.05, router_aux_loss_coef=0.5)
    numbers = _assert_three_agree(model)
    if int(transformers.__version__.split(".")[0]) < 5:
        assert router_aux_loss_coef(model) == 0.0 and numbers["aux"] is None
        return
    assert router_aux_loss_coef(model) == pytest.approx(0.05)
    assert numbers["aux"] and numbers["raw"] - numbers["own"] == pytest.approx(0.05 * numbers["aux"], rel=1e-4)
    assert numbers["raw"] - numbers["logits"] == pytest.approx(0.05 * numbers["aux"], rel=1e-3)
    model.config.output_router_logits = False  # no router loss asked for: none added
    assert router_aux_loss_coef(model) == 0.0


def test_uninstall_restores_the_forward_and_copies_keep_the_transform():
    model = _small("Gemma2ForCausalLM", "gemma2", final_logit_softcapping=0.5)
    install_fused_lm_head(model)
    assert is_installed(model)
    clone = pickle.loads(pickle.dumps(model))  # the transform travels with the partial
    twin = copy.deepcopy(model)
    ids, mask, labels = _batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels, cot_fused_lm_head=True).log_probs
        for other in (clone, twin):
            got = other(input_ids=ids, attention_mask=mask, labels=labels, cot_fused_lm_head=True).log_probs
            torch.testing.assert_close(got, expected)
    assert uninstall_fused_lm_head(model) and not is_installed(model) and "forward" not in vars(model)
    assert not uninstall_fused_lm_head(model)
    # a forward set on the instance before (accelerate's output conversion) is put back as it was
    wrapped = functools.partial(type(model).forward, model)
    model.forward = wrapped
    install_fused_lm_head(model)
    uninstall_fused_lm_head(model)
    assert vars(model)["forward"] is wrapped
