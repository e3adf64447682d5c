"""The complement update of `cot_mode="alternating"` (the COT paper's Algorithm 1, second half), without a Trainer.

`ComplementStep` owns everything that update needs: a second optimizer of the primary's class and hyper-parameters
(built from the primary's parameter groups, so frozen / LoRA-excluded weights stay out and weight-decay groups are
kept), its own learning-rate scheduler of the same type and length, the step itself (forward/backward over the
micro-batches of one accumulation window, unscale, clip, step, schedule) and its checkpoint files.

It is deliberately *not* `accelerator.prepare`d: a prepared second optimizer would make `clip_grad_norm_` unscale the
shared fp16 gradients twice, and a prepared scheduler steps once per process.

`check_optimizer_supported` refuses, before training starts, the optimizers for which a second copy over the same
parameters cannot be right (see its docstring).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence

import torch

from .objective import ModeSums, mode_objective

logger = logging.getLogger(__name__)

OPTIMIZER_NAME = "complement_optimizer.pt"
SCHEDULER_NAME = "complement_scheduler.pt"
STATE_NAME = "complement_state.json"
RNG_STATE_NAME = "complement_rng_state_{}.pth"
COMPLEMENT_SEED_OFFSET = 1_000_003  # any fixed offset: a stream distinct from the Trainer's own

_USE_JOINT = (
    "Use cot_mode='joint' (or 'guided'): a single loss, one optimizer, which works with every optimizer the Trainer "
    "supports; or pick another --optim for 'alternating'."
)


def unwrap_optimizer(optimizer):
    """The torch optimizer under accelerate's `AcceleratedOptimizer` (how the Trainer holds its optimizer).

    Other wrappers (Lookahead-style) are left as they are, so that `check_optimizer_supported` sees and refuses them.
    """
    from accelerate.optimizer import AcceleratedOptimizer

    while isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    return optimizer


_REASONS = {
    "layerwise": "its updates happen inside backward() (per-parameter hooks), so the complement step's backward would "
    "also apply the primary update",
    "fused_backward": "it fuses the update into backward(), so the complement step's backward would apply the primary "
    "update",
    "mode_switch": "it keeps its own parameter averages and needs optimizer.train()/eval() mode switches "
    "(schedule-free), and a second copy over the same parameters would overwrite them",
    "wrapper": "it wraps another optimizer, so it cannot be rebuilt from parameter groups",
}


def _unsupported_kind(cls: type) -> str | None:
    if cls.__name__ == "LayerWiseDummyOptimizer":  # transformers' stand-in for --optim *_layerwise
        return "layerwise"
    if cls.__name__ in ("Lomo", "AdaLomo") or "lomo" in cls.__module__.lower():
        return "fused_backward"
    if callable(getattr(cls, "train", None)) and callable(getattr(cls, "eval", None)):
        return "mode_switch"
    first = list(inspect.signature(cls.__init__).parameters)[1:2]
    if first and first[0] in ("optimizer", "base_optimizer", "opt"):
        return "wrapper"
    return None


def _unsupported_kind_by_name(optim: str) -> str | None:
    if optim.endswith("_layerwise"):
        return "layerwise"
    if optim in ("lomo", "adalomo"):
        return "fused_backward"
    if optim.startswith("schedule_free"):
        return "mode_switch"
    return None


def _refuse(kind: str | None, what: str) -> None:
    if kind is not None:
        raise ValueError(f"cot_mode='alternating' cannot run with {what}: {_REASONS[kind]}. {_USE_JOINT}")


def check_optimizer_supported(optimizer_or_cls) -> None:
    """Raise `ValueError` (naming cot_mode='joint') for optimizers that 'alternating' cannot copy correctly.

    * Optimizers that step inside `backward` (transformers' layer-wise GaLore/APOLLO via `LayerWiseDummyOptimizer`,
      LOMO/AdaLomo): the complement backward would run the *primary* optimizer's per-parameter updates.
    * Optimizers with a train/eval mode whose parameters are an average kept by the optimizer (schedule-free
      AdamW/RAdam/SGD): two of them over the same parameters overwrite each other's interpolation, and the Trainer
      switches only its own optimizer's mode.
    * Wrappers around another optimizer (Lookahead-style): `type(opt)(param_groups, **defaults)` cannot rebuild them.
    """
    cls = optimizer_or_cls if isinstance(optimizer_or_cls, type) else type(unwrap_optimizer(optimizer_or_cls))
    _refuse(_unsupported_kind(cls), cls.__name__)


def check_optim_name_supported(optim) -> None:
    """The same refusals from a `--optim` value, before the optimizer exists (building it could register hooks)."""
    name = str(getattr(optim, "value", optim)).lower()  # an OptimizerNames member or its string
    _refuse(_unsupported_kind_by_name(name), f"--optim {name}")


def copy_optimizer(primary: torch.optim.Optimizer, lr_ratio: float) -> torch.optim.Optimizer:
    """A fresh optimizer of the primary's class over its trainable parameters, group by group, lr scaled."""
    primary = unwrap_optimizer(primary)
    check_optimizer_supported(primary)
    groups = []
    for group in primary.param_groups:
        # Same hyper-parameters group by group (weight decay on/off, per-group lr), only trainable params.
        new_group = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
        new_group["params"] = [p for p in group["params"] if p.requires_grad]
        new_group["lr"] = group.get("initial_lr", group["lr"]) * lr_ratio
        groups.append(new_group)
    kwargs = _constructor_kwargs(primary)
    if "lr" in inspect.signature(type(primary).__init__).parameters and groups:
        kwargs["lr"] = groups[0]["lr"]  # every group sets its own lr; some constructors still require one (optimi's)
    try:
        return type(primary)(groups, **kwargs)
    except (TypeError, ValueError, AttributeError) as err:
        raise TypeError(
            f"cannot build the complement optimizer as a copy of {type(primary).__name__}: {err}. Use a standard "
            f"torch optimizer (e.g. --optim adamw_torch) for cot_mode='alternating'. {_USE_JOINT}"
        ) from err


