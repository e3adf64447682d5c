"""The complement update of `cot_mode="alternating"` (the COT paper's Algorithm 1, second half), without a Trainer.

`ComplementStep` owns everything that update needs: a second optimizer of the primary's class and hyper-parameters
(built from the primary's parameter groups, so frozen / LoRA-excluded weights stay out and weight-decay groups are
kept), its own learning-rate scheduler of the same type and length, the step itself (forward/backward over the
micro-batches of one accumulation window, unscale, clip, step, schedule) and its checkpoint files.

It is deliberately *not* `accelerator.prepare`d: a prepared second optimizer would make `clip_grad_norm_` unscale the
shared fp16 gradients twice, and a prepared scheduler steps once per process.

Which optimizers and engines it can run with, and how the optimizer is copied: `hf_cot.complement_optimizer`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence

import torch

from .complement_optimizer import copy_optimizer, unwrap_optimizer
from .objective import ModeSums, mode_objective
from .random_streams import capture_streams, restore_streams, seed_streams, untouched_random_streams

logger = logging.getLogger(__name__)

# Under FSDP the complement optimizer is accelerate's optimizer number 1 in a checkpoint ("optimizer_1.bin" with a
# full state dict, the "optimizer_1/" folder with a sharded one); the Trainer's own is number 0.
COMPLEMENT_OPTIMIZER_INDEX = 1
OPTIMIZER_NAME = "complement_optimizer.pt"
SCHEDULER_NAME = "complement_scheduler.pt"
STATE_NAME = "complement_state.json"
RNG_STATE_NAME = "complement_rng_state_{}.pth"
COMPLEMENT_SEED_OFFSET = 1_000_003  # any fixed offset: a stream distinct from the Trainer's own


class ComplementStep:
    """The alternating complement update: optimizer, scheduler, one step per window, counters, checkpoint files.

    ``sums_fn(inputs) -> ModeSums`` runs one micro-batch forward (no labels) and returns the summed complement
    entropy of its valid positions with its graph (`hf_cot.objective`, mode ``"complement"``); the trainer supplies
    it (input preparation, autocast and logits alignment are the trainer's business).

    A mixture-of-experts model's router load-balancing loss is not part of this step: it belongs to the model's own
    objective, which the primary (CE) step already optimizes once per optimizer step; adding it here as well would
    double its weight and tie the router's balance to the complement learning rate.
    """

    def __init__(
        self,
        primary: torch.optim.Optimizer,
        args,
        num_training_steps: int,
        make_scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
    ):
        """``make_scheduler(optimizer)`` builds the complement scheduler (the trainer passes its own scheduler
        factory, so that both optimizers follow one schedule); None: `get_scheduler` from ``args``."""
        from transformers.optimization import get_scheduler

        primary = unwrap_optimizer(primary)
        self._primary = primary
        base_lr = args.learning_rate
        ratio = args.effective_complement_learning_rate / base_lr if base_lr > 0 else 0.0
        self.optimizer = copy_optimizer(primary, ratio)
        if make_scheduler is not None:
            self.scheduler = make_scheduler(self.optimizer)
        else:
            self.scheduler = get_scheduler(
                args.lr_scheduler_type,
                optimizer=self.optimizer,
                num_warmup_steps=args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=args.lr_scheduler_kwargs,
            )
        self.normalization = args.complement_normalization
        self.every = args.complement_every
        self.max_grad_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else math.inf
        self.steps = 0
        self.skipped_steps = 0
        self._warned_empty_window = False
        # The complement forwards draw their random numbers (dropout, SpecAugment masks) from streams of their own
        # (torch, numpy, Python), seeded from the run's seed: the CE steps then draw exactly what they would draw in
        # cot_mode="off" (so "alternating with a zero complement learning rate" is "off" even with dropout), and the
        # two updates do not share masks.
        self._rng_seed = args.seed + COMPLEMENT_SEED_OFFSET
        self.rng_state: dict | None = None  # `random_streams.capture_streams`: saved with the checkpoint

    def __call__(
        self,
        *,
        model: torch.nn.Module,
        window: Sequence[dict],
        count: torch.Tensor | None,
        denominator: torch.Tensor,
        sums_fn: Callable[[dict], ModeSums],
        accelerator,
        step_number: int,
    ) -> dict[str, torch.Tensor] | None:
        """Run the update for optimizer step ``step_number`` (1-based); returns the values to log, or None."""
        self.follow_primary()
        if step_number % self.every != 0:
            self._advance_schedule()
            return None
        if count is None or int(count) == 0:
            if not self._warned_empty_window:
                logger.warning(
                    "Every label of optimizer step %d is -100: the CE and complement losses are 0 and the complement "
                    "step is skipped (a zero-gradient step would still move AdamW weights).",
                    step_number,
                )
                self._warned_empty_window = True
            self.skipped_steps += 1
            return None
        model.zero_grad(set_to_none=True)  # the CE gradients must not leak into the complement step
        totals: dict[str, torch.Tensor] = {}
        with self._own_rng(denominator.device):
            for i, inputs in enumerate(window):
                # One gradient all-reduce per step: every micro-batch but the last accumulates locally.
                sync = contextlib.nullcontext() if i == len(window) - 1 else accelerator.no_sync(model)
                with sync:
                    loss, logs = mode_objective(
                        "complement", sums_fn(inputs), denominator, normalization=self.normalization
                    )
                    accelerator.backward(loss)
                for key, value in logs.items():  # normalized by the window's count: the window's sum is its mean
                    totals[key] = totals[key] + value if key in totals else value
                del loss

        optimizer = self.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        scaler = accelerator.scaler
        if scaler is not None:
            # Only this optimizer is unscaled: `accelerator.clip_grad_norm_` would also unscale the primary one,
            # whose GradScaler state was reset by its `update()`, dividing the shared gradients twice.
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        finite = bool(torch.isfinite(grad_norm)) and all(bool(torch.isfinite(v)) for v in totals.values())
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
                logger.warning(
                    "Non-finite complement loss or gradient at step %d: complement step skipped.", step_number
                )
            # A skipped step does not advance its schedule, as the Trainer does for an fp16 overflow.
            self.skipped_steps += 1
            return None
        self.steps += 1
        self._advance_schedule()
        # Normalized like the loss (count / num_processes); the trainer's log averages over processes.
        return totals

    def skip(self, step_number: int, reason: str) -> None:
        """No update at this step (counted in ``skipped_steps``); the schedule advances as after an update."""
        if self.skipped_steps == 0:
            logger.warning("Complement step %d skipped: %s (logged as complement_skipped_steps).", step_number, reason)
        self.follow_primary()
        self.skipped_steps += 1
        self._advance_schedule()

    @contextlib.contextmanager
    def _own_rng(self, device: torch.device):
        """Run the block on the complement's own random streams: torch's (CPU and ``device``'s: dropout), numpy's global
        stream (Wav2Vec2's SpecAugment masks) and Python's `random`. The run's streams come back untouched afterwards
        (`untouched_random_streams`), so that its CE steps draw what a plain run draws."""
        with untouched_random_streams(device):
            if self.rng_state is None:
                seed_streams(self._rng_seed, device)
            else:
                restore_streams(self.rng_state, device, seed=self._rng_seed)
            yield
            self.rng_state = capture_streams(device)

    def save_rng_state(self, output_dir: str, process_index: int) -> None:
        """Every process writes its own streams (as the Trainer writes ``rng_state_<rank>.pth``)."""
        if self.rng_state is not None:
            torch.save(self.rng_state, os.path.join(output_dir, RNG_STATE_NAME.format(process_index)))

    def load_rng_state(self, checkpoint: str, process_index: int) -> None:
        """Read what `save_rng_state` wrote. A file from before numpy's and Python's streams were kept (torch's only)
        loads too: `_own_rng` seeds the streams it lacks."""
        path = os.path.join(checkpoint, RNG_STATE_NAME.format(process_index))
        if os.path.isfile(path):
            self.rng_state = torch.load(path, weights_only=True)

    def follow_primary(self) -> None:
        """Keep the copy over the primary's *current* parameter objects (and its state with them).

        Under FSDP2 on transformers 4.x the Trainer builds its optimizer (and so this copy) before the model is sharded;
        accelerate's prepare then swaps the primary's parameters for their sharded versions in place. A copy still
        holding the replaced tensors would step on parameters the model no longer uses.
        """
        for ours, theirs in zip(self.optimizer.param_groups, self._primary.param_groups, strict=True):
            current = [p for p in theirs["params"] if p.requires_grad]
            if len(current) == len(ours["params"]) and all(
                a is b for a, b in zip(current, ours["params"], strict=True)
            ):
                continue
            for old, new in zip(ours["params"], current, strict=True):
                if old in self.optimizer.state:
                    self.optimizer.state[new] = self.optimizer.state.pop(old)
            ours["params"] = current

    def _advance_schedule(self) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return
        with warnings.catch_warnings():
            # With complement_every > 1 the schedule advances before the optimizer's first step, on purpose.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.scheduler.step()

    # ------------------------------------------------------------------ checkpoint files

    def save_checkpoint(self, output_dir: str, *, accelerator, model, fsdp: bool, should_save: bool) -> None:
        """Write the complement's part of a Trainer checkpoint. Under FSDP2 the optimizer state is sharded like the
        parameters: saved the way the Trainer saves the primary's (every rank takes part; the configured
        state_dict_type decides full file or sharded folder), as accelerate's optimizer number
        COMPLEMENT_OPTIMIZER_INDEX."""
        self.follow_primary()
        if fsdp:
            from accelerate.utils import save_fsdp_optimizer

            save_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, self.optimizer, model, output_dir,
                                optimizer_index=COMPLEMENT_OPTIMIZER_INDEX)  # fmt: skip
        if should_save:
            self.save(output_dir, optimizer_state=not fsdp)

    def load_checkpoint(self, checkpoint: str, *, accelerator, model, fsdp: bool, device) -> None:
        """Load what `save_checkpoint` wrote (a warning, and a fresh start, where the checkpoint has none)."""
        if fsdp and not any(os.path.exists(os.path.join(checkpoint, n)) for n in fsdp_optimizer_names()):
            warnings.warn(
                f"{checkpoint} has no {' / '.join(fsdp_optimizer_names())} (the complement optimizer under FSDP): the "
                "complement optimizer and scheduler start fresh, so training will not match an uninterrupted COT run",
                UserWarning,
                stacklevel=3,
            )
            return
        if self.load(checkpoint, device, optimizer_state=not fsdp) and fsdp:  # load() follows the primary
            from accelerate.utils import load_fsdp_optimizer

            load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, self.optimizer, model, checkpoint,
                                optimizer_index=COMPLEMENT_OPTIMIZER_INDEX)  # fmt: skip

    def save(self, output_dir: str, *, optimizer_state: bool = True) -> None:
        """Write the complement files. ``optimizer_state=False``: the caller saves the optimizer itself (FSDP's
        sharded state goes through accelerate, on every rank)."""
        self.follow_primary()
        if optimizer_state:
            torch.save(self.optimizer.state_dict(), os.path.join(output_dir, OPTIMIZER_NAME))
        torch.save(self.scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))
        with open(os.path.join(output_dir, STATE_NAME), "w") as f:
            json.dump({"complement_steps": self.steps, "complement_skipped_steps": self.skipped_steps}, f)

    def load(self, checkpoint: str, device: torch.device, *, optimizer_state: bool = True) -> bool:
        """Load what `save` wrote; False (and a warning) when the checkpoint has no complement files."""
        self.follow_primary()
        scheduler_file = os.path.join(checkpoint, SCHEDULER_NAME)
        needed = ([OPTIMIZER_NAME] if optimizer_state else []) + [SCHEDULER_NAME]
        missing = [name for name in needed if not os.path.exists(os.path.join(checkpoint, name))]
        if missing:
            warnings.warn(
                f"{checkpoint} has no {' / '.join(missing)}: the complement optimizer and scheduler start fresh, so "
                "training will not match an uninterrupted COT run",
                UserWarning,
                stacklevel=3,
            )
            return False
        if optimizer_state:
            # An indexed CPU device ("cpu:1" under MULTI_CPU/gloo) cannot be a map_location; the optimizer moves its
            # state to each parameter's device itself.
            map_location = "cpu" if device.type == "cpu" else device
            optimizer_file = os.path.join(checkpoint, OPTIMIZER_NAME)
            self.optimizer.load_state_dict(torch.load(optimizer_file, map_location=map_location, weights_only=True))
        self.scheduler.load_state_dict(torch.load(scheduler_file, weights_only=True))
        state_file = os.path.join(checkpoint, STATE_NAME)
        if os.path.isfile(state_file):
            with open(state_file) as f:
                state = json.load(f)
            self.steps = state["complement_steps"]
            self.skipped_steps = state["complement_skipped_steps"]
        return True


def fsdp_optimizer_names() -> tuple[str, str]:
    """What accelerate's `save_fsdp_optimizer` writes for the complement optimizer: a full file or a sharded folder."""
    from accelerate.utils.constants import OPTIMIZER_NAME as ACCELERATE_OPTIMIZER_NAME

    return (
        f"{ACCELERATE_OPTIMIZER_NAME}_{COMPLEMENT_OPTIMIZER_INDEX}.bin",
        f"{ACCELERATE_OPTIMIZER_NAME}_{COMPLEMENT_OPTIMIZER_INDEX}",
    )
