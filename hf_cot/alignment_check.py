"""The guard for what no table knows: before the first update, what hf-cot trains on against the model's own loss.

`hf_cot.heads` decides how a model's logits line up with its labels from transformers' Auto mappings, and the fused LM
head (`hf_cot.fused_lm_head`) reproduces the logit transforms it knows. A remote-code model, next month's architecture
or a subclass with its own forward can still score differently; training would then run, the loss would look normal,
and the model would learn another task. So on the first batch a COT trainer sees (training or evaluation),
`FirstBatchCheck` runs, without gradients and in eval mode, the model's own forward (labels passed: the model builds
its decoder inputs and scores itself) and hf-cot's scoring (`hf_cot.scoring.score_batch`: the fused head where the
trainer trains on it, else the logits), on two rows of the batch whose numbers of labelled positions differ (so that a
per-row mean is told from the token mean), and compares the two cross-entropies:

* they agree: checked, once per model;
* the model's own loss is NaN or infinite (a diverged model, NaN inputs): nothing can be compared, training goes on as
  with the plain Trainer (whose ``logging_nan_inf_filter`` then applies), and the next batch is checked;
* the fused head disagrees but the logits agree: the trainer falls back to the logits with a warning naming the model
  and the numbers (an error when ``cot_fused_lm_head=True`` was asked for);
* they disagree: `AlignmentMismatchError`, naming the class, both numbers and what would match;
* the model returns no loss when given labels: refused (`ValueError`), unless its head was declared with
  `hf_cot.register_head`, which is then trusted unchecked.

Every process runs the same forwards and the verdict is reduced over them, so that all continue or refuse together
(under FSDP / ZeRO-3 each forward is a collective). The forwards leave the run's random streams (torch, numpy, Python)
as they were. Cost: two or three forwards of two rows, once per model (docs/compatibility.md has the numbers).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings

import torch
import torch.nn.functional as F

from .heads import base_model, head_for, is_registered
from .modeling import SHIFT_LABELS, batch_labels, router_aux_loss_coef
from .random_streams import untouched_random_streams
from .scoring import reported_cross_entropy

logger = logging.getLogger(__name__)

# The two cross-entropies come from the same weights and inputs: they agree to rounding. Half-precision logits
# (autocast) round at 8 (bf16) or 11 (fp16) bits before either loss is computed.
RTOL = {torch.float32: 1e-4, torch.float64: 1e-6}
RTOL_HALF = 2e-2

# Verdicts, ordered so that the reduction over processes (max) keeps the gravest.
AGREE, NOT_FINITE, MISMATCH = 0, 1, 2


class AlignmentMismatchError(ValueError):
    """hf-cot's cross-entropy is not the model's own loss on the same batch."""


def check_rows(inputs: dict, labels: list[torch.Tensor], shift: bool) -> dict:
    """Two rows of the batch, the first with labels that count and one whose number of them differs (another
    labelled row where none differs), when every tensor of the batch is batch-first; else the whole batch."""
    rows = labels[0].shape[0] if labels[0].dim() > 0 else 0
    batch_first = all(
        not torch.is_tensor(v) or (v.dim() > 0 and v.shape[0] == rows) for v in inputs.values()
    ) and not any(isinstance(v, (list, tuple)) for v in inputs.values())
    if rows < 2 or not batch_first:
        return inputs
    counts = sum(((t[..., 1:] if shift and t.dim() > 1 else t).reshape(rows, -1) != -100).sum(1) for t in labels)
    labelled = [i for i in range(rows) if int(counts[i]) > 0]
    if not labelled:
        return inputs
    first = labelled[0]
    others = [i for i in labelled if int(counts[i]) != int(counts[first])] or labelled[1:] or [1 - min(first, 1)]
    index = torch.tensor(sorted((first, others[0])), device=labels[0].device)
    return {k: (v.index_select(0, index.to(v.device)) if torch.is_tensor(v) else v) for k, v in inputs.items()}


def _with_labels(rows: dict) -> dict:
    """The batch the model's own forward scores. Pre-shifted ``shift_labels`` alone (context parallelism): passed
    as ``labels`` too, as the model's loss computes nothing without ``labels`` and, given ``shift_labels``,
    transformers' causal-LM loss scores those instead of shifting ``labels``."""
    if "labels" in rows or rows.get(SHIFT_LABELS) is None:
        return rows
    return {**rows, "labels": rows[SHIFT_LABELS]}