_SIMPLE = (bool, int, float, str, tuple, type(None))


def _constructor_kwargs(primary: torch.optim.Optimizer) -> dict:
    """The primary's constructor arguments, so that the copy is configured like it.

    Most live in `defaults`. Some optimizers keep others on the instance: bitsandbytes its `args` (optim_bits,
    min_8bit_size, percentile_clipping, block_wise, max_unorm: without them an 8-bit optimizer's copy keeps 32-bit
    state) and `is_paged`; torchao its `block_size`. Only constructor parameters are passed (`defaults` may hold
    derived entries, e.g. AdamW's decoupled_weight_decay).
    """
    kwargs = {}
    for name, parameter in inspect.signature(type(primary).__init__).parameters.items():
        if name in ("self", "params", "lr") or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in primary.defaults:
            kwargs[name] = primary.defaults[name]
        elif name == "args" and hasattr(primary, "args"):  # bitsandbytes keeps its settings object there
            kwargs[name] = copy.copy(primary.args)
        elif isinstance(getattr(primary, name, None), _SIMPLE) and hasattr(primary, name):
            kwargs[name] = getattr(primary, name)
    return kwargs


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
        # The complement forwards draw their random numbers (dropout) from a stream of their own, seeded from the
        # run's seed: the CE steps then draw exactly what they would draw in cot_mode="off" (so "alternating with a
        # zero complement learning rate" is "off" even with dropout), and the two updates do not share masks.
        self._rng_seed = args.seed + COMPLEMENT_SEED_OFFSET
        self.rng_state: dict | None = None  # {"cpu": tensor, "device": tensor or None}: saved with the checkpoint

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
        """Run the block on the complement's random stream; the global generators (CPU and ``device``'s) come back
        untouched afterwards, as `torch.random.fork_rng` guarantees."""
        accelerator_rng = getattr(torch, device.type) if device.type != "cpu" else None
        devices = [device] if accelerator_rng is not None else []
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            if self.rng_state is None:
                torch.random.default_generator.manual_seed(self._rng_seed)
                if accelerator_rng is not None:
                    accelerator_rng.manual_seed(self._rng_seed)  # the current device only
            else:
                torch.set_rng_state(self.rng_state["cpu"])
                if accelerator_rng is not None and self.rng_state["device"] is not None:
                    accelerator_rng.set_rng_state(self.rng_state["device"], device)
            yield
            self.rng_state = {
                "cpu": torch.get_rng_state(),
                "device": accelerator_rng.get_rng_state(device) if accelerator_rng is not None else None,
            }

    def save_rng_state(self, output_dir: str, process_index: int) -> None:
        """Every process writes its own stream (as the Trainer writes ``rng_state_<rank>.pth``)."""
        if self.rng_state is not None:
            torch.save(self.rng_state, os.path.join(output_dir, RNG_STATE_NAME.format(process_index)))

    def load_rng_state(self, checkpoint: str, process_index: int) -> None:
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
