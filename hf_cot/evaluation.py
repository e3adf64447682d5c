"""Test-set complement entropy for any `transformers.Trainer`, also where `evaluate()` gives no logits."""

from __future__ import annotations

import torch

from .losses import complement_entropy, complement_normalizer
from .trainer import _CAUSAL_SUFFIXES, _base_model


@torch.no_grad()
def evaluate_complement_entropy(trainer, dataset=None, metric_key_prefix: str = "eval") -> dict[str, float]:
    """Teacher-forced mean complement entropy (nats, per valid label) of ``trainer.model`` on ``dataset``.

    A classifier's complement entropy comes out of `evaluate()` through `compute_metrics` (its logits come back), but
    a seq2seq model evaluated with `predict_with_generate` returns generated tokens, not logits, and gathering
    [tokens x vocabulary] logits would not fit in memory anyway. This runs one forward per batch (labels passed, so the
    model builds its own decoder inputs) and keeps two numbers per sample. Works with a plain `Trainer` /
    `Seq2SeqTrainer` (the CE baseline) as with the COT trainers, and across processes (`gather_for_metrics` drops the
    duplicated samples that pad the last batch). Causal LM heads are shifted by one position, as their loss is.

    Returns ``{prefix}_complement_entropy`` and ``{prefix}_normalized_complement_entropy`` (divided by log(K - 1):
    1.0 means perfectly flat wrong classes).
    """
    dataset = trainer.eval_dataset if dataset is None else dataset
    if dataset is None:
        raise ValueError("evaluate_complement_entropy needs a dataset (or the trainer's eval_dataset)")
    label_names = getattr(trainer, "label_names", None) or ["labels"]
    if len(label_names) != 1:
        raise ValueError(f"evaluate_complement_entropy needs exactly one label tensor, got label_names={label_names}")
    model = trainer.model
    causal = type(_base_model(model)).__name__.endswith(_CAUSAL_SUFFIXES)
    was_training = model.training
    model.eval()
    sums, counts, num_classes = [], [], None
    for inputs in trainer.get_test_dataloader(dataset):
        inputs = trainer._prepare_inputs(inputs)
        if label_names[0] not in inputs:
            raise ValueError(f"the batches have no {label_names[0]!r} key (got {sorted(inputs)}): no labels to score")
        labels = inputs[label_names[0]]
        with trainer.compute_loss_context_manager():
            outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if causal:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        num_classes = logits.shape[-1]
        per_position = complement_entropy(logits, labels, reduction="none")
        # One value per sample (sequence positions summed), so gather_for_metrics can drop the padding samples.
        dims = tuple(range(1, labels.dim()))
        per_sample = per_position.sum(dim=dims) if dims else per_position
        per_count = (labels != -100).sum(dim=dims) if dims else (labels != -100).long()
        sums.append(trainer.accelerator.gather_for_metrics(per_sample.float()).cpu())
        counts.append(trainer.accelerator.gather_for_metrics(per_count).cpu())
    model.train(was_training)
    total = int(torch.cat(counts).sum()) if counts else 0
    if total == 0:
        raise ValueError("evaluate_complement_entropy: the dataset has no valid labels (all -100, or empty)")
    entropy = float(torch.cat(sums).double().sum() / total)
    return {
        f"{metric_key_prefix}_complement_entropy": entropy,
        f"{metric_key_prefix}_normalized_complement_entropy": entropy / complement_normalizer(num_classes, "log"),
    }
