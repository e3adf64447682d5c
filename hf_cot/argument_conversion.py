"""What a COT trainer runs with when its caller gave no arguments, or arguments without the COT fields.

As the parent trainers do (`Trainer` builds `TrainingArguments(output_dir="tmp_trainer")`, TRL's `SFTTrainer` converts
a `TrainingArguments` into an `SFTConfig`), but without losing anything: the caller's class, fields and values are
kept (a COT subclass of its class holding a copy of its state, not a rebuild from `to_dict()`, which masks every
``*_token`` field), and the caller's object is left as it is.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from dataclasses import dataclass

from transformers import Seq2SeqTrainingArguments, TrainingArguments
from transformers.utils import logging

from .config import COTArgumentsMixin, COTSeq2SeqTrainingArguments, COTTrainingArguments

logger = logging.get_logger(__name__)


def cot_arguments_class(base: type) -> type:
    """The COT arguments class of a `TrainingArguments` class ``base``: a subclass of it with the COT fields.

    `TrainingArguments`, `Seq2SeqTrainingArguments` and TRL's `SFTConfig` have theirs by name
    (`COTTrainingArguments`, `COTSeq2SeqTrainingArguments`, `hf_cot.trl.COTSFTConfig`); any other class (a user's
    subclass with fields of its own) gets a dataclass built once, with bases ``(COTArgumentsMixin, base)``. A class
    that already mixes in `COTArgumentsMixin` is its own.
    """
    if issubclass(base, COTArgumentsMixin):
        return base
    if base is TrainingArguments:
        return COTTrainingArguments
    if base is Seq2SeqTrainingArguments:
        return COTSeq2SeqTrainingArguments
    if _is_trl_sft_config(base):
        from .trl import COTSFTConfig  # trl is optional: imported only once one of its classes was given

        return COTSFTConfig
    return _derived_arguments_class(base)


def _is_trl_sft_config(cls: type) -> bool:
    """``cls`` is TRL's `SFTConfig` itself (read by name first, so that nothing imports trl for a class of another
    library)."""
    if cls.__name__ != "SFTConfig" or cls.__module__.partition(".")[0] != "trl":
        return False
    import trl

    return cls is trl.SFTConfig


@functools.cache
def _derived_arguments_class(base: type) -> type:
    """``COT<base>``: a dataclass with bases ``(COTArgumentsMixin, base)``, built once per class (cached), so that
    every conversion of one class gives instances of one class."""

    @dataclass(repr=False)
    class Derived(COTArgumentsMixin, base):
        _cot_derived_from = base  # not a field (no annotation): the class it was built for

        def __post_init__(self):
            check_cot_arguments(self)
            super().__post_init__()

        def __reduce__(self):
            # Pickled (the Trainer's training_args.bin) and copied through ``base``, which is importable by name where
            # this class, built at run time, is not.
            state = self.__getstate__() if hasattr(self, "__getstate__") else self.__dict__  # 3.10: no __getstate__
            return _new_derived_arguments, (base,), state

    Derived.__name__ = Derived.__qualname__ = f"COT{base.__name__}"
    Derived.__doc__ = f"`{base.__module__}.{base.__qualname__}` plus the COT fields (see `COTArgumentsMixin`)."
    return Derived


def _new_derived_arguments(base: type):
    """An empty instance of ``cot_arguments_class(base)`` (unpickling fills its state)."""
    cls = _derived_arguments_class(base)
    return cls.__new__(cls)


def check_cot_arguments(args) -> None:
    """The checks a COT arguments class runs when it is built: the COT fields' values, `use_liger_kernel`, and for
    TRL's `SFTConfig` the TRL options no COT mode combines with (`hf_cot.trl`)."""
    args._validate_cot_fields()
    args._refuse_liger()
    if any(_is_trl_sft_config(c) for c in type(args).__mro__):
        from .trl import _trl_conflict

        if conflict := _trl_conflict(args):
            raise ValueError(conflict)


def _arguments_base(cls: type) -> type:
    """The `TrainingArguments` class a COT arguments class adds its fields to (`SFTConfig` for `COTSFTConfig`)."""
    return next(c for c in cls.__mro__ if issubclass(c, TrainingArguments) and not issubclass(c, COTArgumentsMixin))


def _own_copy(value):
    """``value`` for the converted arguments: containers and dataclasses (`AcceleratorConfig`) copied, as some are
    edited in place (TRL's `SFTTrainer` edits `gradient_checkpointing_kwargs`, `__post_init__` edits `fsdp_config`), so
    that the caller's arguments stay as they are; anything else shared, as it is (a copy of an object without
    ``__eq__`` would no longer equal the caller's)."""
    if not isinstance(value, (dict, list, set)) and not (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    ):
        return value
    try:
        return copy.deepcopy(value)
    except (TypeError, RuntimeError, copy.Error):  # an element that cannot be copied (a lock, a non-leaf tensor)
        return copy.copy(value)


