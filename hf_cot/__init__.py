"""hf-cot: Complement Objective Training (Chen et al., ICLR 2019) for Hugging Face `transformers.Trainer`."""

from .config import COT_MODES, COTSeq2SeqTrainingArguments, COTTrainingArguments
from .evaluation import evaluate_complement_entropy
from .losses import complement_entropy, complement_normalizer, complement_objective, guided_complement_entropy
from .trainer import COTSeq2SeqTrainer, COTTrainer

__version__ = "0.1.0"

__all__ = [
    "COTTrainer",
    "COTSeq2SeqTrainer",
    "COTTrainingArguments",
    "COTSeq2SeqTrainingArguments",
    "COT_MODES",
    "complement_entropy",
    "complement_objective",
    "complement_normalizer",
    "guided_complement_entropy",
    "evaluate_complement_entropy",
]
