"""What a COT trainer logs: the complement values of each step and ``eval_complement_entropy``, in the shapes the HF
trainers log their own numbers (`COTReportingMixin`, a part of `hf_cot.trainer.COTMixin`).

* Training: each micro-batch's values, normalized like the loss, are summed into the step's value on this process;
  at the end of the optimizer step the processes' values are averaged into the metrics store (TRL's shape:
  ``{"train": {key: [one value per step]}, "eval": {...}}``, the same store as TRL's `SFTTrainer._metrics` where the
  parent has one), which the next log line averages, as TRL's `log` does.
* Evaluation: per batch, per sample (complement-entropy sum, valid count), gathered over processes with
  `gather_for_metrics`, into ``{prefix}_complement_entropy`` (unless `compute_metrics` gives that key itself).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
from transformers.trainer_utils import default_compute_objective

from .modeling import aligned_targets, batch_labels
from .objective import eval_entropy_sums


def objective_without(added_keys: set, metrics: dict) -> float:
    """The plain Trainer's default search objective (`default_compute_objective`: ``eval_loss`` without metrics,
    else the sum of the metrics) over the metrics the plain Trainer would have: without the keys COT added."""
    return default_compute_objective({k: v for k, v in metrics.items() if k not in added_keys})


class COTReportingMixin:
    """The logging half of `COTMixin` (needs ``cot_mode``, ``_metrics``, ``model``, ``accelerator``)."""

    # Whether the parent's own `log` averages `self._metrics` into its log lines (TRL's trainers do).
    _parent_logs_metrics = False

    def _init_reporting(self) -> None:
        if not isinstance(getattr(self, "_metrics", None), dict):
            self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        # The current optimizer step's values, normalized like the loss (window count / processes) and summed over
        # its micro-batches: the step's mean on this process.
        self._cot_step_sums: dict[str, torch.Tensor] = {}
        # Evaluation: this batch's per-sample (complement-entropy sums, valid counts), and the running totals.
        self._cot_eval_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cot_eval_sums: list | None = None
        self._cot_eval_counts: list | None = None
        self._cot_eval_wants_logits = False
        self._cot_added_eval_keys: set[str] = set()  # what `evaluate()` reports that the plain Trainer would not

    # ------------------------------------------------------------------ training values

    def _record(self, key: str, value: torch.Tensor) -> None:
        """Add a micro-batch's value, normalized like the loss, to the current step's sum."""
        total = self._cot_step_sums.get(key)
        self._cot_step_sums[key] = value.float() if total is None else total + value.float()

    def _flush_step_metrics(self) -> None:
        """The step's global mean (averaged over processes: each holds its share) into the store, one entry a key."""
        if not self._cot_step_sums:
            return
        keys = sorted(self._cot_step_sums)
        values = torch.stack([self._cot_step_sums[k] for k in keys])
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        for key, value in zip(keys, values.tolist(), strict=True):
            self._metrics["train"][key].append(value)
        self._cot_step_sums = {}

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self.cot_mode == "off":
            return super().log(logs, *args, **kwargs)
        # In place, as the parent's log adds `epoch` to the caller's dict (evaluate() returns that dict).
        if self.cot_mode == "alternating" and "loss" in logs:
            logs["complement_skipped_steps"] = self.complement_skipped_steps
        mode = "train" if self.model.training else "eval"
        if self._parent_logs_metrics or (mode == "train" and "loss" not in logs):  # the end-of-training summary line
            return super().log(logs, *args, **kwargs)
        # as TRL's log: the mean of the entries since the last line, prefixed in evaluation
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        logs.update({f"eval_{k}": v for k, v in metrics.items()} if mode == "eval" else metrics)
        super().log(logs, *args, **kwargs)
        self._metrics[mode].clear()

    # ------------------------------------------------------------------ evaluation: eval_complement_entropy

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self.cot_mode == "off":
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        self._cot_eval_batch = None
        self._cot_eval_wants_logits = not prediction_loss_only  # else the fused head can serve the loss
        # Seq2SeqTrainer with predict_with_generate computes its loss with its own forward (labels passed), not
        # through compute_loss: read that forward's logits instead of running another one.
        capture = (
            self._capture_loss_pass(model)
            if getattr(self.args, "predict_with_generate", False) and not prediction_loss_only
            else contextlib.nullcontext()
        )
        with capture:
            result = super().prediction_step(
                model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
            )
        if self._cot_eval_batch is not None and self._cot_eval_sums is not None:
            # gather_for_metrics drops the samples that pad the last batch across processes (as the loop does).
            sums, counts = (self.accelerator.gather_for_metrics(t) for t in self._cot_eval_batch)
            self._cot_eval_sums.append(sums.double().sum().cpu())
            self._cot_eval_counts.append(counts.sum().cpu())
        self._cot_eval_batch = None
        return result

    @contextlib.contextmanager
    def _capture_loss_pass(self, model):
        def hook(module, args, kwargs, output):
            if kwargs.get("labels") is None:  # generate()'s forwards carry no labels
                return
            labels, shift = batch_labels(self.model, kwargs, self._label_names)
            pairs = aligned_targets(self.model, output, labels, shift)
            self._cot_eval_batch = eval_entropy_sums([(logits.detach(), labels) for logits, labels in pairs])

        handle = self.accelerator.unwrap_model(model).register_forward_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        if self.cot_mode == "off":
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        self._cot_eval_sums, self._cot_eval_counts = [], []
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            count = int(torch.stack(self._cot_eval_counts).sum()) if self._cot_eval_counts else 0
            key = f"{metric_key_prefix}_complement_entropy"
            if count > 0 and output.metrics is not None and key not in output.metrics:  # compute_metrics' value wins
                output.metrics[key] = float(torch.stack(self._cot_eval_sums).sum() / count)
                self._cot_added_eval_keys.add(key)
        finally:
            self._cot_eval_sums = self._cot_eval_counts = None
        return output
