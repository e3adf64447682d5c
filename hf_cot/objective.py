"""Every COT mode's training objective and logged values, from summed terms (pure tensor math, no Trainer).

One home for the mode dispatch. Two producers compute the same summed terms (`ModeSums`): `sums_from_logits` from
materialized logits, and `sums_from_terms` from the per-token ``H`` / ``log p_g`` of the fused LM head (or of
`hf_cot.losses.complement_terms`). `mode_objective` turns them into the loss to backpropagate and the values to log,
for ``joint``, ``guided``, the CE step of ``alternating``, and its complement step (``mode="complement"``).

The loss's *value* is the plain cross-entropy (what a plain Trainer reports); its gradient is the mode's objective:
``loss + (ce - loss).detach()`` changes the value and leaves the backward bit for bit unchanged. The complement step
reports its own objective instead (it has no cross-entropy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import (
    check_label_range,
    complement_entropy,
    complement_normalizer,
    complement_terms,
    guided_rows,
    per_sample_complement_entropy,
)

__all__ = [
    "ModeSums",
    "checked_range",
    "combine_targets",
    "eval_entropy_sums",
    "label_weights",
    "mode_objective",
    "sums_from_logits",
    "sums_from_terms",
]


@dataclass
class ModeSums:
    """The summed terms a mode needs, over the valid positions of one micro-batch.

    ``ce``: the cross-entropy (None in the complement step); ``entropy``: the complement entropy ``H`` (joint,
    guided, complement step); ``guided``: the GCE loss (guided); ``num_classes``: K.
    """

    ce: torch.Tensor | None
    entropy: torch.Tensor | None
    guided: torch.Tensor | None
    num_classes: int


def label_weights(labels: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Each position's weight: its label's class weight, 0 where the label is ignored (-100)."""
    valid = labels != -100
    weights = class_weights.to(labels.device)[labels.masked_fill(~valid, 0)]
    return weights.masked_fill(~valid, 0.0)


def cross_entropy_sum(flat_logits, flat_labels, label_smoothing: float = 0.0, class_weights=None) -> torch.Tensor:
    # label_smoothing as the Trainer's LabelSmoother applies it ((1 - eps) NLL + eps * mean over classes); class weights
    # as PyTorch's `cross_entropy(weight=w)` sums them (its mean divides this by the summed weights).
    weight = None if class_weights is None else class_weights.to(flat_logits.device, torch.float32)
    return F.cross_entropy(
        flat_logits.float(),
        flat_labels,
        weight=weight,
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )


def sums_from_logits(
    mode: str,
    flat_logits,
    flat_labels,
    *,
    label_smoothing: float = 0.0,
    guided_alpha: float = 1.0,
    class_weights=None,
) -> ModeSums:
    """`ModeSums` from ``[N, K]`` logits and ``[N]`` labels (-100 ignored). ``mode``: ``"joint"``, ``"guided"``,
    ``"complement"``, or ``"ce"`` (the cross-entropy alone: the alternating mode's primary step, evaluation).

    ``class_weights`` (``[K]``): every position's terms are multiplied by its ground-truth class's weight (and the
    caller divides by the summed weights, `hf_cot.modeling.count_valid`), as ``cross_entropy(weight=w)`` does for CE.
    """
    num_classes = flat_logits.shape[-1]
    weights = None if class_weights is None else label_weights(flat_labels, class_weights).float()

    def weighted_sum(per_position):
        return per_position.sum() if weights is None else (per_position * weights).sum()

    def entropy_sum():
        if weights is None:
            return complement_entropy(flat_logits, flat_labels, reduction="sum")
        return weighted_sum(complement_entropy(flat_logits, flat_labels, reduction="none"))

    if mode == "complement":
        return ModeSums(None, entropy_sum(), None, num_classes)
    if mode == "guided":
        entropy, log_pg, valid = complement_terms(flat_logits, flat_labels)
        guided = weighted_sum(guided_rows(entropy, log_pg, valid, num_classes, guided_alpha))
        if label_smoothing > 0:
            ce = cross_entropy_sum(flat_logits.detach(), flat_labels, label_smoothing)
        else:  # -log p_g from the same pass: no second softmax over the classes
            ce = -weighted_sum(log_pg.masked_fill(~valid, 0.0))
        return ModeSums(ce, weighted_sum(entropy), guided, num_classes)
    check_label_range(flat_labels, num_classes)
    ce = cross_entropy_sum(flat_logits, flat_labels, label_smoothing, class_weights)
    return ModeSums(ce, entropy_sum() if mode == "joint" else None, None, num_classes)