def _field(outputs, name: str):
    value = getattr(outputs, name, None)  # a ModelOutput's attribute (also where a subclass set it after the fact)
    return outputs.get(name) if value is None and isinstance(outputs, dict) else value


def own_loss(model, outputs) -> torch.Tensor | None:
    """The model's own loss without what hf-cot adds itself (a mixture-of-experts router loss); None if it has none."""
    loss = _field(outputs, "loss")
    if loss is None:
        return None
    coef = router_aux_loss_coef(model)
    aux = _field(outputs, "aux_loss")
    if coef and aux is not None:  # mixture-of-experts: the model's loss adds its router loss; hf-cot adds it too
        loss = loss - coef * aux.to(loss.device)
    return loss.float().mean()


def _rtol(model, outputs) -> float:
    logits = _field(outputs, head_for(model).targets[0][0])
    return RTOL.get(logits.dtype, RTOL_HALF) if torch.is_tensor(logits) else RTOL[torch.float32]


def _agree(own: float, ours: float, rtol: float) -> bool:
    return abs(ours - own) <= rtol * max(1.0, abs(own))


class FirstBatchCheck:
    """A trainer's check, once per model (`model_init` builds new ones).

    It asks the trainer (`hf_cot.trainer.COTMixin`) for: ``model`` (the transformers model), ``label_names``,
    ``accelerator``, ``args`` (``device``, ``cot_fused_lm_head``), ``compute_loss_context_manager()`` (autocast),
    ``_cot_fused`` (whether it trains on the fused head), ``_score_for_check(model, inputs, fused)`` (its
    `hf_cot.scoring.ScoredBatch`, unweighted) and ``_use_logits_path()`` (the fallback).
    """

    def __init__(self):
        self.checked_model = None
        self._said_not_finite = False

    def check(self, model, inputs: dict, trainer) -> None:
        unwrapped = trainer.accelerator.unwrap_model(model)
        if self.checked_model is unwrapped:
            return
        head_model = trainer.model
        labels, shift = batch_labels(head_model, inputs, trainer.label_names)  # float labels: refused here
        rows = check_rows(inputs, labels, shift)
        own, outputs = self._run(model, rows, trainer, own=True)
        if own is None:
            self._no_loss(head_model)
            self.checked_model = unwrapped
            return
        rtol = _rtol(head_model, outputs)
        ours = self._run(model, rows, trainer, fused=trainer._cot_fused)
        verdict = self._reduce(trainer, self._verdict(own, ours, rtol))
        if verdict == NOT_FINITE:
            self._not_finite(head_model, own)
            return
        if verdict == MISMATCH and trainer._cot_fused:
            logits_ce = self._run(model, rows, trainer, fused=False)
            if self._reduce(trainer, self._verdict(own, logits_ce, rtol)) == AGREE:
                self._fall_back(head_model, trainer, own, ours, logits_ce)
                verdict = AGREE
        if verdict != AGREE:
            row_labels, _ = batch_labels(head_model, rows, trainer.label_names)
            raise AlignmentMismatchError(
                _mismatch_message(head_model, own, ours, outputs, row_labels, shift, trainer._cot_fused)
                if not _agree(own, ours, rtol)
                else "hf-cot's cross-entropy differs from the model's own loss on another process's first batch"
            )
        self.checked_model = unwrapped

    @staticmethod
    def _run(model, rows: dict, trainer, *, own: bool = False, fused: bool = False):
        """One forward without gradients, in eval mode, leaving the run's random streams untouched: the model's own
        loss and outputs (``own``), else hf-cot's cross-entropy on the fused head or the logits (a float)."""
        device = next((v.device for v in rows.values() if torch.is_tensor(v)), torch.device("cpu"))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), untouched_random_streams(device), trainer.compute_loss_context_manager():
                if own:
                    outputs = model(**_with_labels(rows))
                    loss = own_loss(trainer.model, outputs)
                    return (None if loss is None else float(loss)), outputs
                return float(reported_cross_entropy(trainer._score_for_check(model, rows, fused)))
        finally:
            model.train(was_training)

    @staticmethod
    def _verdict(own: float, ours: float, rtol: float) -> int:
        if not math.isfinite(own):
            return NOT_FINITE
        return AGREE if _agree(own, ours, rtol) else MISMATCH

    @staticmethod
    def _reduce(trainer, verdict: int) -> int:
        if trainer.accelerator.num_processes == 1:
            return verdict
        value = torch.tensor([float(verdict)], device=trainer.args.device)
        return int(trainer.accelerator.gather(value).max())

    def _not_finite(self, model, own: float) -> None:
        if not self._said_not_finite:
            logger.warning(
                "%s's own loss is %s on this batch (diverged weights or non-finite inputs): hf-cot cannot compare its "
                "cross-entropy with it, trains on as the plain Trainer does, and checks the next batch.",
                type(base_model(model)).__name__,
                own,
            )
            self._said_not_finite = True

    @staticmethod
    def _no_loss(model) -> None:
        name = type(base_model(model)).__name__
        if not is_registered(model):
            raise ValueError(
                f"{name} returns no loss when given labels, so hf-cot cannot check that it scores the model as the "
                "model scores itself (the plain Trainer refuses such a model too). If you know how its logits line up "
                f"with its labels, declare it: hf_cot.register_head({name}, 'causal-lm' | 'masked-lm' | "
                "'classification' | ...); else use cot_mode='off' with a compute_loss of your own."
            )
        logger.warning(
            "%s returns no loss when given labels: its head is scored as declared with register_head (%s), unchecked.",
            name,
            head_for(model).task,
        )

    @staticmethod
    def _fall_back(model, trainer, own: float, fused: float, logits: float) -> None:
        name = type(base_model(model)).__name__
        what = (
            f"hf-cot's fused LM head does not reproduce {name}'s loss: on the first batch the model's own loss is "
            f"{own:.6f}, the fused head's cross-entropy {fused:.6f}, the cross-entropy of its logits {logits:.6f}"
        )
        if trainer.args.cot_fused_lm_head:
            raise AlignmentMismatchError(
                f"{what}. cot_fused_lm_head=True was asked for: unset it (or set it to false) to train on the logits."
            )
        warnings.warn(
            f"{what}. Training builds the logits instead (more memory; set cot_fused_lm_head=False to skip this "
            "check's fused forward). Please report the model to hf-cot.",
            UserWarning,
            stacklevel=2,
        )
        trainer._use_logits_path()


