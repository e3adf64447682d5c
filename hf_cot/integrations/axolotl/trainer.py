"""`AxolotlCOTTrainer`: axolotl's SFT trainer with Complement Objective Training underneath it."""

from __future__ import annotations

from axolotl.core.trainers.base import AxolotlTrainer

from ...trainer import COTTrainer


class AxolotlCOTTrainer(AxolotlTrainer, COTTrainer):
    """`AxolotlTrainer` over `hf_cot.COTTrainer`.

    The order is the point: the method resolution order is AxolotlTrainer, axolotl's mixins, COTMixin, Trainer. So
    axolotl's `compute_loss` runs first (its `tokens/*` counts, model-specific input fixes) and hands the loss to COT;
    axolotl's `log` adds its `ppl` and `tokens/*` and COT adds its `complement_*` keys; samplers, checkpoint handling
    and the model card stay axolotl's. Two axolotl methods do not call their parent, and are completed here.
    """

    # axolotl turns `model_accepts_loss_kwargs` off, so its loss at gradient accumulation > 1 is the mean of the
    # micro-batches' means: COT follows it (`COTMixin._cot_window_mean`), so that `joint` at weight 0 is plain axolotl.
    _cot_window_mean = False

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        # axolotl's own schedules (cosine_min_lr_ratio, rex, one_cycle, a plugin's) are built without calling the
        # parent's create_scheduler, so COTMixin's never runs to build the alternating complement step: build it here.
        # Its scheduler comes from this same method (COTMixin._complement_scheduler), so both follow one schedule.
        if self.cot_mode != "alternating" or self._cot_scheduling_complement:
            return super().create_scheduler(num_training_steps, optimizer)
        self._complement = None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self._complement is None:
            self._complement = self._new_complement_step(num_training_steps)
        return scheduler

    def _load_rng_state(self, checkpoint) -> None:
        super()._load_rng_state(checkpoint)  # axolotl's RngLoaderMixin, which does not call COTMixin's
        self._load_complement_rng_state(checkpoint)
