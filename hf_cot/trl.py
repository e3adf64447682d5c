"""COT for TRL's `SFTTrainer`: `COTSFTConfig` and `COTSFTTrainer`, the same two-line swap as for `Trainer`.

```python
-from trl import SFTConfig, SFTTrainer
+from hf_cot.trl import COTSFTConfig as SFTConfig, COTSFTTrainer as SFTTrainer
```

What TRL does differently from `Trainer` (read on TRL 1.16.0), and how the COT modes match it:

* Loss: TRL runs the model with `fused_lm_head=True` (a patched forward that never builds the `[tokens, vocab]` logits)
  and divides the summed NLL of the shifted labels by `num_items_in_batch` (the tokens of the whole accumulation
  window on all ranks), times the number of processes. The COT modes use their own fused head in its place
  (`hf_cot.fused_lm_head`, `cot_fused_lm_head`: one chunked pass gives the NLL, the complement entropy and TRL's
  metrics, never the full logits) and normalize by the window's next-token targets: the reported `loss` is the
  number TRL reports, except on transformers < 5 (4.57 checked) with data whose first token is labelled, where the
  Trainer's `num_items_in_batch` also counts position 0 (never a target; fixed in transformers 5) and TRL's loss is
  the token mean times targets / labels.
* Metrics: TRL logs `entropy` (of the full softmax), `mean_token_accuracy` and `num_tokens`, computed from its fused
  head. The COT modes compute the same three from theirs (or from the logits where the fused head does not apply),
  next to `complement_loss` / `complement_entropy`.
* Everything else - datasets (prompt/completion, conversational, completion-only and assistant-only loss via `-100`
  labels), packing and padding-free batches, PEFT, the model card with TRL's tags - is `SFTTrainer`'s own.

Refused in the COT modes by `COTSFTConfig` itself, with a message: `use_liger_kernel` (Liger replaces the forward and
its loss; refused by every COT arguments class) and `loss_type="dft"` (a reweighted NLL; COT's objective is defined on
the plain CE).
"""

from __future__ import annotations

from dataclasses import dataclass

try:
    import trl
except ImportError as err:  # pragma: no cover - exercised in a subprocess without trl
    raise ImportError(
        "hf_cot.trl needs TRL: install it with `pip install 'hf-cot[trl]'` (or `pip install trl`)"
    ) from err

import torch

from .config import COTArgumentsMixin
from .fused_lm_head import FusedCOTOutput
from .model_card import TAGS
from .modeling import aligned_targets, batch_labels
from .trainer import COTMixin

__all__ = ["COTSFTConfig", "COTSFTTrainer"]


# loss_type values that are the plain token-averaged NLL: TRL 1.9-1.x defaults to None (resolved in __post_init__)
# and then "chunked_nll", which TRL documents as the same math as "nll" computed in chunks.
PLAIN_NLL = (None, "nll", "chunked_nll")


def _trl_conflict(config) -> str | None:
    """What in an `SFTConfig` cannot be combined with a COT mode (None when nothing)."""
    if config.cot_mode == "off":
        return None
    if getattr(config, "loss_type", "nll") not in PLAIN_NLL:
        return (
            f"loss_type={config.loss_type!r} cannot be combined with cot_mode={config.cot_mode!r}: COT's objective is "
            "built on the plain cross-entropy (loss_type='nll')."
        )
    return None


@dataclass(repr=False)  # TrainingArguments.__repr__ masks the tokens; a generated one would not
class COTSFTConfig(COTArgumentsMixin, trl.SFTConfig):
    """`trl.SFTConfig` plus the COT fields (see `hf_cot.COTArgumentsMixin`)."""

    def __post_init__(self):
        self._validate_cot_fields()
        self._refuse_liger()
        conflict = _trl_conflict(self)  # refused here, before a trainer patches or tags any model
        if conflict:
            raise ValueError(conflict)
        super().__post_init__()


class COTSFTTrainer(COTMixin, trl.SFTTrainer):
    """`trl.SFTTrainer` with Complement Objective Training. Needs `COTSFTConfig`. `cot_mode="off"` is `SFTTrainer`."""

    _args_class_name = "COTSFTConfig"
    _args_class = COTSFTConfig
    _parent_logs_metrics = True  # SFTTrainer.log averages the shared `_metrics` store (ours included)
    _composes_with = (trl.SFTTrainer,)  # its compute_loss runs in `off`; the COT modes replace it (compute_loss below)
    # The card's method and citation slots stay SFTTrainer's (it names no paper); the COT paper goes into the card's
    # own COT section. In cot_mode="off" the tags are SFTTrainer's too (`__init__`), so that the card is its card.
    _paper = trl.SFTTrainer._paper
    _tag_names = ["trl", "sft", *TAGS]

    def _default_output_dir(self, model) -> str:
        """SFTTrainer's default: ``<model name>-SFT``."""
        name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "") or ""
        return f"{name.rstrip('/').split('/')[-1] or 'model'}-SFT"

    def __init__(self, *args, **kwargs):
        args, kwargs = self._with_cot_arguments(args, kwargs)
        config = self._given_arguments(args, kwargs)
        if getattr(config, "cot_mode", None) == "off":
            self._tag_names = trl.SFTTrainer._tag_names
        elif isinstance(config, COTArgumentsMixin):  # checked again: fields may have changed after creation
            config._refuse_liger()
            if conflict := _trl_conflict(config):
                raise ValueError(conflict)
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.cot_mode == "off":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs = {**inputs, "use_cache": False}  # as TRL: no cache (and no warning under gradient checkpointing)
        loss, outputs = COTMixin.compute_loss(self, model, inputs, True, num_items_in_batch)
        self._log_trl_metrics(mode, outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _log_trl_metrics(self, mode: str, outputs, inputs: dict) -> None:
        """TRL's `entropy`, `mean_token_accuracy` and `num_tokens` (sft_trainer.py, TRL 1.16), from the fused head's
        per-token terms or from the full logits."""
        if isinstance(outputs, FusedCOTOutput):
            valid, entropy, correct = outputs.valid, outputs.entropy, outputs.is_top1
        else:
            ((logits, labels),) = aligned_targets(
                self.model, outputs, *batch_labels(self.model, inputs, self._label_names)
            )
            valid = labels != -100
            logits = logits.float()
            log_p = torch.log_softmax(logits, dim=-1)
            entropy = -(log_p.exp() * log_p).sum(-1)
            correct = (logits.argmax(-1) == labels) & valid
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(valid.sum()).sum()
        entropy_sum = gather(entropy.masked_fill(~valid, 0.0).sum()).sum()
        num_correct = gather(correct.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                num_tokens = gather(inputs["attention_mask"].sum()).sum().item()
            elif "position_ids" in inputs:  # padding-free batches
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
                num_tokens = gather(local).sum().item()
            else:
                raise ValueError("Expected 'attention_mask' or 'position_ids' in inputs.")
            self._total_train_tokens += num_tokens // getattr(self, "_tp_size", 1)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        aux_loss = getattr(outputs, "aux_loss", None)
        if getattr(self, "aux_loss_enabled", False) and aux_loss is not None:  # TRL's MoE router-loss metric
            self._metrics[mode]["aux_loss"].append(gather(aux_loss.detach()).mean().item())
