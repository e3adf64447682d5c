"""How a COT trainer scores a batch: one code path for the loss it trains on, the loss it reports, and the check.

`score_batch` runs the model without labels (so that it computes no loss of its own) and returns the summed terms of
every target (`hf_cot.objective.ModeSums`) with their valid-label counts: from the fused LM head's per-token terms
where the trainer uses it (`hf_cot.fused_lm_head`), else from the logits aligned as the model's own loss aligns them
(`hf_cot.modeling`). Training turns the sums into the mode's objective (`mode_objective`), evaluation and the
first-batch check (`hf_cot.alignment_check`) into the cross-entropy the model would report (`reported_cross_entropy`):
so the check compares the model's own loss with exactly what hf-cot trains on and logs, not a neighbour of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fused_lm_head import FusedCOTOutput
from .modeling import aligned_targets, count_valid, router_aux_loss_coef, split_labels
from .objective import (
    ModeSums,
    combine_targets,
    eval_entropy_sums,
    sums_from_logits,
    sums_from_terms,
)


@dataclass
class ScoredBatch:
    """One batch as hf-cot scores it.

    ``sums``: per target, the mode's summed terms; ``counts``: per target (``[targets]``), the labels they sum over
    (class-weighted where class weights are set); ``num_classes``: K (None on the fused head, whose K is the
    vocabulary); ``per_sample_entropy``: when asked, per sample ``(complement-entropy sum, valid count)`` for
    ``eval_complement_entropy``.
    """

    outputs: object
    sums: list[ModeSums]
    counts: torch.Tensor
    num_classes: int | None
    per_sample_entropy: tuple[torch.Tensor, torch.Tensor] | None = None


def forward_targets(model, head_model, inputs: dict, label_names):
    """One forward without labels: ``(outputs, [(logits, labels) per target])`` aligned position by position as the
    model's own loss aligns them. ``head_model`` is the transformers model the head is read from (``model`` may be
    an engine's wrapper)."""
    labels, model_inputs, shift = split_labels(head_model, inputs, label_names)
    if router_aux_loss_coef(head_model):  # as TRL: VLM wrappers return aux_loss only when asked in the call
        model_inputs["output_router_logits"] = True
    outputs = model(**model_inputs)
    return outputs, aligned_targets(head_model, outputs, labels, shift)


def fused_forward(model, head_model, inputs: dict, label_names) -> FusedCOTOutput:
    """One forward through the fused LM head: per-token terms, never the logits."""
    (labels,), model_inputs, shift = split_labels(head_model, inputs, label_names)
    kwargs = {"labels": labels} if shift else {"shift_labels": labels}
    return model(**model_inputs, **kwargs, cot_fused_lm_head=True)


def score_batch(
    model,
    inputs: dict,
    mode: str,
    *,
    head_model,
    label_names,
    fused: bool,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    guided_alpha: float = 1.0 / 3.0,
    per_sample_entropy: bool = False,
) -> ScoredBatch:
    """The batch's `ScoredBatch` for ``mode`` (``"joint"``, ``"guided"``, ``"complement"``, ``"ce"``)."""
    if fused:
        out = fused_forward(model, head_model, inputs, label_names)
        sums = sums_from_terms(mode, out.complement_entropy, out.log_probs, out.valid, out.vocab_size,
                               guided_alpha=guided_alpha)  # fmt: skip
        entropy = (out.complement_entropy.detach().sum(1), out.valid.sum(1)) if per_sample_entropy else None
        return ScoredBatch(out, [sums], out.valid.sum().reshape(1), None, entropy)
    outputs, pairs = forward_targets(model, head_model, inputs, label_names)
    sums = []
    for logits, labels in pairs:
        flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        sums.append(
            sums_from_logits(
                mode,
                flat_logits,
                flat_labels,
                label_smoothing=label_smoothing,
                guided_alpha=guided_alpha,
                class_weights=class_weights,
            )
        )
    entropy = (
        eval_entropy_sums([(logits.detach(), labels) for logits, labels in pairs]) if per_sample_entropy else None
    )
    # the labels are aligned already: no shift left to apply
    counts = count_valid([labels for _, labels in pairs], False, class_weights)
    return ScoredBatch(outputs, sums, counts, pairs[0][0].shape[-1], entropy)


def reported_cross_entropy(scored: ScoredBatch) -> torch.Tensor:
    """The cross-entropy the model's own loss reports for the batch: each target's mean over its (weighted) labels,
    averaged over targets (QA's start and end). NaN (0 / 0) where a target has no valid label, as the model's mean."""
    combined, denominator = combine_targets(scored.sums, scored.counts)
    return combined.ce / denominator


def router_loss(head_model, outputs) -> torch.Tensor | None:
    """What a mixture-of-experts model's own forward adds to its loss, ``router_aux_loss_coef x aux_loss`` (None
    where it adds nothing)."""
    coef = router_aux_loss_coef(head_model)
    aux = outputs.get("aux_loss") if isinstance(outputs, dict) else getattr(outputs, "aux_loss", None)
    if coef == 0 or aux is None:
        return None
    return coef * aux
