"""`COTTrainer` and `COTSeq2SeqTrainer`: drop-in subclasses of the HF trainers that add Complement Objective Training.

`COTMixin` holds only the Trainer overrides, each delegating to its module: `heads` / `modeling` (how a model is
scored), `alignment_check` (the first batch against the model's own loss), `objective` (every mode's loss),
`fused_lm_head` (causal LMs without logits), `complement_step` / `complement_optimizer` (the alternating mode's second
optimizer), `config` (the arguments), `model_card`. Design (docs/how-it-works.md has the long version):

* The loss is normalized by the valid labels of the whole gradient-accumulation window across all processes (GA and
  DDP exact). Its *value* is the plain cross-entropy, so `loss`/`eval_loss` mean what they mean in the plain Trainer;
  its gradient is the mode's objective.
* `alternating`: an `on_optimizer_step` callback runs the complement step right after the primary
  `optimizer.step()`, on the micro-batches of the same window (stashed by `get_batch_samples`).
* `joint` / `guided`: one loss, one update. `off`: every override defers to the parent.

To add COT to another `Trainer` subclass (TRL's, say): ``class X(COTMixin, ThatTrainer)`` with an arguments class
that mixes in `COTArgumentsMixin`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections import defaultdict

import torch
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback

from .alignment_check import FirstBatchCheck
from .complement_optimizer import check_alternating_supported
from .complement_step import ComplementStep
from .config import (
    COTArgumentsMixin,
    COTSeq2SeqTrainingArguments,
    COTTrainingArguments,
    given_arguments,
    with_cot_arguments,
)
from .fused_lm_head import install_fused_lm_head, use_fused_lm_head
from .heads import head_for
from .model_card import PAPER, TAGS, add_cot_section, merge_tags
from .modeling import (
    aligned_targets,
    batch_labels,
    check_model_head,
    check_num_classes,
    count_valid,
    router_aux_loss_coef,
    split_labels,
)
from .objective import (
    ModeSums,
    checked_range,
    combine_targets,
    cross_entropy_sum,
    eval_entropy_sums,
    mode_objective,
    sums_from_logits,
    sums_from_terms,
)

# COT fields that shape the trainer at construction (a search trial may not change them).
STRUCTURAL_FIELDS = ("cot_mode", "cot_fused_lm_head")


class _TrainerEvent(TrainerCallback):
    """Calls a trainer method at one callback event (the method reads the trainer's state, not the callback's)."""

    def __init__(self, event: str, method):
        self.method = method
        setattr(self, event, self._call)  # shadows TrainerCallback's no-op for this event only

    def _call(self, args, state, control, **kwargs):
        self.method()


class _ComplementStepCallback(_TrainerEvent):
    """Runs the alternating complement update after each primary `optimizer.step()` (paper order). At
    `on_optimizer_step` the whole accumulation window is done, `sync_gradients` is True, we are outside `no_sync`,
    and the scheduler step and `zero_grad` have not run yet."""


class COTMixin:
    """Adds COT to a `transformers.Trainer` subclass. Use `COTTrainer` or `COTSeq2SeqTrainer`."""

    _tag_names = TAGS
    _paper = PAPER

    _args_class_name = "COTTrainingArguments (or COTSeq2SeqTrainingArguments)"
    _args_class: type | None = None  # what no `args` / a plain `TrainingArguments` become (the parent's defaults)
    # A training micro-batch's loss is normalized by the valid labels of the whole accumulation window on all
    # processes (the Trainer's num_items_in_batch, TRL's); False: by its own, divided by the window's micro-batches
    # (a host whose loss is the mean of micro-batch means: axolotl).
    _cot_window_mean = True

    def __init__(self, *args, **kwargs):
        args, kwargs = self._with_cot_arguments(args, kwargs)
        # Checked before the parent's __init__, which already changes the model (device placement, TRL's patches).
        self._check_arguments_class(self._given_arguments(args, kwargs))
        super().__init__(*args, **kwargs)
        self._check_arguments_class(self.args)  # None above: the parent built default arguments
        self.cot_mode = self.args.cot_mode
        self._complement: ComplementStep | None = None  # alternating only, built with the primary's scheduler
        self._cot_window: list = []
        self._cot_window_count: torch.Tensor | None = None
        self._cot_in_training_step = False
        # Logged values, in TRL's shape: {"train": {key: [one value per step]}, "eval": {...}}, averaged into the next
        # log line. The same store as TRL's own (`SFTTrainer._metrics`) when the parent has one.
        if not isinstance(getattr(self, "_metrics", None), dict):
            self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        # The current optimizer step's values, normalized like the loss (window count / processes) and summed over
        # its micro-batches: the step's mean on this process.
        self._cot_step_sums: dict[str, torch.Tensor] = {}
        # Evaluation: this batch's per-sample (complement-entropy sums, valid counts), and the running totals.
        self._cot_eval_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cot_eval_sums: list | None = None
        self._cot_eval_counts: list | None = None
        self._cot_fused = False  # causal LMs: terms from the hidden states, never the logits (cot_fused_lm_head)
        self._cot_eval_wants_logits = False
        self._cot_first_batch = FirstBatchCheck()  # hf-cot's CE against the model's own loss, once per model
        self._cot_num_classes: int | None = None  # K of the logits path (2: the complement is empty)
        if self.cot_mode == "off":
            return
        if self.compute_loss_func is not None:
            raise ValueError(
                f"compute_loss_func cannot be combined with cot_mode={self.cot_mode!r}: COT computes the loss itself "
                "(cross-entropy plus the complement objective); use cot_mode='off' to keep your own loss"
            )
        if self.cot_mode == "alternating":  # refused now, never in the middle of a run
            check_alternating_supported(
                deepspeed=self.is_deepspeed_enabled,
                fsdp_version=self._fsdp_version(),
                optimizer=self.optimizer,
                optimizer_cls_and_kwargs=getattr(self, "optimizer_cls_and_kwargs", None),
                optim=self.args.optim,
            )
        check_model_head(self.model, self.cot_mode)
        if self.args.label_smoothing_factor > 0:
            warnings.warn(
                "label_smoothing_factor > 0 also flattens the wrong classes, which is what COT's complement objective "
                "does; combining them double-counts that effect. Set --label_smoothing_factor 0 unless you mean it.",
                UserWarning,
                stacklevel=2,
            )
        self._set_loss_is_scaled_for_ga()
        self._cot_fused = use_fused_lm_head(
            self.model, self.args.cot_fused_lm_head, self.args.label_smoothing_factor, self._fsdp_version()
        )
        if self.cot_mode == "alternating":
            # Added last so that gradient monitors registered before see the CE gradients.
            self.add_callback(_ComplementStepCallback("on_optimizer_step", self._complement_update))
        # At the end of each optimizer step (before the Trainer logs): the step's values into the metrics store.
        self.add_callback(_TrainerEvent("on_step_end", self._flush_step_metrics))
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------ checks

    _given_arguments = staticmethod(given_arguments)

    def _with_cot_arguments(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self._args_class is None:
            return args, kwargs
        model = kwargs.get("model", args[0] if args else None)
        return with_cot_arguments(args, kwargs, self._args_class, self._default_output_dir(model))

    def _default_output_dir(self, model) -> str:
        return "tmp_trainer"  # transformers.Trainer's

    def _check_arguments_class(self, args) -> None:
        if args is not None and not isinstance(args, COTArgumentsMixin):
            raise TypeError(
                f"{type(self).__name__} needs {self._args_class_name}, got {type(args).__name__}: swap the arguments "
                "class, the COT fields live there"
            )
        if args is not None:
            args._validate_cot_fields()  # again: fields may have been changed since the arguments were built

    # ------------------------------------------------------------------ model_init and hyper-parameter search

    def call_model_init(self, trial=None):
        """A model built by ``model_init`` (for `train()`, or for a search trial) gets what the constructor's got: the
        head checks and, where the trainer uses it, the fused LM head."""
        model = super().call_model_init(trial)
        if getattr(self, "cot_mode", "off") != "off":  # unset while the parent's __init__ builds the first one
            check_model_head(model, self.cot_mode)
            if self._cot_fused:
                install_fused_lm_head(model)
        return model

    def _hp_search_setup(self, trial) -> None:
        """A trial's COT fields are followed (they are read from ``self.args`` where used), except the two that shape
        the trainer at construction: refused, with the way out."""
        fixed = {name: getattr(self.args, name) for name in STRUCTURAL_FIELDS}
        super()._hp_search_setup(trial)
        changed = [name for name, value in fixed.items() if getattr(self.args, name) != value]
        if changed:
            raise ValueError(
                f"a hyper-parameter search trial cannot change {', '.join(changed)}: they shape the trainer when it is "
                "built (callbacks, the fused LM head). Run one search per value instead; the other COT fields "
                "(complement_weight, guided_alpha, complement_learning_rate, ...) can be searched."
            )
        self.args._validate_cot_fields()

    def _fsdp_version(self) -> int | None:
        if not self.is_fsdp_enabled:
            return None
        return getattr(getattr(self.accelerator.state, "fsdp_plugin", None), "fsdp_version", 1)

    def _set_loss_is_scaled_for_ga(self) -> None:
        # Our loss is already normalized by the valid labels of the whole window (see compute_loss).
        if hasattr(Trainer, "loss_is_scaled_for_ga"):
            self.loss_is_scaled_for_ga = True
        else:  # transformers < 5.19: what TRL does to get the same effect
            self.model_accepts_loss_kwargs = False
            self.compute_loss_func = _already_scaled_sentinel

    # ------------------------------------------------------------------ inputs, logits, counts

    @property
    def _label_names(self):
        return getattr(self, "label_names", None)

    def _forward(self, model, inputs: dict):
        """One forward without labels; returns ``(outputs, [(logits, labels) per target])`` aligned position by
        position as the model's own loss aligns them (`hf_cot.heads`)."""
        labels, model_inputs, shift = split_labels(self.model, inputs, self._label_names)
        if router_aux_loss_coef(self.model):  # as TRL: VLM wrappers return aux_loss only when asked in the call
            model_inputs["output_router_logits"] = True
        outputs = model(**model_inputs)
        return outputs, aligned_targets(self.model, outputs, labels, shift)

    def _check_num_classes(self, num_classes: int) -> None:
        """K known only from the logits (multiple choice: the choices): the K = 2 warning / refusal, once."""
        if self._cot_num_classes is None and not head_for(self.model).num_labels_from_config:
            check_num_classes(num_classes, self.cot_mode, stacklevel=5)
        self._cot_num_classes = num_classes

    def _loss_denominator(self, num_valid: torch.Tensor) -> torch.Tensor:
        """Valid labels the summed loss is divided by, per target (``[targets]``).

        In training: all valid labels of the accumulation window on all processes, divided by the number of processes
        (DDP averages gradients over processes), so that GA and DDP give exactly the gradient of the global mean.
        In evaluation: the batch's own count (the plain Trainer's per-batch mean). A batch without a valid label has
        none, and its loss is NaN (0 / 0), as the model's own mean is: the Trainer then leaves it out of ``eval_loss``
        (``logging_nan_inf_filter``, transformers >= 5) instead of averaging in a 0.
        """
        if self._cot_in_training_step and self._cot_window_count is not None:
            if not self._cot_window_mean:  # the host's mean of micro-batch means
                return num_valid.clamp(min=1) * len(self._cot_window)
            return self._window_denominator()
        return num_valid if not self._cot_in_training_step else num_valid.clamp(min=1)

    def _window_denominator(self) -> torch.Tensor:
        """``average_tokens_across_devices`` (the default): the global count over the processes, so that DDP's mean of
        the gradients is the gradient of the global token mean. Off: each process's own count (the mean of the
        processes' means), as the plain Trainer does then."""
        if not self.args.average_tokens_across_devices:
            return self._cot_window_count.clamp(min=1)
        return self._cot_window_count.clamp(min=1) / self.accelerator.num_processes

    # ------------------------------------------------------------------ training: the loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.cot_mode != "off" and batch_samples:
            count = torch.stack(
                [count_valid(*batch_labels(self.model, b, self._label_names)) for b in batch_samples]
            ).sum(0)
            count = count.to(self.args.device)
            if self.accelerator.num_processes > 1 and self.args.average_tokens_across_devices:
                count = self.accelerator.gather(count.reshape(1, -1)).sum(0)
            self._cot_window, self._cot_window_count = batch_samples, count
        return batch_samples, num_items_in_batch

    def training_step(self, *args, **kwargs):
        self._cot_in_training_step = True
        try:
            return super().training_step(*args, **kwargs)
        finally:
            self._cot_in_training_step = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss to backpropagate, whose *value* is always the plain model loss.

        Training differentiates the mode's objective (CE; CE + weight * complement objective; GCE), but the returned
        value - what the Trainer logs as ``loss``/``eval_loss``, what ``metric_for_best_model="loss"``, early stopping
        and the model card see - is the token/label-averaged cross-entropy (plus a mixture-of-experts model's router
        load-balancing loss, which stays in the objective too), the number a plain ``Trainer`` reports for the same
        weights and batch. The complement part is logged next to it (``complement_loss``,
        ``complement_entropy``, ``eval_complement_entropy``).
        """
        if self.cot_mode == "off":
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        self._cot_first_batch.check(model, inputs, self)
        if self._cot_fused and (self._cot_in_training_step or not self._cot_eval_wants_logits):
            loss, outputs = self._fused_loss(model, inputs)
            loss = self._add_router_loss(loss, outputs)
            return (loss, outputs) if return_outputs else loss
        loss, outputs = self._logits_loss(model, inputs)
        loss = self._add_router_loss(loss, outputs)
        return (loss, outputs) if return_outputs else loss

    def _add_router_loss(self, loss: torch.Tensor, outputs) -> torch.Tensor:
        """What a mixture-of-experts model's own forward adds to its loss: ``router_aux_loss_coef x aux_loss``.

        It is part of the objective (gradient) and of the reported value, as in the plain Trainer. In training it is
        averaged over the micro-batches of the accumulation window (as TRL's SFTTrainer does; DDP averages it over
        processes): at gradient accumulation 1 this is exactly the model's loss.
        """
        coef = router_aux_loss_coef(self.model)
        aux = outputs.get("aux_loss") if isinstance(outputs, dict) else getattr(outputs, "aux_loss", None)
        if coef == 0 or aux is None:
            return loss
        steps = len(self._cot_window) if self._cot_in_training_step and self._cot_window else 1
        return loss + coef * aux.to(loss.device) / steps

    def _logits_loss(self, model, inputs: dict):
        """`compute_loss` from the logits: ``(loss, outputs)``."""
        outputs, pairs = self._forward(model, inputs)
        denominators = self._loss_denominator(torch.stack([(labels != -100).sum() for _, labels in pairs]))
        self._check_num_classes(pairs[0][0].shape[-1])
        flat = [(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)) for logits, labels in pairs]
        if not self._cot_in_training_step:  # evaluation / prediction: CE, and the complement entropy to report
            self._cot_eval_batch = eval_entropy_sums(pairs)
            ce = [
                cross_entropy_sum(*checked_range(logits, labels), self.args.label_smoothing_factor) / denominator
                for (logits, labels), denominator in zip(flat, denominators, strict=True)
            ]
            return (ce[0] if len(ce) == 1 else torch.stack(ce).mean()), outputs
        sums = [
            sums_from_logits(
                self.cot_mode,
                logits,
                labels,
                label_smoothing=self.args.label_smoothing_factor,
                guided_alpha=self.args.guided_alpha,
            )
            for logits, labels in flat
        ]
        return self._training_loss(*combine_targets(sums, denominators)), outputs

    def _training_loss(self, sums: ModeSums, denominator: torch.Tensor) -> torch.Tensor:
        """The mode's loss (`hf_cot.objective.mode_objective`); its logged values go to the training metrics."""
        loss, logs = mode_objective(
            self.cot_mode,
            sums,
            denominator,
            complement_weight=self.args.complement_weight,
            normalization=self.args.complement_normalization,
        )
        for key, value in logs.items():
            self._record_training(key, value)
        return loss

    def _fused_forward(self, model, inputs: dict):
        (labels,), model_inputs, shift = split_labels(self.model, inputs, self._label_names)
        kwargs = {"labels": labels} if shift else {"shift_labels": labels}
        return model(**model_inputs, **kwargs, cot_fused_lm_head=True)

    def _fused_loss(self, model, inputs: dict):
        """`compute_loss` for the fused LM head: the same objective from per-token ``H`` and ``log p_g``."""
        outputs = self._fused_forward(model, inputs)
        entropy, log_pg, valid = outputs.complement_entropy, outputs.log_probs, outputs.valid
        denominator = self._loss_denominator(valid.sum().reshape(1))[0]
        if not self._cot_in_training_step:
            self._cot_eval_batch = (entropy.detach().sum(1), valid.sum(1))
            return -log_pg.sum().detach() / denominator, outputs
        sums = sums_from_terms(
            self.cot_mode, entropy, log_pg, valid, outputs.vocab_size, guided_alpha=self.args.guided_alpha
        )
        return self._training_loss(sums, denominator), outputs

    # ------------------------------------------------------------------ training: the complement step (alternating)

    # True while `create_scheduler` runs for the complement optimizer (`_complement_scheduler`).
    _cot_scheduling_complement = False

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps=num_training_steps, optimizer=optimizer)
        if self.cot_mode == "alternating" and not self._cot_scheduling_complement:
            # Rebuilt whenever the Trainer builds its scheduler (a new optimizer with model_init, HP search, or
            # auto_find_batch_size's restarts).
            self._complement = self._new_complement_step(num_training_steps)
        return scheduler

    def _new_complement_step(self, num_training_steps: int) -> ComplementStep:
        return ComplementStep(
            self.optimizer,
            self.args,
            num_training_steps,
            make_scheduler=functools.partial(self._complement_scheduler, num_training_steps=num_training_steps),
        )

    def _complement_scheduler(self, optimizer, num_training_steps: int):
        """The trainer's own `create_scheduler` (the outermost class's, so a subclass's schedule - axolotl's
        min-lr cosine, say - included) run for the complement optimizer, leaving ``self.lr_scheduler`` as it was."""
        primary, self.lr_scheduler = self.lr_scheduler, None
        self._cot_scheduling_complement = True
        try:
            return self.create_scheduler(num_training_steps, optimizer=optimizer)
        finally:
            self.lr_scheduler, self._cot_scheduling_complement = primary, False

    def _complement_update(self) -> None:
        if self._complement is None:
            raise RuntimeError("the complement optimizer was not created; was create_scheduler overridden?")
        if self._cot_num_classes == 2:
            # One wrong class: its entropy is 0 and so is the gradient, but an optimizer step would still apply
            # AdamW's decoupled weight decay (or momentum) a second time.
            self._complement.skip(self.state.global_step + 1, "the complement of K = 2 classes is empty")
            return

        def sums_fn(inputs) -> ModeSums:
            inputs = self._prepare_inputs(inputs)
            with self.compute_loss_context_manager():
                if self._cot_fused:
                    out = self._fused_forward(self.model_wrapped, inputs)
                    return sums_from_terms(
                        "complement", out.complement_entropy, out.log_probs, out.valid, out.vocab_size
                    )
                _, pairs = self._forward(self.model_wrapped, inputs)
                sums = [
                    sums_from_logits("complement", logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
                    for logits, labels in pairs
                ]
                return combine_targets(sums, denominators)[0]  # one target: its sums as they are

        count = denominators = denominator = None
        if self._cot_window_count is not None:
            count, denominators = self._cot_window_count.sum(), self._window_denominator()
            # several targets (QA): sums_fn weights each by its own denominator (`combine_targets`), then divide by 1
            denominator = denominators[0] if len(denominators) == 1 else torch.ones_like(denominators[0])
        values = self._complement(
            model=self.model_wrapped,
            window=self._cot_window,
            count=count,
            denominator=denominator,
            sums_fn=sums_fn,
            accelerator=self.accelerator,
            step_number=self.state.global_step + 1,
        )
        for key, value in (values or {}).items():
            self._record(key, value)

    @property
    def complement_optimizer(self) -> torch.optim.Optimizer | None:
        """The alternating mode's second optimizer (None in the other modes, and before training builds it)."""
        return self._complement.optimizer if self._complement is not None else None

    @property
    def complement_lr_scheduler(self):
        """Its learning-rate scheduler: same type, warm-up and length as ``trainer.lr_scheduler``."""
        return self._complement.scheduler if self._complement is not None else None

    @property
    def complement_steps(self) -> int:
        """Complement updates applied so far (alternating mode)."""
        return self._complement.steps if self._complement is not None else 0

    @property
    def complement_skipped_steps(self) -> int:
        """Complement updates skipped so far (fp16 overflow, non-finite loss, all labels ignored)."""
        return self._complement.skipped_steps if self._complement is not None else 0

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
        finally:
            self._cot_eval_sums = self._cot_eval_counts = None
        return output

    # ------------------------------------------------------------------ logging

    # Whether the parent's own `log` averages `self._metrics` into its log lines (TRL's trainers do).
    _parent_logs_metrics = False

    def _record(self, key: str, value: torch.Tensor) -> None:
        """Add a micro-batch's value, normalized like the loss, to the current step's sum."""
        total = self._cot_step_sums.get(key)
        self._cot_step_sums[key] = value.float() if total is None else total + value.float()

    def _record_training(self, key: str, value: torch.Tensor) -> None:
        if self._cot_in_training_step:  # evaluation batches also go through compute_loss
            self._record(key, value)

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

    # ------------------------------------------------------------------ checkpoints

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self._complement is not None:
            self._complement.save_checkpoint(output_dir, accelerator=self.accelerator, model=self.model,
                                             fsdp=self.is_fsdp_enabled, should_save=self.args.should_save)  # fmt: skip

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self._complement is not None:
            self._complement.save_rng_state(output_dir, self.args.process_index)

    def _load_rng_state(self, checkpoint) -> None:
        super()._load_rng_state(checkpoint)
        self._load_complement_rng_state(checkpoint)

    def _load_complement_rng_state(self, checkpoint) -> None:
        if checkpoint is not None and self._complement is not None:
            self._complement.load_rng_state(checkpoint, self.args.process_index)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        # Runs after create_scheduler (transformers: "_load_optimizer_and_scheduler" follows it), so it exists.
        if checkpoint is not None and self._complement is not None:
            self._complement.load_checkpoint(checkpoint, accelerator=self.accelerator, model=self.model,
                                             fsdp=self.is_fsdp_enabled, device=self.args.device)  # fmt: skip

    # ------------------------------------------------------------------ model card

    def create_model_card(self, *args, tags=None, **kwargs):
        if self.cot_mode != "off":
            tags = merge_tags(tags)
        super().create_model_card(*args, tags=tags, **kwargs)
        if self.cot_mode != "off" and self.is_world_process_zero():
            add_cot_section(os.path.join(self.args.output_dir, "README.md"), self.cot_mode)


def _already_scaled_sentinel(*args, **kwargs):  # pragma: no cover - only a marker for transformers < 5.19
    raise RuntimeError("hf-cot computes the loss in compute_loss; this sentinel only marks it as GA-scaled")


class COTTrainer(COTMixin, Trainer):
    """`transformers.Trainer` with Complement Objective Training, configured by `COTTrainingArguments` (no `args`, or
    a plain `TrainingArguments`, become those with the COT defaults)."""

    _args_class = COTTrainingArguments


class COTSeq2SeqTrainer(COTMixin, Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` with Complement Objective Training, configured by `COTSeq2SeqTrainingArguments`."""

    _args_class = COTSeq2SeqTrainingArguments
