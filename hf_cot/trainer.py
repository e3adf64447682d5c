"""`COTTrainer` and `COTSeq2SeqTrainer`: drop-in subclasses of the HF trainers that add Complement Objective Training.

`COTMixin` holds only the Trainer overrides and wires the modules that do the work: `heads` / `modeling` (how a model
is scored), `scoring` (one code path for the loss trained on, the loss reported and the check), `alignment_check`
(the first batch against the model's own loss), `objective` (every mode's loss), `fused_lm_head` (causal LMs without
logits), `complement_step` / `complement_optimizer` (the alternating mode's second optimizer), `reporting` (what is
logged), `config` (the arguments), `model_card`. Design (docs/how-it-works.md has the long version):

* The loss is normalized by the valid labels of the whole gradient-accumulation window across all processes (GA and
  DDP exact). Its *value* is the plain cross-entropy, so `loss`/`eval_loss` mean what they mean in the plain Trainer;
  its gradient is the mode's objective.
* `alternating`: an `on_optimizer_step` callback runs the complement step right after the primary
  `optimizer.step()`, on the micro-batches of the same window (stashed by `get_batch_samples`).
* `joint` / `guided`: one loss, one update. `off`: every override defers to the parent (with `class_weights`, the
  loss is the weighted cross-entropy, computed on the same path).

To add COT to another `Trainer` subclass (TRL's, say): ``class X(COTMixin, ThatTrainer)`` with an arguments class
that mixes in `COTArgumentsMixin`. ``ThatTrainer`` may not override `compute_loss` (COT replaces the loss; refused at
construction), unless it is one COT composes with (`_composes_with`); to customise the loss, subclass the COT
trainer and call ``super().compute_loss``.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback

from .alignment_check import FirstBatchCheck
from .alternating import COTAlternatingMixin
from .argument_conversion import given_arguments, with_cot_arguments
from .complement_optimizer import check_alternating_supported
from .complement_step import ComplementStep
from .config import COTArgumentsMixin, COTSeq2SeqTrainingArguments, COTTrainingArguments
from .fused_lm_head import install_fused_lm_head, use_fused_lm_head
from .heads import head_for
from .model_card import PAPER, TAGS, add_cot_section, merge_tags
from .modeling import batch_labels, check_class_weights, check_model_head, check_num_classes, count_valid
from .objective import ModeSums, combine_targets, mode_objective
from .reporting import COTReportingMixin, objective_without
from .scoring import ScoredBatch, reported_cross_entropy, router_loss, score_batch

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


class COTMixin(COTAlternatingMixin, COTReportingMixin):
    """Adds COT to a `transformers.Trainer` subclass. Use `COTTrainer` or `COTSeq2SeqTrainer`."""

    _tag_names = TAGS
    _paper = PAPER

    _args_class_name = "COTTrainingArguments (or COTSeq2SeqTrainingArguments)"
    _args_class: type | None = None  # what no `args` / a plain `TrainingArguments` become (the parent's defaults)
    # Parent trainers whose own `compute_loss` COT knows and composes with (TRL's SFTTrainer: hf_cot.trl).
    _composes_with: tuple[type, ...] = ()
    # A training micro-batch's loss is normalized by the valid labels of the whole accumulation window on all
    # processes (the Trainer's num_items_in_batch, TRL's); False: by its own, divided by the window's micro-batches
    # (a host whose loss is the mean of micro-batch means: axolotl).
    _cot_window_mean = True

    def __init__(self, *args, **kwargs):
        args, kwargs = self._with_cot_arguments(args, kwargs)
        # Checked before the parent's __init__, which already changes the model (device placement, TRL's patches).
        given = self._given_arguments(args, kwargs)
        self._check_arguments_class(given)
        model = kwargs.get("model", args[0] if args else None)
        model = model if isinstance(model, torch.nn.Module) else None  # TRL also takes a model's name
        if given is not None:
            self._refuse_before_parent(given, model, kwargs)
        super().__init__(*args, **kwargs)
        self._check_arguments_class(self.args)  # None above: the parent built default arguments
        self.cot_mode = self.args.cot_mode
        self._complement: ComplementStep | None = None  # alternating only, built with the primary's scheduler
        self._cot_window: list = []
        self._cot_window_count: torch.Tensor | None = None
        self._cot_in_training_step = False
        self._init_reporting()
        self._cot_fused = False  # causal LMs: terms from the hidden states, never the logits (cot_fused_lm_head)
        self._cot_first_batch = FirstBatchCheck()  # what trains against the model's own loss, once per model
        self._cot_num_classes: int | None = None  # K of the logits path (2: the complement is empty)
        self._cot_loss_ran = self._cot_warned_bypass = False
        if self._cot_objective == "off":
            return
        # Again on what the parent built: default arguments, a model from `model_init` or from a name (TRL).
        self._refuse_before_parent(
            self.args,
            self.model if given is None or model is None else None,
            {"compute_loss_func": self.compute_loss_func},
        )
        if self.cot_mode == "alternating":  # refused now, never in the middle of a run
            check_alternating_supported(
                deepspeed=self.is_deepspeed_enabled,
                fsdp_version=self._fsdp_version(),
                optimizer=self.optimizer,
                optimizer_cls_and_kwargs=getattr(self, "optimizer_cls_and_kwargs", None),
                optim=self.args.optim,
            )
        if self.cot_mode != "off" and self.args.label_smoothing_factor > 0:
            warnings.warn(
                "label_smoothing_factor > 0 also flattens the wrong classes, which is what COT's complement objective "
                "does; combining them double-counts that effect. Set --label_smoothing_factor 0 unless you mean it.",
                UserWarning,
                stacklevel=2,
            )
        self._set_loss_is_scaled_for_ga()
        if self.cot_mode == "off":  # class weights only: the weighted cross-entropy, on the logits
            return
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

    @property
    def _cot_objective(self) -> str:
        """What `compute_loss` computes: the mode's objective; ``"ce"`` in `off` with class weights (the weighted
        cross-entropy); ``"off"``: the parent's loss."""
        if self.cot_mode != "off":
            return self.cot_mode
        return "ce" if self.args.class_weights is not None else "off"

    def _refuse_before_parent(self, args, model, kwargs: dict) -> None:
        """What COT cannot combine with, refused before anything changes the model (and again once built: a
        `model_init` model, arguments changed in between)."""
        if args.cot_mode == "off" and args.class_weights is None:
            return
        what = f"cot_mode={args.cot_mode!r}" if args.cot_mode != "off" else "class_weights"
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                f"compute_loss_func cannot be combined with {what}: COT computes the loss itself (cross-entropy plus "
                "the complement objective); use cot_mode='off' without class_weights to keep your own loss"
            )
        owner = self._foreign_compute_loss()
        if owner is not None:
            raise ValueError(
                f"{owner.__module__}.{owner.__qualname__} overrides compute_loss, and {type(self).__name__} puts "
                f"COTMixin above it: with {what} COT computes the loss itself, so that override would be dropped. "
                "Put your override above COT instead (class MyTrainer(COTTrainer) calling super().compute_loss), "
                "move class weights to class_weights=[...] in the COT arguments, or use cot_mode='off'."
            )
        if model is not None:
            check_model_head(model, args.cot_mode)
            check_class_weights(model, args.class_weights)

    @classmethod
    def _foreign_compute_loss(cls) -> type | None:
        """The first class under COTMixin in the method resolution order (between it and `transformers.Trainer`)
        that defines its own `compute_loss`, unless COT composes with it."""
        mro = cls.__mro__
        for klass in mro[mro.index(COTMixin) + 1 :]:
            if klass is Trainer:
                return None
            if "compute_loss" in vars(klass) and klass not in cls._composes_with:
                return klass
        return None

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

    # ------------------------------------------------------------------ model_init and hyper-parameter search

    def call_model_init(self, trial=None):
        """A model built by ``model_init`` (for `train()`, or for a search trial) gets what the constructor's got: the
        head checks and, where the trainer uses it, the fused LM head."""
        model = super().call_model_init(trial)
        if hasattr(self, "cot_mode") and self._cot_objective != "off":  # unset while the parent's __init__ builds one
            self._refuse_before_parent(self.args, model, {})
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

    def hyperparameter_search(self, hp_space=None, compute_objective=None, *args, **kwargs):
        """As the parent's; without a ``compute_objective``, trials are compared on what the plain Trainer compares
        (``eval_loss``, or the sum of `compute_metrics`' values), not on the values COT adds to `evaluate()`."""
        if compute_objective is None:
            compute_objective = functools.partial(objective_without, self._cot_added_eval_keys)
        return super().hyperparameter_search(hp_space, compute_objective, *args, **kwargs)

    # ------------------------------------------------------------------ scoring

    @property
    def _label_names(self):
        return getattr(self, "label_names", None)

    @property
    def _class_weights(self) -> torch.Tensor | None:
        weights = self.args.class_weights  # read on each use: a search trial may change it
        return None if weights is None else torch.tensor([float(w) for w in weights], dtype=torch.float32)

    def _score(self, model, inputs: dict, mode: str, *, fused: bool, weighted: bool = True, **kw) -> ScoredBatch:
        """`hf_cot.scoring.score_batch` with this trainer's model, labels and arguments."""
        return score_batch(
            model,
            inputs,
            mode,
            head_model=self.model,
            label_names=self._label_names,
            fused=fused,
            class_weights=self._class_weights if weighted else None,
            label_smoothing=self.args.label_smoothing_factor,
            guided_alpha=self.args.guided_alpha,
            **kw,
        )

    def _score_for_check(self, model, inputs: dict, fused: bool) -> ScoredBatch:
        """The cross-entropy the first-batch check compares with the model's own (unweighted) loss."""
        return self._score(model, inputs, "ce", fused=fused, weighted=False)

    def _use_logits_path(self) -> None:
        """The first-batch check found the fused head off and the logits right: train on the logits from now on."""
        from .fused_lm_head import uninstall_fused_lm_head

        uninstall_fused_lm_head(self.model)
        self._cot_fused = False

    def _check_num_classes(self, num_classes: int | None) -> None:
        """K known only from the logits (multiple choice: the choices): the K = 2 warning / refusal, once."""
        if num_classes is None:  # the fused head: K is the vocabulary
            return
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
        if self._cot_objective != "off" and batch_samples:
            weights = self._class_weights
            count = torch.stack(
                [count_valid(*batch_labels(self.model, b, self._label_names), weights) for b in batch_samples]
            ).sum(0)
            count = count.to(self.args.device)
            if self.accelerator.num_processes > 1 and self.args.average_tokens_across_devices:
                count = self.accelerator.gather(count.reshape(1, -1)).sum(0)
            self._cot_window, self._cot_window_count = batch_samples, count
        return batch_samples, num_items_in_batch

    def training_step(self, *args, **kwargs):
        self._cot_in_training_step, self._cot_loss_ran = True, False
        try:
            return super().training_step(*args, **kwargs)
        finally:
            self._cot_in_training_step = False
            if self._cot_objective != "off" and not self._cot_loss_ran and not self._cot_warned_bypass:
                self._warn_bypassed()

    def _warn_bypassed(self) -> None:
        owner = next(k for k in type(self).__mro__ if "compute_loss" in vars(k))
        warnings.warn(
            f"{owner.__qualname__}.compute_loss never calls COT's (super().compute_loss): this step trained on its own "
            f"loss, so cot_mode={self.cot_mode!r}{' with class_weights' if self.args.class_weights else ''} is "
            "bypassed. Call super().compute_loss(model, inputs, return_outputs, num_items_in_batch) in it, or use the "
            "plain Trainer.",
            UserWarning,
            stacklevel=3,
        )
        self._cot_warned_bypass = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss to backpropagate, whose *value* is always the plain model loss.

        Training differentiates the mode's objective (CE; CE + weight * complement objective; GCE), but the returned
        value - what the Trainer logs as ``loss``/``eval_loss``, what ``metric_for_best_model="loss"``, early stopping
        and the model card see - is the token/label-averaged cross-entropy (plus a mixture-of-experts model's router
        load-balancing loss, which stays in the objective too), the number a plain ``Trainer`` reports for the same
        weights and batch. The complement part is logged next to it (``complement_loss``,
        ``complement_entropy``, ``eval_complement_entropy``).
        """
        if self._cot_objective == "off":
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        self._cot_loss_ran = True
        self._cot_first_batch.check(model, inputs, self)
        training = self._cot_in_training_step
        fused = self._cot_fused and (training or not self._cot_eval_wants_logits)
        scored = self._score(
            model, inputs, self._cot_objective if training else "ce", fused=fused,
            per_sample_entropy=not training and self._cot_eval_sums is not None,
        )  # fmt: skip
        self._check_num_classes(scored.num_classes)
        if training:
            loss = self._training_loss(*combine_targets(scored.sums, self._loss_denominator(scored.counts)))
        else:  # evaluation / prediction: the cross-entropy, and the complement entropy to report
            self._cot_eval_batch = scored.per_sample_entropy
            loss = reported_cross_entropy(scored)
        loss = self._add_router_loss(loss, scored.outputs)
        return (loss, scored.outputs) if return_outputs else loss

    def _add_router_loss(self, loss: torch.Tensor, outputs) -> torch.Tensor:
        """What a mixture-of-experts model's own forward adds to its loss: ``router_aux_loss_coef x aux_loss``.

        It is part of the objective (gradient) and of the reported value, as in the plain Trainer. In training it is
        averaged over the micro-batches of the accumulation window (as TRL's SFTTrainer does; DDP averages it over
        processes): at gradient accumulation 1 this is exactly the model's loss.
        """
        extra = router_loss(self.model, outputs)
        if extra is None:
            return loss
        steps = len(self._cot_window) if self._cot_in_training_step and self._cot_window else 1
        return loss + extra.to(loss.device) / steps

    def _training_loss(self, sums: ModeSums, denominator: torch.Tensor) -> torch.Tensor:
        """The mode's loss (`hf_cot.objective.mode_objective`); its logged values go to the training metrics."""
        loss, logs = mode_objective(
            self._cot_objective,
            sums,
            denominator,
            complement_weight=self.args.complement_weight,
            normalization=self.args.complement_normalization,
        )
        for key, value in logs.items():
            self._record(key, value)
        return loss

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
