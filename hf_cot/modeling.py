"""What COT needs to know about a model and its batches: which head it has, how its logits line up with the labels,
and how to run it without labels. Shared by the trainers and `evaluate_complement_entropy`; no Trainer here."""

from __future__ import annotations

import inspect
import sys
import warnings

import torch

from .head_transforms import router_loss_weight
from .heads import Head, UnsupportedHeadError, base_model, head_for
from .objective import label_weights

SHIFT_LABELS = "shift_labels"


def _config(model):
    return getattr(base_model(model), "config", None)


def shifts_labels(model) -> bool:
    """Whether the model's own loss scores position t's logits against label t + 1 (`hf_cot.heads`)."""
    return head_for(model).shift


def target_label_names(head: Head, label_names) -> tuple[str, ...]:
    """The batch keys of the head's targets: the Trainer's ``label_names`` where they name them (one target), else the
    head's own (QA: ``start_positions``, ``end_positions``)."""
    if len(head.targets) == 1:
        names = label_names or ["labels"]
        if len(names) != 1:
            raise ValueError(f"COT needs exactly one label tensor per batch for this model, got label_names={names}")
        return (names[0],)
    if label_names and len(label_names) == len(head.targets):
        return tuple(label_names)
    return head.label_names


def check_model_head(model, cot_mode: str) -> Head:
    """The model's `Head`; refuses (`ValueError`) heads that have no complement of a single ground truth and warns
    where COT can do nothing. Called by the trainers' constructors, before the model is changed."""
    try:
        head = head_for(model)
    except UnsupportedHeadError as err:
        raise ValueError(
            f"COT needs one target class per scored position, which this model's head does not have: {err}. Use "
            "cot_mode='off' (the plain Trainer) for this model."
        ) from err
    config = _config(model)
    if not head.num_labels_from_config or config is None:
        return head  # vocabulary, choices, positions: K is checked on the logits
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
        check_num_classes(2, cot_mode, stacklevel=5)
    return head


def check_num_classes(num_classes: int, cot_mode: str, stacklevel: int = 2) -> None:
    """K = 2: `guided` cannot train (its loss is identically 0), the other modes do nothing (warning)."""
    if num_classes != 2:
        return
    if cot_mode == "guided":
        raise ValueError(
            "cot_mode='guided' cannot train a binary classifier: with K = 2 the complement has a single class, its "
            "entropy is always 0, so the GCE loss is identically 0. Use cot_mode='off'."
        )
    warnings.warn(
        "COT does nothing on binary classification (K == 2 classes): the complement has a single class, so its "
        "entropy is always 0 and the complement step has a zero gradient. Use cot_mode='off' (or a task with K >= 3 "
        "classes).",
        UserWarning,
        stacklevel=stacklevel,
    )


def _sequence_length(inputs: dict) -> int | None:
    for key in ("input_ids", "inputs_embeds", "attention_mask"):
        value = inputs.get(key)
        if torch.is_tensor(value) and value.dim() >= 2:
            return value.shape[1]
    return None


def position_targets(positions: torch.Tensor, length: int | None) -> torch.Tensor:
    """QA positions as the model's loss reads them: clamped to ``[0, length]``, ``length`` ignored (-> -100)."""
    if positions.dim() > 1:
        positions = positions.squeeze(-1)
    if length is None:
        return positions
    positions = positions.clamp(0, length)
    return positions.masked_fill(positions == length, -100)


def batch_labels(model, inputs: dict, label_names) -> tuple[list[torch.Tensor], bool]:
    """``(labels per target, shift)``: the labels to score and whether they still need the causal shift.

    Under context / sequence parallelism the batch carries pre-shifted ``shift_labels`` (each rank holds a slice of
    the sequence, so its last position's label comes from the next slice): they are scored as they are, like TRL's
    fused forward and transformers' loss functions do.
    """
    head = head_for(model)
    names = target_label_names(head, label_names)
    if len(names) == 1 and inputs.get(SHIFT_LABELS) is not None:
        return [inputs[SHIFT_LABELS]], False
    missing = [name for name in names if name not in inputs]
    if missing:
        raise ValueError(
            f"COT needs labels: the batch has no {' / '.join(map(repr, missing))} key (got {sorted(inputs)}). Check "
            "the data collator, remove_unused_columns and label_names."
        )
    labels = [inputs[name] for name in names]
    floating = [name for name, t in zip(names, labels, strict=True) if torch.is_tensor(t) and t.is_floating_point()]
    if floating:
        raise ValueError(
            f"COT needs integer class labels, but the batch's {' / '.join(map(repr, floating))} are "
            f"{labels[names.index(floating[0])].dtype} (regression targets or soft labels?). Cast class indices to "
            "torch.long in the dataset or collator; for regression or soft targets use cot_mode='off'."
        )
    if head.positions:
        length = _sequence_length(inputs)
        labels = [position_targets(t, length) for t in labels]
    return labels, head.shift


