"""What COT needs to know about a model and its batches: which head it has, how its logits line up with the labels,
and how to run it without labels. Shared by the trainers and `evaluate_complement_entropy`; no Trainer here."""

from __future__ import annotations

import warnings

import torch

# Heads whose classes are the vocabulary (K = vocab size, `num_labels` is meaningless there).
LM_HEAD_SUFFIXES = ("ForCausalLM", "ForMaskedLM", "ForConditionalGeneration", "LMHeadModel", "EncoderDecoderModel")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def base_model(model):
    """The model under a PEFT wrapper (a `PeftModel` keeps the transformers model one `get_base_model()` away)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _config(model):
    return getattr(base_model(model), "config", None)


def shifts_labels(model) -> bool:
    """Causal LM heads predict position t + 1 at position t (their own loss shifts; so must ours)."""
    return not getattr(_config(model), "is_encoder_decoder", False) and type(base_model(model)).__name__.endswith(
        CAUSAL_SUFFIXES
    )


def is_lm_head(model) -> bool:
    return bool(getattr(_config(model), "is_encoder_decoder", False)) or type(base_model(model)).__name__.endswith(
        LM_HEAD_SUFFIXES
    )


def single_label_name(label_names) -> str:
    names = label_names or ["labels"]
    if len(names) != 1:
        raise ValueError(f"COT needs exactly one label tensor per batch, got label_names={names}")
    return names[0]


def check_model_head(model, cot_mode: str) -> None:
    """Refuse heads that have no complement of a single ground truth; warn where COT can do nothing."""
    config = _config(model)
    if config is None or is_lm_head(model):
        return  # vocabulary-sized heads: K is checked on the logits
    problem_type = getattr(config, "problem_type", None)
    num_labels = getattr(config, "num_labels", None)
    if problem_type == "multi_label_classification":
        raise ValueError(
            "COT needs single-label targets: the complement of the ground-truth class is undefined for "
            "problem_type='multi_label_classification'. Use cot_mode='off' for multi-label heads."
        )
    if problem_type == "regression" or num_labels == 1:
        raise ValueError(
            "COT needs a classification head with K >= 3 classes; this model is a regression head "
            "(num_labels == 1 or problem_type='regression'). Use cot_mode='off' for regression."
        )
    if num_labels == 2:
        if cot_mode == "guided":
            raise ValueError(
                "cot_mode='guided' cannot train a binary classifier: with K = 2 the complement has a single "
                "class, its entropy is always 0, so the GCE loss is identically 0. Use cot_mode='off'."
            )
        warnings.warn(
            "COT does nothing on binary classification (num_labels == 2): the complement has a single class, "
            "so its entropy is always 0 and the complement step has a zero gradient. Use cot_mode='off' "
            "(or a task with K >= 3 classes).",
            UserWarning,
            stacklevel=4,
        )


SHIFT_LABELS = "shift_labels"


def batch_labels(model, inputs: dict, label_name: str) -> tuple[torch.Tensor, bool]:
    """``(labels, shift)``: the labels to score and whether they still need the causal shift.

    Under context / sequence parallelism the batch carries pre-shifted ``shift_labels`` (each rank holds a slice of
    the sequence, so its last position's label comes from the next slice): they are scored as they are, like TRL's
    fused forward and transformers' loss functions do.
    """
    if inputs.get(SHIFT_LABELS) is not None:
        return inputs[SHIFT_LABELS], False
    return inputs[label_name], shifts_labels(model)


def split_labels(model, inputs: dict, label_name: str) -> tuple[torch.Tensor, dict, bool]:
    """``(labels, model_inputs, shift)``: the batch without its labels (``labels`` and ``shift_labels``), so that the
    model computes no loss of its own, and the labels to score (`batch_labels`).

    Models that build decoder inputs from labels get them explicitly: the same decoder inputs then serve the CE and
    the complement forward.
    """
    if label_name not in inputs and inputs.get(SHIFT_LABELS) is None:
        raise ValueError(
            f"COT needs labels: the batch has no {label_name!r} key (got {sorted(inputs)}). Check the data collator "
            "and remove_unused_columns."
        )
    labels, shift = batch_labels(model, inputs, label_name)
    model_inputs = {k: v for k, v in inputs.items() if k not in (label_name, SHIFT_LABELS)}
    base = base_model(model)
    if getattr(_config(model), "is_encoder_decoder", False) and not (
        "decoder_input_ids" in model_inputs or "decoder_inputs_embeds" in model_inputs
    ):
        if not hasattr(base, "prepare_decoder_input_ids_from_labels"):
            raise ValueError(
                f"{type(base).__name__} cannot build decoder_input_ids from labels; pass them in the batch "
                "(DataCollatorForSeq2Seq(tokenizer, model=model) does)"
            )
        model_inputs["decoder_input_ids"] = base.prepare_decoder_input_ids_from_labels(labels=labels)
    return labels, model_inputs, shift


def aligned_logits(outputs, labels: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The output's logits and the labels, aligned position by position (shifted by one for causal LMs)."""
    logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if logits is None:
        raise TypeError(
            f"COT needs the model output to have `logits`; {type(outputs).__name__} has none. Use a model with a "
            "classification or language-modeling head, or cot_mode='off'."
        )
    if shift:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    return logits, labels


def text_config(model):
    """The model's (text) config: the language model's for a multimodal model, None for a model without one."""
    config = _config(model)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def router_aux_loss_coef(model) -> float:
    """The weight a mixture-of-experts model gives its router load-balancing loss in its own loss (0 when it adds
    none): ``router_aux_loss_coef`` when its (text) config has ``output_router_logits`` on."""
    config = text_config(model)
    if not getattr(config, "output_router_logits", False):
        return 0.0
    return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)


def count_valid(labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Labels that count (not -100), after the causal shift."""
    if shift:
        labels = labels[..., 1:]
    return (labels != -100).sum()
