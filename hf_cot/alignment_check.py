"""The guard for what no table knows: before the first update, hf-cot's cross-entropy against the model's own loss.

`hf_cot.heads` decides how a model's logits line up with its labels from transformers' Auto mappings. A remote-code
model, next month's architecture or a subclass with its own forward can still score differently; training would then
run, the loss would look normal, and the model would learn another task. So on the first batch a COT trainer sees
(training or evaluation), `check_alignment` runs two forwards without gradients on one row of it, in eval mode, on a
random stream of its own (the run's random numbers are untouched): the model's own (labels passed, the model builds
its decoder inputs and scores itself) and hf-cot's (labels removed, decoder inputs built and logits aligned as the head
says), and compares the two cross-entropies. A mismatch is a `ValueError` naming the class, both numbers and what would
match; COT never trains another objective.

Cost: two forwards of one row, once per trainer (docs/compatibility.md has the numbers).
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F

from .heads import head_for
from .modeling import aligned_targets, base_model, batch_labels, output_logits, router_aux_loss_coef, split_labels

logger = logging.getLogger(__name__)

# The two cross-entropies come from the same weights and inputs: they agree to rounding. Half-precision logits
# (autocast) round at 8 (bf16) or 11 (fp16) bits before either loss is computed.
RTOL = {torch.float32: 1e-4, torch.float64: 1e-6}
RTOL_HALF = 2e-2


class AlignmentMismatchError(ValueError):
    """hf-cot's cross-entropy is not the model's own loss on the same batch."""


def _row_slice(inputs: dict, labels: list[torch.Tensor]) -> dict:
    """One row with a label that counts, when every tensor of the batch is batch-first; else the whole batch."""
    rows = labels[0].shape[0] if labels[0].dim() > 0 else 0
    valid = torch.stack([(t.reshape(rows, -1) != -100).any(1) for t in labels]).all(0) if rows else None
    batch_first = all(
        not torch.is_tensor(v) or (v.dim() > 0 and v.shape[0] == rows) for v in inputs.values()
    ) and not any(isinstance(v, (list, tuple)) for v in inputs.values())
    if valid is None or not batch_first or not bool(valid.any()):
        return inputs
    i = int(valid.nonzero()[0])
    return {k: (v[i : i + 1] if torch.is_tensor(v) else v) for k, v in inputs.items()}


def _mean_ce(pairs) -> torch.Tensor:
    losses = [
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        for logits, labels in pairs
    ]
    return torch.stack(losses).mean()


def _field(outputs, name: str):
    value = getattr(outputs, name, None)  # a ModelOutput's attribute (also where a subclass set it after the fact)
    return outputs.get(name) if value is None and isinstance(outputs, dict) else value


def _own_loss(model, outputs) -> torch.Tensor | None:
    loss = _field(outputs, "loss")
    if loss is None:
        return None
    coef = router_aux_loss_coef(model)
    aux = _field(outputs, "aux_loss")
    if coef and aux is not None:  # mixture-of-experts: the model's loss adds its router loss; hf-cot adds it too
        loss = loss - coef * aux.to(loss.device)
    return loss.float().mean()


def compare_with_own_loss(model, inputs: dict, label_names, context=None, unwrapped=None) -> str | None:
    """Run both forwards on one row of ``inputs`` and compare; returns the mismatch message, None when they agree.

    Returns None (and logs why) where nothing can be compared: the model returns no loss, or no label counts.
    ``context``: a context manager factory for the forwards (the trainer's autocast). ``model`` runs the forwards (an
    engine's wrapper, DDP's say); ``unwrapped`` (default: ``model``) is the transformers model the head is read from.
    """
    context = context or contextlib.nullcontext
    forward, model = model, (model if unwrapped is None else unwrapped)
    labels, _ = batch_labels(model, inputs, label_names)
    if not any(bool((t != -100).any()) for t in labels):
        return None
    sliced = _row_slice(inputs, labels)
    device = next((v.device for v in sliced.values() if torch.is_tensor(v)), torch.device("cpu"))
    devices = [device] if device.type == "cuda" else []
    was_training = forward.training
    forward.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices), context():
            own = _own_loss(model, forward(**sliced))
            if own is None:
                logger.warning(
                    "%s returns no loss when given labels: hf-cot cannot check its cross-entropy against the model's "
                    "own loss (it scores the head as hf_cot.heads says: %s).",
                    type(base_model(model)).__name__,
                    head_for(model).task,
                )
                return None
            target_labels, model_inputs, shift = split_labels(model, sliced, label_names)
            outputs = forward(**model_inputs)
            pairs = aligned_targets(model, outputs, target_labels, shift)
            ours = _mean_ce(pairs)
    finally:
        forward.train(was_training)
    dtype = pairs[0][0].dtype
    rtol = RTOL.get(dtype, RTOL_HALF)
    if abs(float(ours) - float(own)) <= rtol * max(1.0, abs(float(own))):
        return None
    return _mismatch_message(model, float(own), float(ours), outputs, target_labels, shift)


def _mismatch_message(model, own: float, ours: float, outputs, labels, shift: bool) -> str:
    head = head_for(model)
    name = type(base_model(model)).__name__
    hint = ""
    logits = output_logits(outputs, head.targets[0][0])
    if len(labels) == 1 and logits.dim() >= 3:  # per-position logits: would the other alignment match?
        if shift:
            other, what = _mean_ce([(logits, labels[0])]), "position t's logits against label t (no shift)"
        else:
            other = _mean_ce([(logits[..., :-1, :], labels[0][..., 1:])])
            what = "position t's logits against label t + 1 (a causal LM's shift)"
        if abs(float(other) - own) <= 1e-3 * max(1.0, abs(own)):
            hint = f" Its own loss matches {what}: {float(other):.6f}."
    return (
        f"hf-cot does not score {name} as the model scores itself: on the first batch the model's own loss is "
        f"{own:.6f}, hf-cot's cross-entropy is {ours:.6f} (scored as a {head.task} head: shift={head.shift}, "
        f"targets {[label for _, label in head.targets]}).{hint} Training would optimize another objective, so COT "
        "refuses. Declare the head with hf_cot.heads.register_head(ModelClass, 'causal-lm' | 'masked-lm' | ...), "
        "or use cot_mode='off'. Models whose own loss adds terms of its own (label smoothing, auxiliary losses) "
        "cannot be scored by COT."
    )


class FirstBatchCheck:
    """A trainer's check, once per model (`model_init` builds new ones): every process takes part, so that all refuse
    together (a process that raised alone would leave the others waiting in the next collective)."""

    def __init__(self):
        self.checked_model = None

    def check(self, model, inputs: dict, trainer) -> None:
        unwrapped = trainer.accelerator.unwrap_model(model)
        if self.checked_model is unwrapped:
            return
        problem = compare_with_own_loss(
            model, inputs, trainer.label_names, trainer.compute_loss_context_manager, unwrapped=trainer.model
        )
        failed = torch.tensor([float(problem is not None)], device=trainer.args.device)
        if trainer.accelerator.num_processes > 1:
            failed = trainer.accelerator.reduce(failed, reduction="sum")
        if problem is not None or float(failed) > 0:  # not marked as checked: a retry is refused again
            raise AlignmentMismatchError(
                problem or "hf-cot's cross-entropy differs from the model's own loss on another process's first batch"
            )
        self.checked_model = unwrapped