def split_labels(model, inputs: dict, label_names) -> tuple[list[torch.Tensor], dict, bool]:
    """``(labels per target, model_inputs, shift)``: the batch without its labels (and ``shift_labels``), so that the
    model computes no loss of its own, and the labels to score (`batch_labels`).

    Encoder-decoders get their decoder inputs built from the labels as their own forward builds them: the same
    decoder inputs then serve the CE and the complement forward.
    """
    head = head_for(model)
    labels, shift = batch_labels(model, inputs, label_names)
    names = set(target_label_names(head, label_names)) | {SHIFT_LABELS}
    model_inputs = {k: v for k, v in inputs.items() if k not in names}
    if head.encoder_decoder and not ("decoder_input_ids" in model_inputs or "decoder_inputs_embeds" in model_inputs):
        model_inputs["decoder_input_ids"] = decoder_inputs_from_labels(model, labels[0])
    return labels, model_inputs, shift


def decoder_inputs_from_labels(model, labels: torch.Tensor) -> torch.Tensor:
    """The decoder inputs an encoder-decoder's forward builds from ``labels``: its
    ``prepare_decoder_input_ids_from_labels``, else its module's ``shift_tokens_right`` with its config's pad and
    decoder start tokens (Whisper, Speech2Text: what their forwards call)."""
    base = base_model(model)
    if hasattr(base, "prepare_decoder_input_ids_from_labels"):
        return base.prepare_decoder_input_ids_from_labels(labels=labels)
    shift = getattr(sys.modules.get(type(base).__module__), "shift_tokens_right", None)
    config = base.config
    if shift is not None:
        parameters = len(inspect.signature(shift).parameters)
        if parameters == 3 and getattr(config, "decoder_start_token_id", None) is not None:
            return shift(labels, config.pad_token_id, config.decoder_start_token_id)
        if parameters == 2:
            return shift(labels, config.pad_token_id)
    raise ValueError(
        f"{type(base).__name__} cannot build decoder_input_ids from labels here; pass them in the batch "
        "(DataCollatorForSeq2Seq(tokenizer, model=model) does)"
    )


def output_logits(outputs, key: str = "logits"):
    logits = outputs.get(key) if isinstance(outputs, dict) else getattr(outputs, key, None)
    if logits is None:
        raise TypeError(
            f"COT needs the model output to have `{key}`; {type(outputs).__name__} has none. Use a model with a "
            "classification or language-modeling head, or cot_mode='off'."
        )
    return logits


def aligned_targets(
    model, outputs, labels: list[torch.Tensor], shift: bool
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per target, the output's logits and the labels aligned position by position (shifted by one where the
    model's own loss shifts; QA positions clamped to the logits' length as the model clamps them)."""
    head = head_for(model)
    pairs = []
    for (key, _), target in zip(head.targets, labels, strict=True):
        logits = output_logits(outputs, key)
        if shift:
            logits, target = logits[..., :-1, :], target[..., 1:]
        if head.positions:
            target = position_targets(target.masked_fill(target == -100, logits.shape[-1]), logits.shape[-1])
        if logits.shape[:-1] != target.shape:
            raise ValueError(
                f"{key} {tuple(logits.shape)} do not match labels {tuple(target.shape)} ({type(base_model(model)).__name__}, "
                f"{head.task} head)"
            )
        pairs.append((logits, target))
    return pairs


def text_config(model):
    """The model's (text) config: the language model's for a multimodal model, None for a model without one."""
    config = _config(model)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def router_aux_loss_coef(model) -> float:
    """The weight a mixture-of-experts model gives its router load-balancing loss in its own loss (0 when it adds
    none): ``router_aux_loss_coef`` when its (text) config has ``output_router_logits`` on, or the attribute its
    class's forward reads instead (`hf_cot.head_transforms.ROUTER_LOSS_WEIGHTS`: JetMoE's ``aux_loss_coef``, DBRX's
    ``moe_loss_weight`` on transformers 4.x; none for Llama 4, whose forward adds no router loss)."""
    return router_loss_weight(base_model(model))


def count_valid(labels: list[torch.Tensor], shift: bool, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per target, the labels that count (not -100), after the causal shift: a ``[targets]`` tensor. With class
    weights, each label counts its class's weight (the denominator of PyTorch's weighted cross-entropy mean)."""
    labels = [t[..., 1:] if shift else t for t in labels]
    if class_weights is None:
        return torch.stack([(t != -100).sum() for t in labels])
    return torch.stack([label_weights(t, class_weights).sum() for t in labels])


def check_class_weights(model, class_weights) -> None:
    """`class_weights` need a head whose K is ``config.num_labels`` (sequence / token / image / audio
    classification) and one weight per class; refused otherwise, before the model is changed."""
    if class_weights is None:
        return
    head = head_for(model)
    num_labels = getattr(_config(model), "num_labels", None)
    if not head.num_labels_from_config:
        raise ValueError(
            f"class_weights need a classification head whose classes are config.num_labels; "
            f"{type(base_model(model)).__name__} is scored as a {head.task} head (its classes are "
            f"{'the vocabulary' if head.vocabulary else 'the choices or positions'}). Remove class_weights."
        )
    if len(class_weights) != num_labels:
        raise ValueError(
            f"class_weights has {len(class_weights)} weights but the model has config.num_labels={num_labels} "
            "classes: give one weight per class, in label-id order."
        )
