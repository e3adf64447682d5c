"""Test-set complement entropy for any `transformers.Trainer`, also where `evaluate()` gives no logits."""

from __future__ import annotations

import torch

from .losses import complement_normalizer, per_sample_complement_entropy
from .modeling import aligned_targets, batch_labels


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
    label_names = getattr(trainer, "label_names", None)
    model = trainer.model
    was_training = model.training
    model.eval()
    sums, counts, num_classes = [], [], None
    try:  # the model goes back to its mode even when a batch fails
        for inputs in trainer.get_test_dataloader(dataset):
            inputs = trainer._prepare_inputs(inputs)
            labels, shift = batch_labels(model, inputs, label_names)  # a clear error when the batch has none
            with trainer.compute_loss_context_manager():
                outputs = model(**inputs)
            pairs = aligned_targets(model, outputs, labels, shift)
            num_classes = pairs[0][0].shape[-1]
            per_target = [per_sample_complement_entropy(logits, target) for logits, target in pairs]
            per_sample, per_count = sum(s for s, _ in per_target), sum(c for _, c in per_target)
            sums.append(trainer.accelerator.gather_for_metrics(per_sample).cpu())
            counts.append(trainer.accelerator.gather_for_metrics(per_count).cpu())
    finally:
        model.train(was_training)
    total = int(torch.cat(counts).sum()) if counts else 0
    if total == 0:
        raise ValueError("evaluate_complement_entropy: the dataset has no valid labels (all -100, or empty)")
    entropy = float(torch.cat(sums).double().sum() / total)
    return {
        f"{metric_key_prefix}_complement_entropy": entropy,
        f"{metric_key_prefix}_normalized_complement_entropy": entropy / complement_normalizer(num_classes, "log"),
    }
