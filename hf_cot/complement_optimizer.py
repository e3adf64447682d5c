"""The alternating mode's second optimizer: which optimizers and engines it can run with, and how it is copied from
the primary one (a fresh instance of its class over the same trainable parameter groups). No Trainer here: the
trainer calls `check_alternating_supported` at construction and `ComplementStep` calls `copy_optimizer`."""

from __future__ import annotations

import copy
import inspect

import torch

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


def check_alternating_supported(*, deepspeed: bool, fsdp_version: int | None, optimizer, optimizer_cls_and_kwargs,
                                optim) -> None:  # fmt: skip
    """Refuse at construction what the alternating step cannot do, never in the middle of a run: engines that own the
    optimizer step, and optimizers that cannot be copied (tried on the given optimizer, on a throw-away instance of a
    given class, or by name - building the optimizer class here could import packages or register layer-wise hooks)."""
    if deepspeed:
        raise NotImplementedError(
            "cot_mode='alternating' is not supported under DeepSpeed: DeepSpeed owns the optimizer step (it runs "
            "inside backward and holds the ZeRO gradient partitions), so a second optimizer over the same "
            "parameters has no gradients to step on. Use cot_mode='joint' or cot_mode='guided', which are a single "
            "loss and run under every ZeRO stage; or FSDP2 for 'alternating'."
        )
    if fsdp_version == 1:
        raise NotImplementedError(
            "cot_mode='alternating' is not supported under FSDP1: its flat parameters and optimizer-state "
            "handling are not covered by the complement step. Use FSDP2 (`fsdp_version: 2` in the accelerate config; "
            "transformers 5 also reads fsdp_config={'version': 2} and defaults to it), which supports it, or "
            "cot_mode='joint' / cot_mode='guided', which are a single loss and run anywhere."
        )
    if optimizer is not None:  # optimizers=(optimizer, scheduler) given to the constructor
        copy_optimizer(optimizer, 1.0)  # the copy the complement step will make: fail now, not at step 1
    elif optimizer_cls_and_kwargs is not None:
        optimizer_cls, optimizer_kwargs = optimizer_cls_and_kwargs
        check_optimizer_supported(optimizer_cls)
        try:  # a throw-away instance over one scalar, to try the copy before training
            trial = optimizer_cls([torch.nn.Parameter(torch.zeros(1))], **optimizer_kwargs)
        except Exception:  # the parent reports its own error when it builds the real one
            trial = None
        if trial is not None:
            copy_optimizer(trial, 1.0)
    else:
        check_optim_name_supported(optim)
