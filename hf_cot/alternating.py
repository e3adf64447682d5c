"""The alternating mode's wiring into the Trainer (`COTAlternatingMixin`, a part of `hf_cot.trainer.COTMixin`), and
what a COT checkpoint holds beyond the Trainer's own.

`hf_cot.complement_step.ComplementStep` is the complement update itself (its optimizer, scheduler, step and files);
this mixin builds it with the Trainer's scheduler, runs it after each primary optimizer step (an `on_optimizer_step`
callback) on the micro-batches of the same accumulation window, and saves / loads it with the Trainer's checkpoints.
Checkpoints of the COT modes also record their `cot_mode`, so that resuming with another one says what it drops.
"""

from __future__ import annotations

import functools
import json
import os
import warnings

import torch

from .complement_step import OPTIMIZER_NAME as COMPLEMENT_OPTIMIZER_NAME
from .complement_step import ComplementStep
from .objective import ModeSums, combine_targets

# The COT mode a checkpoint was saved with (COT modes only: an `off` checkpoint is the plain Trainer's).
STATE_FILE = "cot_state.json"


class COTAlternatingMixin:
    """Needs from the trainer: ``cot_mode``, ``_complement`` (None until built), ``_cot_num_classes``,
    ``_cot_window`` / ``_cot_window_count`` / ``_window_denominator()`` (the accumulation window), ``_score``,
    ``_cot_fused``, ``_record``."""

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
                scored = self._score(self.model_wrapped, inputs, "complement", fused=self._cot_fused)
            return combine_targets(scored.sums, denominators)[0]  # one target: its sums as they are

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

    # ------------------------------------------------------------------ checkpoints

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self._complement is not None:
            self._complement.save_checkpoint(output_dir, accelerator=self.accelerator, model=self.model,
                                             fsdp=self.is_fsdp_enabled, should_save=self.args.should_save)  # fmt: skip
        if self.cot_mode != "off" and self.args.should_save:
            with open(os.path.join(output_dir, STATE_FILE), "w") as f:
                json.dump({"cot_mode": self.cot_mode}, f)

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
        if checkpoint is not None:
            _warn_mode_change(checkpoint, self.cot_mode)
        # Runs after create_scheduler (transformers: "_load_optimizer_and_scheduler" follows it), so it exists.
        if checkpoint is not None and self._complement is not None:
            self._complement.load_checkpoint(checkpoint, accelerator=self.accelerator, model=self.model,
                                             fsdp=self.is_fsdp_enabled, device=self.args.device)  # fmt: skip


def _warn_mode_change(checkpoint: str, mode: str) -> None:
    """Resuming with another `cot_mode` than the checkpoint's: say what of the checkpoint the new mode drops."""
    path = os.path.join(checkpoint, STATE_FILE)
    if not os.path.isfile(path):
        return  # saved in `off` (or before hf-cot wrote its mode): nothing to compare
    with open(path) as f:
        saved = json.load(f).get("cot_mode")
    if saved == mode:
        return
    if saved == "alternating":
        dropped = (
            f"its complement optimizer and scheduler state ({COMPLEMENT_OPTIMIZER_NAME}, ...) and complement step "
            "counters, which only 'alternating' uses, are not loaded"
        )
    elif mode == "alternating":
        dropped = "it has no complement optimizer state: the complement optimizer and its schedule start fresh"
    else:
        dropped = "no state of the old objective is carried; the new objective applies from the resumed step"
    warnings.warn(
        f"resuming from {checkpoint}, saved with cot_mode={saved!r}, with cot_mode={mode!r}: {dropped}. The run will "
        "not match an uninterrupted run of either mode.",
        UserWarning,
        stacklevel=3,
    )
