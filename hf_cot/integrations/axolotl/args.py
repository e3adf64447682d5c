"""The COT keys of an axolotl YAML, and the options a COT mode cannot be combined with, refused when axolotl
validates the config (before any model is loaded)."""

from __future__ import annotations

import dataclasses
import importlib
from types import SimpleNamespace

from pydantic import BaseModel, Field, field_validator, model_validator

from ...config import COTArgumentsMixin

# The Trainer arguments' fields: the YAML keys take their defaults and help text from there (one home for both).
_FIELDS = {f.name: f for f in dataclasses.fields(COTArgumentsMixin)}


def _key(name: str):
    """The pydantic field of YAML key ``name``: the dataclass field's default, its help as the description."""
    field = _FIELDS[name]
    return Field(default=field.default, json_schema_extra={"description": field.metadata.get("help", "")})


# axolotl options that replace the loss or the training objective: COT computes the loss itself, so they cannot run
# together with a COT mode. key -> what it does.
LOSS_OPTIONS = {
    "chunked_cross_entropy": "axolotl's chunked cross-entropy replaces the model's loss function",
    "liger_cross_entropy": "Liger's cross-entropy kernel replaces the model's loss",
    "liger_fused_linear_cross_entropy": "Liger's fused linear cross-entropy computes the loss inside the forward and "
    "returns no logits",
    "cut_cross_entropy": "Cut Cross-Entropy computes the loss inside the forward and returns no logits",
    "use_eaft": "EAFT reweights each token's loss",
    "orpo_alpha": "ORPO adds its odds-ratio preference loss",
    "reward_model": "reward-model training fits a scalar head with a pairwise loss",
    "process_reward_model": "process-reward-model training fits a token classifier",
    "kd_trainer": "knowledge distillation trains on a teacher's logits",
}
_CUT_CROSS_ENTROPY_PLUGIN = "cut_cross_entropy.CutCrossEntropyPlugin"  # its key defaults to true when it is listed


def axolotl_conflict(data: dict) -> str | None:
    """What in a raw axolotl config cannot run with its COT mode (None when nothing, or when cot_mode is off)."""
    mode = _mode(data.get("cot_mode", _FIELDS["cot_mode"].default))
    if mode == "off":
        return None
    fix = "remove it, or set `cot_mode: off` to train with it and without COT"
    if data.get("rl"):
        return (
            f"`rl: {data['rl']}` cannot be combined with cot_mode={mode!r}: it trains a preference / reinforcement "
            f"objective with TRL's trainers, and COT is a supervised cross-entropy objective; {fix}"
        )
    plugins = [str(p) for p in data.get("plugins") or []]
    cce_default = any(p.endswith(_CUT_CROSS_ENTROPY_PLUGIN) for p in plugins)
    for key, what in LOSS_OPTIONS.items():
        value = data.get(key, cce_default if key == "cut_cross_entropy" else None)
        if value:
            return (
                f"`{key}` cannot be combined with cot_mode={mode!r}: {what}, and COT computes the loss itself; {fix}"
            )
    for key in ("context_parallel_size", "sequence_parallel_degree"):
        if (data.get(key) or 1) > 1:
            return (
                f"`{key}: {data[key]}` cannot be combined with cot_mode={mode!r}: it splits each sequence across "
                f"ranks, which COT's loss normalization does not handle yet; {fix}"
            )
    if data.get("trainer_cls"):
        module, _, name = str(data["trainer_cls"]).rpartition(".")
        from ...trainer import COTMixin

        if not (module and issubclass(getattr(importlib.import_module(module), name), COTMixin)):
            return (
                f"`trainer_cls: {data['trainer_cls']}` is not a COT trainer: with cot_mode={mode!r} the plugin "
                "supplies the trainer; subclass hf_cot.integrations.axolotl.trainer.AxolotlCOTTrainer for your own"
            )
    if mode == "alternating":
        if data.get("deepspeed"):
            return (
                "cot_mode='alternating' cannot run under DeepSpeed (DeepSpeed owns the optimizer step, so a second "
                "optimizer has no gradients to step on): use cot_mode: joint or guided, or FSDP2"
            )
        scheduler = data.get("alternate_lr_scheduler_type")
        lr = data.get("complement_learning_rate")
        if scheduler in ("one_cycle", "rex") and lr is not None and lr != data.get("learning_rate"):
            return (
                f"`alternate_lr_scheduler_type: {scheduler}` sets its peak from learning_rate, so the complement "
                f"optimizer cannot follow it at complement_learning_rate={lr}: leave complement_learning_rate unset, "
                "or pick another scheduler"
            )
    return None


def _mode(value):
    # YAML 1.1 reads an unquoted `off` as false (and `on` as true): `cot_mode: off` means "off".
    return "off" if value is False else value


class COTArgs(BaseModel):
    """The COT keys of an axolotl config (`plugins: [hf_cot.integrations.axolotl.COTPlugin]`). Defaults and meaning
    are those of `hf_cot.COTTrainingArguments`."""

    cot_mode: str = _key("cot_mode")
    complement_learning_rate: float | None = _key("complement_learning_rate")
    complement_weight: float = _key("complement_weight")
    guided_alpha: float = _key("guided_alpha")
    complement_normalization: str = _key("complement_normalization")
    complement_every: int = _key("complement_every")
    cot_fused_lm_head: bool | None = _key("cot_fused_lm_head")
    class_weights: list[float] | None = _key("class_weights")

    @field_validator("class_weights")
    @classmethod
    def _no_class_weights(cls, value):
        if value is not None:  # axolotl fine-tunes language models, whose classes are the vocabulary
            raise ValueError("class_weights apply to classification heads; axolotl trains language models: remove it")
        return value

    @field_validator("cot_mode", mode="before")
    @classmethod
    def _off_from_yaml(cls, value):
        if value is True:
            raise ValueError("cot_mode: true is not a mode: use alternating, joint, guided or off")
        return _mode(value)

    @model_validator(mode="before")
    @classmethod
    def _refuse_conflicts(cls, data):
        if isinstance(data, dict) and (conflict := axolotl_conflict(data)):
            raise ValueError(conflict)
        return data

    @model_validator(mode="after")
    def _validate_cot_fields(self):
        # The same checks as COTTrainingArguments, on the parsed values.
        COTArgumentsMixin._validate_cot_fields(SimpleNamespace(**{k: getattr(self, k) for k in _FIELDS}))
        return self