def sums_from_terms(mode: str, entropy, log_pg, valid, num_classes: int, *, guided_alpha: float = 1.0) -> ModeSums:
    """`ModeSums` from per-position ``H``, ``log p_g`` (both 0 where not ``valid``) and the validity mask."""
    if mode == "complement":
        return ModeSums(None, entropy.sum(), None, num_classes)
    ce = -log_pg.sum()  # log p_g is 0 at ignored positions
    guided = None
    if mode == "guided":
        flat = (entropy.reshape(-1), log_pg.reshape(-1), valid.reshape(-1))
        guided = guided_rows(*flat, num_classes, guided_alpha).sum()
    return ModeSums(ce, entropy.sum() if mode in ("joint", "guided") else None, guided, num_classes)


def combine_targets(sums: list[ModeSums], denominators: torch.Tensor) -> tuple[ModeSums, torch.Tensor]:
    """Several targets (extractive QA's start and end) scored as the model's own loss scores them, the mean of the
    per-target means: ``(sums weighted by 1 / (targets x denominator), 1)``. One target: ``(sums, denominator)``
    unchanged. Every mode's objective is linear in the sums, so the weighting commutes with `mode_objective`."""
    if len(sums) == 1:
        return sums[0], denominators.reshape(-1)[0]
    weights = [1.0 / (len(sums) * d) for d in denominators.reshape(-1)]

    def mixed(name):
        values = [getattr(s, name) for s in sums]
        return None if values[0] is None else sum(w * v for w, v in zip(weights, values, strict=True))

    combined = ModeSums(mixed("ce"), mixed("entropy"), mixed("guided"), sums[0].num_classes)
    return combined, torch.ones((), device=denominators.device, dtype=weights[0].dtype)


def mode_objective(
    mode: str,
    sums: ModeSums,
    denominator: torch.Tensor,
    *,
    complement_weight: float = 1.0,
    normalization: str = "log",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, logs)`` of one micro-batch: the loss to backpropagate, normalized by ``denominator`` (the valid
    labels it is averaged over), and the detached values to log, normalized the same way.

    * ``joint``: CE - complement_weight * H / normalizer; logs ``complement_entropy`` and ``complement_loss``.
    * ``guided``: the GCE loss; logs ``complement_entropy`` and ``complement_loss`` (the GCE loss).
    * ``ce`` (also ``alternating``): the CE alone (the alternating CE step; nothing to log).
    * ``complement``: the alternating complement step, -H / normalizer; logs ``complement_entropy`` and
      ``complement_loss``; its value is the objective (there is no CE).
    """
    logs: dict[str, torch.Tensor] = {}
    if mode == "complement":
        scale = complement_normalizer(sums.num_classes, normalization)
        entropy = sums.entropy.detach()
        logs = {"complement_entropy": entropy / denominator, "complement_loss": -entropy / scale / denominator}
        return -sums.entropy / scale / denominator, logs
    ce_sum = objective_sum = sums.ce
    if mode == "guided":
        objective_sum, ce_sum = sums.guided, sums.ce.detach()
        logs = {
            "complement_entropy": sums.entropy.detach() / denominator,
            "complement_loss": sums.guided.detach() / denominator,
        }
    elif mode == "joint":
        scale = complement_normalizer(sums.num_classes, normalization)
        objective_sum = ce_sum - complement_weight * sums.entropy / scale
        logs = {
            "complement_entropy": sums.entropy.detach() / denominator,
            "complement_loss": -sums.entropy.detach() / scale / denominator,
        }
    loss = objective_sum / denominator
    if objective_sum is not ce_sum:
        # Value of the CE, gradient of the objective: adding a detached constant leaves the backward unchanged
        # (bit for bit), and a NaN objective still shows as a NaN loss.
        loss = loss + (ce_sum.detach() / denominator - loss.detach())
    return loss, logs


def checked_range(flat_logits, flat_labels):
    """``(flat_logits, flat_labels)`` once every label that counts is a class of the logits (else a ValueError)."""
    check_label_range(flat_labels, flat_logits.shape[-1])
    return flat_logits, flat_labels


def eval_entropy_sums(pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the complement-entropy sum and the valid count over every target ``(logits, labels)``."""
    per_target = [per_sample_complement_entropy(logits, labels) for logits, labels in pairs]
    return sum(s for s, _ in per_target), sum(c for _, c in per_target)