def _mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100))


def _mismatch_message(model, own: float, ours: float, outputs, labels, shift: bool, fused: bool) -> str:
    head = head_for(model)
    name = type(base_model(model)).__name__
    hint = ""
    logits = _field(outputs, head.targets[0][0])
    if len(labels) == 1 and torch.is_tensor(logits) and logits.dim() >= 3 and labels[0].dim() >= 2:
        target = labels[0]
        with contextlib.suppress(RuntimeError, ValueError):  # the hint is a guess: shapes may not allow it
            if shift:
                other, what = _mean_ce(logits, target), "position t's logits against label t (no shift)"
            else:
                other = _mean_ce(logits[..., :-1, :], target[..., 1:])
                what = "position t's logits against label t + 1 (a causal LM's shift)"
            if abs(other - own) <= 1e-3 * max(1.0, abs(own)):
                hint = f" Its own loss matches {what}: {other:.6f}."
    path = "fused LM head" if fused else "logits"
    return (
        f"hf-cot does not score {name} as the model scores itself: on the first batch the model's own loss is "
        f"{own:.6f}, hf-cot's cross-entropy ({path}) is {ours:.6f} (scored as a {head.task} head: shift={head.shift}, "
        f"targets {[label for _, label in head.targets]}; the token mean over two rows with different numbers of "
        f"labels).{hint} Training would optimize another objective, so COT refuses. Declare the head with "
        "hf_cot.register_head(ModelClass, 'causal-lm' | 'masked-lm' | ...), or use cot_mode='off'. Models whose "
        "own loss adds terms of its own (label smoothing, auxiliary losses) or averages per row cannot be scored by "
        "COT."
    )