def _cot_defaults() -> dict:
    return {
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(COTArgumentsMixin)
    }


def _with_cot_fields(args, cls: type):
    """``args`` as an instance of ``cls``, a COT subclass of its class: its state copied as it is after its
    ``__post_init__`` (not rebuilt from `to_dict`, which masks every ``*_token`` and turns enums and configs into
    strings and dicts), the COT fields at their defaults.

    The run's state that `__post_init__` derived from the fields (the device, the DeepSpeed config and plugin) is
    shared: a second DeepSpeed config would replace the one transformers registers globally."""
    converted = cls.__new__(cls)
    state = dict(vars(args))
    state.update({f.name: _own_copy(getattr(args, f.name)) for f in dataclasses.fields(args) if hasattr(args, f.name)})
    state.update(_cot_defaults())
    converted.__dict__.update(state)
    return converted


def _rebuilt_as(args, cls: type, stacklevel: int):
    """``args`` rebuilt as ``cls``, whose base its class is not (a `TrainingArguments` for a trainer that needs an
    `SFTConfig`), as TRL's `SFTTrainer` converts it: its values into ``cls``, which runs its own ``__post_init__``,
    the fields ``cls`` lacks named in a warning. The values as they are, not `to_dict`'s masks."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    values.pop("push_to_hub_token", None)  # transformers 4.x's deprecated alias, already copied into hub_token
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    dropped = sorted(k for k in values if k not in names)
    if dropped:
        warnings.warn(
            f"{type(args).__name__} converted to {cls.__name__}, which has no {', '.join(dropped)}: those values are "
            f"dropped. Pass {cls.__name__} directly to keep them.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    return cls(**{k: _own_copy(v) for k, v in values.items() if k in names})


def as_cot_arguments(args, cls, default_output_dir: str = "tmp_trainer", stacklevel: int = 4):
    """The arguments a COT trainer runs with, given what its caller passed, as the parent trainers do it.

    ``None``: ``cls(output_dir=default_output_dir)`` (the parent's own default). COT arguments, and anything that is
    not a `TrainingArguments` (refused by the trainer's check), unchanged. Any other `TrainingArguments` keeps its
    class, fields and values: it becomes an instance of `cot_arguments_class` of its class (a subclass of it) holding
    a copy of its state, with the COT fields at their defaults; the caller's object is left as it is. Only where its
    class is not one the trainer needs (``cls``'s base: a `TrainingArguments` given to `COTSFTTrainer`, which needs
    an `SFTConfig`) is it rebuilt as ``cls``, as TRL's `SFTTrainer` converts one (the fields ``cls`` lacks are named
    in a warning). Either way the checks of ``cls.__post_init__`` run on the result (`check_cot_arguments`).
    ``stacklevel``: of the caller's frame for warnings, counted from here.
    """
    if args is not None and (isinstance(args, COTArgumentsMixin) or not isinstance(args, TrainingArguments)):
        return args
    if args is None:
        logger.info(f"No arguments passed, using {cls.__name__}(output_dir={default_output_dir!r}).")
        return cls(output_dir=default_output_dir)
    if isinstance(args, _arguments_base(cls)):
        target = cot_arguments_class(type(args))
        converted = _with_cot_fields(args, target)
        check_cot_arguments(converted)
    else:
        converted = _rebuilt_as(args, cls, stacklevel)
    built = type(converted)
    how = (
        f"a dataclass with bases (hf_cot.COTArgumentsMixin, {type(args).__name__})"
        if "_cot_derived_from" in vars(built)
        else built.__name__
    )
    logger.warning(
        f"{type(args).__name__} converted to {built.__name__}: the COT fields take their defaults "
        f"(cot_mode={converted.cot_mode!r}). Pass {how} to choose them."
    )
    return converted


def given_arguments(args: tuple, kwargs: dict):
    """The `args` a Trainer constructor call received (the keyword, or the second positional), None if none."""
    return kwargs.get("args", args[1] if len(args) > 1 else None)


def with_cot_arguments(args: tuple, kwargs: dict, cls, default_output_dir: str) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a COT trainer's constructor call with no `args`, or `TrainingArguments` without the COT
    fields, replaced by COT arguments (`as_cot_arguments`; ``cls``: the trainer's own class), where the call passed
    them."""
    given = given_arguments(args, kwargs)
    if isinstance(given, COTArgumentsMixin):
        return args, kwargs
    converted = as_cot_arguments(given, cls, default_output_dir)
    if len(args) > 1:
        return (args[0], converted, *args[2:]), kwargs
    return args, {**kwargs, "args": converted}
