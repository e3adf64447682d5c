"""`COTTrainer` and `COTSeq2SeqTrainer`: drop-in subclasses of the HF trainers that add Complement Objective Training.

Design (see README "How it works" for the long version):

* The primary step is the parent's own optimizer step, untouched (clipping, scheduler, callbacks); only its loss is
  computed here, from the logits, normalized by the number of valid labels in the whole gradient-accumulation window
  across all processes. That makes gradient accumulation and DDP exact (the parent's loss is not: transformers 5.x
  treats a `**kwargs` model's loss as already scaled and multiplies it by the number of processes).
* `cot_mode="alternating"`: a trainer-bound `on_optimizer_step` callback runs the complement step right after the
  primary `optimizer.step()`, with the updated weights, on the micro-batches of the same window (stashed by
  `get_batch_samples`), with a separate optimizer (same class and hyper-parameters, built from the primary's
  parameter groups) and its own scheduler (same type and length). It is *not* `accelerator.prepare`d: that would make
  `clip_grad_norm_` unscale the shared fp16 gradients twice and make its scheduler step once per process.
* `cot_mode="joint"` / `"guided"`: one loss, one update; works wherever a custom `compute_loss` works.
* `cot_mode="off"`: every override defers to the parent.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import warnings

import torch
import torch.nn.functional as F
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback
from transformers.optimization import get_scheduler

from .config import COTArgumentsMixin
from .losses import check_label_range, complement_entropy, complement_normalizer, complement_terms, guided_rows

logger = logging.getLogger(__name__)

COMPLEMENT_OPTIMIZER_NAME = "complement_optimizer.pt"
COMPLEMENT_SCHEDULER_NAME = "complement_scheduler.pt"
COMPLEMENT_STATE_NAME = "complement_state.json"

_CITATION = """\
@inproceedings{chen2019complement,
    title     = {{Complement Objective Training}},
    author    = {Hao-Yun Chen and Pei-Hsin Wang and Chun-Hao Liu and Shih-Chieh Chang and Jia-Yu Pan and
                 Yu-Ting Chen and Wei Wei and Da-Cheng Juan},
    booktitle = {International Conference on Learning Representations},
    year      = {2019},
    url       = {https://openreview.net/forum?id=HyM7AiA5YX}
}"""

# Heads whose classes are the vocabulary (K = vocab size, `num_labels` is meaningless there).
_LM_HEAD_SUFFIXES = ("ForCausalLM", "ForMaskedLM", "ForConditionalGeneration", "LMHeadModel", "EncoderDecoderModel")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _shifts_labels(model) -> bool:
    """Causal LM heads predict position t + 1 at position t (their own loss shifts; so must ours)."""
    base = _base_model(model)
    config = getattr(base, "config", None)
    return not getattr(config, "is_encoder_decoder", False) and type(base).__name__.endswith(_CAUSAL_SUFFIXES)


def _single_label_name(label_names) -> str:
    names = label_names or ["labels"]
    if len(names) != 1:
        raise ValueError(f"COT needs exactly one label tensor per batch, got label_names={names}")
    return names[0]


def _aligned_logits(outputs, labels: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
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


def per_sample_complement_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the complement entropy summed over its valid positions, and how many there are.

    One value per sample (not per batch) so that `gather_for_metrics` can drop the samples that pad the last batch.
    """
    per_position = complement_entropy(logits, labels, reduction="none")
    dims = tuple(range(1, labels.dim()))
    if not dims:
        return per_position.float(), (labels != -100).long()
    return per_position.float().sum(dim=dims), (labels != -100).sum(dim=dims)


class _ComplementStepCallback(TrainerCallback):
    """Runs the alternating complement update after each primary `optimizer.step()` (paper order).

    A callback rather than an override of `training_step`: at `on_optimizer_step` the whole accumulation window is
    done, `sync_gradients` is True, we are outside `no_sync`, and the scheduler step and `zero_grad` have not run yet.
    """

    def __init__(self, trainer: COTMixin):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._complement_update()


class COTMixin:
    """Adds COT to a `transformers.Trainer` subclass. Use `COTTrainer` or `COTSeq2SeqTrainer`."""

    _tag_names = ["hf-cot", "complement-objective-training"]
    _paper = {
        "title": "Complement Objective Training",
        "id": "1903.01182",
        "citation": _CITATION,
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, COTArgumentsMixin):
            raise TypeError(
                f"{type(self).__name__} needs COTTrainingArguments (or COTSeq2SeqTrainingArguments), got "
                f"{type(self.args).__name__}: swap the arguments class, the COT fields live there"
            )
        self.cot_mode = self.args.cot_mode
        self._complement_optimizer = None
        self._complement_scheduler = None
        self._cot_window: list = []
        self._cot_window_count: torch.Tensor | None = None
        self._cot_in_training_step = False
        self._cot_sums: dict[str, torch.Tensor] = {}
        # Evaluation: per-batch (complement-entropy sums, valid counts) per sample, and their running totals.
        self._cot_eval_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cot_eval_sums: list | None = None
        self._cot_eval_counts: list | None = None
        self._cot_log_steps = 0
        self.complement_skipped_steps = 0
        self.complement_steps = 0
        self._warned_empty_window = False
        if self.cot_mode == "off":
            return
        if self.compute_loss_func is not None:
            raise ValueError(
                f"compute_loss_func cannot be combined with cot_mode={self.cot_mode!r}: COT computes the loss itself "
                "(cross-entropy plus the complement objective); use cot_mode='off' to keep your own loss"
            )
        self._check_backend()
        self._check_model_head()
        if self.args.label_smoothing_factor > 0:
            warnings.warn(
                "label_smoothing_factor > 0 also flattens the wrong classes, which is what COT's complement objective "
                "does; combining them double-counts that effect. Set --label_smoothing_factor 0 unless you mean it.",
                UserWarning,
                stacklevel=2,
            )
        self._set_loss_is_scaled_for_ga()
        if self.cot_mode == "alternating":
            # Added last so that gradient monitors registered before see the CE gradients.
            self.add_callback(_ComplementStepCallback(self))
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------ checks

    def _check_backend(self) -> None:
        if self.cot_mode != "alternating":
            return
        for enabled, name in ((self.is_deepspeed_enabled, "DeepSpeed"), (self.is_fsdp_enabled, "FSDP")):
            if enabled:
                raise NotImplementedError(
                    f"cot_mode='alternating' is not supported under {name}: its second optimizer would need the "
                    f"sharded gradients and {name}'s own step. Use cot_mode='joint' or cot_mode='guided', which are a "
                    "single loss and run anywhere a custom compute_loss runs."
                )

    def _is_lm_head(self) -> bool:
        base = _base_model(self.model)
        config = getattr(base, "config", None)
        return bool(getattr(config, "is_encoder_decoder", False)) or type(base).__name__.endswith(_LM_HEAD_SUFFIXES)

    def _shifts_labels(self) -> bool:
        return _shifts_labels(self.model)

    def _check_model_head(self) -> None:
        config = getattr(_base_model(self.model), "config", None)
        if config is None or self._is_lm_head():
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
            if self.cot_mode == "guided":
                raise ValueError(
                    "cot_mode='guided' cannot train a binary classifier: with K = 2 the complement has a single "
                    "class, its entropy is always 0, so the GCE loss is identically 0. Use cot_mode='off'."
                )
            warnings.warn(
                "COT does nothing on binary classification (num_labels == 2): the complement has a single class, "
                "so its entropy is always 0 and the complement step has a zero gradient. Use cot_mode='off' "
                "(or a task with K >= 3 classes).",
                UserWarning,
                stacklevel=3,
            )

    def _set_loss_is_scaled_for_ga(self) -> None:
        # Our loss is already normalized by the valid labels of the whole window (see compute_loss).
        if hasattr(Trainer, "loss_is_scaled_for_ga"):
            self.loss_is_scaled_for_ga = True
        else:  # transformers < 5.19: what TRL does to get the same effect
            self.model_accepts_loss_kwargs = False
            self.compute_loss_func = _already_scaled_sentinel

    # ------------------------------------------------------------------ inputs, logits, counts

    @property
    def _label_name(self) -> str:
        return _single_label_name(getattr(self, "label_names", None))

    def _split_labels(self, inputs: dict) -> tuple[torch.Tensor, dict]:
        name = self._label_name
        if name not in inputs:
            raise ValueError(
                f"COT needs labels: the batch has no {name!r} key (got {sorted(inputs)}). Check the data collator "
                "and remove_unused_columns."
            )
        labels = inputs[name]
        model_inputs = {k: v for k, v in inputs.items() if k != name}
        # Models that build decoder inputs from labels must get them explicitly, since labels are not passed: the
        # same decoder inputs then serve the CE and the complement forward.
        base = _base_model(self.model)
        if getattr(getattr(base, "config", None), "is_encoder_decoder", False) and not (
            "decoder_input_ids" in model_inputs or "decoder_inputs_embeds" in model_inputs
        ):
            if not hasattr(base, "prepare_decoder_input_ids_from_labels"):
                raise ValueError(
                    f"{type(base).__name__} cannot build decoder_input_ids from labels; pass them in the batch "
                    "(DataCollatorForSeq2Seq(tokenizer, model=model) does)"
                )
            model_inputs["decoder_input_ids"] = base.prepare_decoder_input_ids_from_labels(labels=labels)
        return labels, model_inputs

    def _logits_and_labels(self, outputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _aligned_logits(outputs, labels, self._shifts_labels())

    def _forward(self, model, inputs: dict):
        """One forward without labels; returns ``(outputs, logits, labels)`` aligned position by position."""
        labels, model_inputs = self._split_labels(inputs)
        outputs = model(**model_inputs)
        logits, labels = self._logits_and_labels(outputs, labels)
        return outputs, logits, labels

    def _count_valid(self, batch: dict) -> torch.Tensor:
        labels = batch[self._label_name]
        if self._shifts_labels():
            labels = labels[..., 1:]
        return (labels != -100).sum().to(self.args.device)

    def _loss_denominator(self, labels: torch.Tensor) -> torch.Tensor:
        """Valid labels the summed loss is divided by.

        In training: all valid labels of the accumulation window on all processes, divided by the number of processes
        (DDP averages gradients over processes), so that GA and DDP give exactly the gradient of the global mean.
        In evaluation: the batch's own count.
        """
        if self._cot_in_training_step and self._cot_window_count is not None:
            return self._window_denominator()
        return (labels != -100).sum().clamp(min=1)

    def _window_denominator(self) -> torch.Tensor:
        return self._cot_window_count.clamp(min=1) / self.accelerator.num_processes

    # ------------------------------------------------------------------ trainer overrides

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.cot_mode != "off" and batch_samples:
            count = torch.stack([self._count_valid(b) for b in batch_samples]).sum()
            if self.accelerator.num_processes > 1:
                count = self.accelerator.gather(count.reshape(1)).sum()
            self._cot_window, self._cot_window_count = batch_samples, count
            if self.cot_mode in ("joint", "guided"):
                self._cot_log_steps += 1
        return batch_samples, num_items_in_batch

    def training_step(self, *args, **kwargs):
        self._cot_in_training_step = True
        try:
            return super().training_step(*args, **kwargs)
        finally:
            self._cot_in_training_step = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss to backpropagate, whose *value* is always the plain cross-entropy.

        Training differentiates the mode's objective (CE; CE + weight * complement objective; GCE), but the returned
        value - what the Trainer logs as ``loss``/``eval_loss``, what ``metric_for_best_model="loss"``, early stopping
        and the model card see - is the token/label-averaged cross-entropy, the number a plain ``Trainer`` reports
        for the same weights and batch. The complement part is logged next to it (``complement_loss``,
        ``complement_entropy``, ``eval_complement_entropy``).
        """
        if self.cot_mode == "off":
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        outputs, logits, labels = self._forward(model, inputs)
        denominator = self._loss_denominator(labels)
        num_classes = logits.shape[-1]
        flat_logits, flat_labels = logits.reshape(-1, num_classes), labels.reshape(-1)
        if not self._cot_in_training_step:  # evaluation / prediction: CE, and the complement entropy to report
            check_label_range(flat_labels, num_classes)
            self._cot_eval_batch = per_sample_complement_entropy(logits, labels)
            loss = self._cross_entropy_sum(flat_logits, flat_labels) / denominator
            return (loss, outputs) if return_outputs else loss
        if self.cot_mode == "guided":
            entropy, log_pg, valid = complement_terms(flat_logits, flat_labels)
            objective_sum = guided_rows(entropy, log_pg, valid, num_classes, self.args.guided_alpha).sum()
            if self.args.label_smoothing_factor > 0:
                ce_sum = self._cross_entropy_sum(flat_logits.detach(), flat_labels)
            else:  # -log p_g from the same pass: no second softmax over the classes
                ce_sum = -log_pg.detach().masked_fill(~valid, 0.0).sum()
            self._record_training("complement_entropy", entropy.detach().sum() / denominator)
            self._record_training("complement_loss", objective_sum.detach() / denominator)
        else:
            check_label_range(flat_labels, num_classes)
            ce_sum = objective_sum = self._cross_entropy_sum(flat_logits, flat_labels)
            if self.cot_mode == "joint":
                entropy_sum = complement_entropy(flat_logits, flat_labels, reduction="sum")
                scale = complement_normalizer(num_classes, self.args.complement_normalization)
                objective_sum = ce_sum - self.args.complement_weight * entropy_sum / scale
                self._record_training("complement_entropy", entropy_sum.detach() / denominator)
                self._record_training("complement_loss", -entropy_sum.detach() / scale / denominator)
        loss = objective_sum / denominator
        if objective_sum is not ce_sum:
            # Value of the CE, gradient of the objective: adding a detached constant leaves the backward unchanged
            # (bit for bit), and a NaN objective still shows as a NaN loss.
            loss = loss + (ce_sum.detach() / denominator - loss.detach())
        return (loss, outputs) if return_outputs else loss

    def _cross_entropy_sum(self, flat_logits: torch.Tensor, flat_labels: torch.Tensor) -> torch.Tensor:
        # label_smoothing as the Trainer's LabelSmoother applies it ((1 - eps) NLL + eps * mean over classes).
        return F.cross_entropy(
            flat_logits.float(),
            flat_labels,
            ignore_index=-100,
            reduction="sum",
            label_smoothing=self.args.label_smoothing_factor,
        )

    # ------------------------------------------------------------------ evaluation: eval_complement_entropy

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self.cot_mode == "off":
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        self._cot_eval_batch = None
        # Seq2SeqTrainer with predict_with_generate computes its loss with its own forward (labels passed), not
        # through compute_loss: read that forward's logits instead of running another one.
        capture = (
            self._capture_loss_pass(model)
            if getattr(self.args, "predict_with_generate", False) and not prediction_loss_only
            else contextlib.nullcontext()
        )
        with capture:
            result = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        if self._cot_eval_batch is not None and self._cot_eval_sums is not None:
            # gather_for_metrics drops the samples that pad the last batch across processes (as the loop does).
            sums, counts = (self.accelerator.gather_for_metrics(t) for t in self._cot_eval_batch)
            self._cot_eval_sums.append(sums.double().sum().cpu())
            self._cot_eval_counts.append(counts.sum().cpu())
        self._cot_eval_batch = None
        return result

    @contextlib.contextmanager
    def _capture_loss_pass(self, model):
        label_name, shift = self._label_name, self._shifts_labels()

        def hook(module, args, kwargs, output):
            if kwargs.get(label_name) is None:  # generate()'s forwards carry no labels
                return
            logits, labels = _aligned_logits(output, kwargs[label_name], shift)
            self._cot_eval_batch = per_sample_complement_entropy(logits.detach(), labels)

        handle = self.accelerator.unwrap_model(model).register_forward_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        if self.cot_mode == "off":
            return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        self._cot_eval_sums, self._cot_eval_counts = [], []
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
            count = int(torch.stack(self._cot_eval_counts).sum()) if self._cot_eval_counts else 0
            key = f"{metric_key_prefix}_complement_entropy"
            if count > 0 and output.metrics is not None and key not in output.metrics:  # a compute_metrics value wins
                output.metrics[key] = float(torch.stack(self._cot_eval_sums).sum() / count)
        finally:
            self._cot_eval_sums = self._cot_eval_counts = None
        return output

    # ------------------------------------------------------------------ the complement step (alternating)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps=num_training_steps, optimizer=optimizer)
        if self.cot_mode == "alternating":
            self._create_complement_optimizer_and_scheduler(num_training_steps)
        return scheduler

    def _create_complement_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        primary = getattr(self.optimizer, "optimizer", self.optimizer)  # unwrap AcceleratedOptimizer
        base_lr = self.args.learning_rate
        ratio = self.args.effective_complement_learning_rate / base_lr if base_lr > 0 else 0.0
        groups = []
        for group in primary.param_groups:
            # Same hyper-parameters group by group (weight decay on/off, per-group lr), only trainable params.
            new_group = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
            new_group["params"] = [p for p in group["params"] if p.requires_grad]
            new_group["lr"] = group.get("initial_lr", group["lr"]) * ratio
            groups.append(new_group)
        # Constructor keywords only: `defaults` may hold derived entries (AdamW's decoupled_weight_decay).
        accepted = inspect.signature(type(primary).__init__).parameters
        kwargs = {k: v for k, v in primary.defaults.items() if k in accepted and k not in ("params", "lr")}
        try:
            optimizer = type(primary)(groups, **kwargs)
        except TypeError as err:
            raise TypeError(
                f"cannot build the complement optimizer as a copy of {type(primary).__name__}: {err}. Use a standard "
                "torch optimizer (e.g. --optim adamw_torch) or cot_mode='joint'/'guided'."
            ) from err
        self._complement_optimizer = optimizer
        self._complement_scheduler = get_scheduler(
            self.args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
            num_training_steps=num_training_steps,
            scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
        )

    def _complement_update(self) -> None:
        optimizer, scheduler = self._complement_optimizer, self._complement_scheduler
        if optimizer is None:
            raise RuntimeError("the complement optimizer was not created; was create_scheduler overridden?")
        step_number = self.state.global_step + 1
        if step_number % self.args.complement_every != 0:
            self._step_complement_scheduler(scheduler)
            return
        model = self.model_wrapped
        count = self._cot_window_count
        if count is None or int(count) == 0:
            if not self._warned_empty_window:
                logger.warning(
                    "Every label of optimizer step %d is -100: the CE and complement losses are 0 and the complement "
                    "step is skipped (a zero-gradient step would still move AdamW weights).",
                    step_number,
                )
                self._warned_empty_window = True
            self.complement_skipped_steps += 1
            return
        denominator = self._window_denominator()
        model.zero_grad(set_to_none=True)  # the CE gradients must not leak into the complement step
        entropy_sum = torch.zeros((), device=self.args.device)
        scale = None
        window = self._cot_window
        for i, inputs in enumerate(window):
            inputs = self._prepare_inputs(inputs)
            # One gradient all-reduce per step: every micro-batch but the last accumulates locally.
            sync = contextlib.nullcontext() if i == len(window) - 1 else self.accelerator.no_sync(model)
            with sync:
                with self.compute_loss_context_manager():
                    outputs, logits, labels = self._forward(model, inputs)
                    batch_entropy = complement_entropy(logits, labels, reduction="sum")
                    scale = complement_normalizer(logits.shape[-1], self.args.complement_normalization)
                    loss = -batch_entropy / scale / denominator
                self.accelerator.backward(loss)
            entropy_sum += batch_entropy.detach()
            del outputs, logits, loss

        params = [p for group in optimizer.param_groups for p in group["params"]]
        scaler = self.accelerator.scaler
        if scaler is not None:
            # Only this optimizer is unscaled: `accelerator.clip_grad_norm_` would also unscale the primary one,
            # whose GradScaler state was reset by its `update()`, dividing the shared gradients twice.
            scaler.unscale_(optimizer)
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm and self.args.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        finite = bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(entropy_sum))
        if scaler is not None:
            scaler.step(optimizer)  # skips by itself when unscale_ found inf/nan
            scaler.update()
        elif finite:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        if not finite:
            if scaler is not None:  # routine while the fp16 GradScaler searches its scale
                logger.info("fp16 overflow in the complement step at step %d: skipped, scale lowered.", step_number)
            else:
                logger.warning("Non-finite complement loss or gradient at step %d: complement step skipped.", step_number)
            # A skipped step does not advance its schedule, as the Trainer does for an fp16 overflow.
            self.complement_skipped_steps += 1
            return
        self.complement_steps += 1
        self._step_complement_scheduler(scheduler)
        # Divided by count / num_processes like the loss, so it is num_processes x this process's share of the global
        # mean; `log` averages over processes (as the Trainer does for its loss), which gives the global mean.
        mean_entropy = entropy_sum / denominator
        self._record("complement_entropy", mean_entropy)
        self._record("complement_loss", -mean_entropy / scale)
        self._cot_log_steps += 1

    def _step_complement_scheduler(self, scheduler) -> None:
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return
        with warnings.catch_warnings():
            # With complement_every > 1 the schedule advances before the optimizer's first step, on purpose.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            scheduler.step()

    # ------------------------------------------------------------------ logging

    def _record(self, key: str, value: torch.Tensor) -> None:
        """Accumulate a per-step value normalized like the loss (by the global count / num_processes); `log` averages
        over processes and steps, which gives the global per-step mean."""
        total = self._cot_sums.get(key)
        self._cot_sums[key] = value.float() if total is None else total + value.float()

    def _record_training(self, key: str, value: torch.Tensor) -> None:
        if self._cot_in_training_step:  # evaluation batches also go through compute_loss
            self._record(key, value)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self.cot_mode != "off" and "loss" in logs:
            if self._cot_sums and self._cot_log_steps > 0:
                keys = sorted(self._cot_sums)
                values = torch.stack([self._cot_sums[k] for k in keys])
                if self.accelerator.num_processes > 1:
                    values = self.accelerator.reduce(values, reduction="mean")
                for key, value in zip(keys, (values / self._cot_log_steps).tolist()):
                    logs[key] = value
            if self.cot_mode == "alternating":
                logs["complement_skipped_steps"] = self.complement_skipped_steps
            self._cot_sums, self._cot_log_steps = {}, 0
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ checkpoints

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self._complement_optimizer is None or not self.args.should_save:
            return
        torch.save(self._complement_optimizer.state_dict(), os.path.join(output_dir, COMPLEMENT_OPTIMIZER_NAME))
        torch.save(self._complement_scheduler.state_dict(), os.path.join(output_dir, COMPLEMENT_SCHEDULER_NAME))
        with open(os.path.join(output_dir, COMPLEMENT_STATE_NAME), "w") as f:
            json.dump({"complement_steps": self.complement_steps, "complement_skipped_steps": self.complement_skipped_steps}, f)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self._complement_optimizer is None:
            return
        optimizer_file = os.path.join(checkpoint, COMPLEMENT_OPTIMIZER_NAME)
        if not os.path.isfile(optimizer_file):
            warnings.warn(
                f"{checkpoint} has no {COMPLEMENT_OPTIMIZER_NAME}: the complement optimizer and scheduler start fresh, "
                "so training will not match an uninterrupted COT run",
                UserWarning,
                stacklevel=2,
            )
            return
        # An indexed CPU device ("cpu:1" under MULTI_CPU/gloo) cannot be a map_location; the optimizer moves its state
        # to each parameter's device itself.
        device = self.args.device
        map_location = "cpu" if device.type == "cpu" else device
        self._complement_optimizer.load_state_dict(torch.load(optimizer_file, map_location=map_location, weights_only=True))
        self._complement_scheduler.load_state_dict(
            torch.load(os.path.join(checkpoint, COMPLEMENT_SCHEDULER_NAME), weights_only=True)
        )
        state_file = os.path.join(checkpoint, COMPLEMENT_STATE_NAME)
        if os.path.isfile(state_file):
            with open(state_file) as f:
                state = json.load(f)
            self.complement_steps = state["complement_steps"]
            self.complement_skipped_steps = state["complement_skipped_steps"]

    # ------------------------------------------------------------------ model card

    def create_model_card(self, *args, tags=None, **kwargs):
        if self.cot_mode != "off":
            tags = [tags] if isinstance(tags, str) else list(tags or [])
            tags += [t for t in self._tag_names if t not in tags]
        super().create_model_card(*args, tags=tags, **kwargs)
        if self.cot_mode == "off" or not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as f:
            card = f.read()
        if "chen2019complement" in card:
            return
        section = (
            f"\n## Complement Objective Training\n\nTrained with [hf-cot](https://pypi.org/project/hf-cot/) "
            f"(`cot_mode={self.cot_mode!r}`), which implements [Complement Objective Training]"
            f"(https://arxiv.org/abs/{self._paper['id']}) (Chen et al., ICLR 2019). The losses reported above are "
            f"the plain cross-entropy, comparable with a run of the plain Trainer. Cite the method as:\n\n"
            f"```bibtex\n{_CITATION}\n```\n"
        )
        with open(path, "w", encoding="utf-8") as f:
            f.write(card.rstrip("\n") + "\n" + section)


def _already_scaled_sentinel(*args, **kwargs):  # pragma: no cover - only a marker for transformers < 5.19
    raise RuntimeError("hf-cot computes the loss in compute_loss; this sentinel only marks it as GA-scaled")


class COTTrainer(COTMixin, Trainer):
    """`transformers.Trainer` with Complement Objective Training. Needs `COTTrainingArguments`."""


class COTSeq2SeqTrainer(COTMixin, Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` with Complement Objective Training. Needs `COTSeq2SeqTrainingArguments`."""
