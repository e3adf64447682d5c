"""hf-cot: Complement Objective Training (Chen et al., ICLR 2019) for Hugging Face `transformers.Trainer`.

Imports are lazy (as in TRL and Liger-Kernel): ``from hf_cot import complement_entropy`` loads only torch and the
loss module; transformers is imported when a trainer or an arguments class is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "COTTrainer": "trainer",
    "COTSeq2SeqTrainer": "trainer",
    "COTMixin": "trainer",
    "COTTrainingArguments": "config",
    "COTSeq2SeqTrainingArguments": "config",
    "COTArgumentsMixin": "config",
    "COT_MODES": "config",
    "complement_entropy": "losses",
    "complement_objective": "losses",
    "complement_normalizer": "losses",
    "guided_complement_entropy": "losses",
    "linear_complement_entropy": "linear_losses",
    "evaluate_complement_entropy": "evaluation",
    "register_head": "heads",
    "AlignmentMismatchError": "alignment_check",
}

__all__ = [
    "COTTrainer",
    "COTSeq2SeqTrainer",
    "COTMixin",
    "COTTrainingArguments",
    "COTSeq2SeqTrainingArguments",
    "COTArgumentsMixin",
    "COT_MODES",
    "complement_entropy",
    "complement_objective",
    "complement_normalizer",
    "guided_complement_entropy",
    "linear_complement_entropy",
    "evaluate_complement_entropy",
    "register_head",
    "AlignmentMismatchError",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve in __getattr__
    from .alignment_check import AlignmentMismatchError
    from .config import COT_MODES, COTArgumentsMixin, COTSeq2SeqTrainingArguments, COTTrainingArguments
    from .evaluation import evaluate_complement_entropy
    from .heads import register_head
    from .linear_losses import linear_complement_entropy
    from .losses import complement_entropy, complement_normalizer, complement_objective, guided_complement_entropy
    from .trainer import COTMixin, COTSeq2SeqTrainer, COTTrainer


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_cot' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
