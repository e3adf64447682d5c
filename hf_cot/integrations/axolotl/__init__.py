"""COT as an axolotl plugin: two lines of YAML.

```yaml
plugins:
  - hf_cot.integrations.axolotl.COTPlugin
cot_mode: joint          # alternating | joint | guided | off (quote it or not: YAML's `off` is read as false)
```

Every field of `hf_cot.COTArgumentsMixin` is a YAML key (`complement_weight`, `complement_learning_rate`, ...), checked
when axolotl validates the config, where options that replace the loss are refused too (`args.COTArgs`). The trainer is
axolotl's own `AxolotlTrainer` with COT underneath it (`trainer.AxolotlCOTTrainer`), so axolotl's samplers, schedulers,
metrics (`ppl`, `tokens/*`) and checkpoints stay axolotl's. Written against axolotl 0.19.0.
"""

from __future__ import annotations

try:
    from axolotl.integrations.base import BasePlugin
except ImportError as err:  # pragma: no cover - exercised in a subprocess without axolotl
    raise ImportError(
        "hf_cot.integrations.axolotl is an axolotl plugin: install axolotl (`pip install 'hf-cot[axolotl]'`, "
        "tested with axolotl 0.19.0)"
    ) from err

from ...config import COTArgumentsMixin

__all__ = ["COTPlugin"]

COT_FIELDS = tuple(COTArgumentsMixin.__dataclass_fields__)


class COTPlugin(BasePlugin):
    """Adds Complement Objective Training to axolotl's supervised fine-tuning (`hf_cot.integrations.axolotl`)."""

    def get_input_args(self) -> str:
        return "hf_cot.integrations.axolotl.args.COTArgs"

    def get_training_args_mixin(self) -> str:
        # axolotl mixes this dataclass into its AxolotlTrainingArguments: the COT trainer finds its fields there.
        return "hf_cot.config.COTArgumentsMixin"

    def get_training_args(self, cfg) -> dict:
        return {name: cfg[name] for name in COT_FIELDS}

    def get_trainer_cls(self, cfg):
        if cfg.cot_mode == "off":  # exactly axolotl's own trainer
            return None
        if cfg.trainer_cls:  # a COT subclass, checked when the config was validated
            from axolotl.utils.import_helper import get_cls_from_module_str

            return get_cls_from_module_str(cfg.trainer_cls)
        from .trainer import AxolotlCOTTrainer  # imported late: axolotl builds its argument classes on import

        return AxolotlCOTTrainer
