"""Test-set complement entropy for any `transformers.Trainer`, also where `evaluate()` gives no logits."""

from __future__ import annotations

import torch

from .losses import complement_normalizer, per_sample_complement_entropy
from .modeling import aligned_logits, shifts_labels, single_label_name


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
    label_name = single_label_name(getattr(trainer, "label_names", None))
    model = trainer.model
    shift = shifts_labels(model)
    was_training = model.training
    model.eval()
    sums, counts, num_classes = [], [], None
    try:  # the model goes back to its mode even when a batch fails
        for inputs in trainer.get_test_dataloader(dataset):
            inputs = trainer._prepare_inputs(inputs)
            if label_name not in inputs:
                raise ValueError(f"the batches have no {label_name!r} key (got {sorted(inputs)}): no labels to score")
            with trainer.compute_loss_context_manager():
                outputs = model(**inputs)
            logits, labels = aligned_logits(outputs, inputs[label_name], shift)
            num_classes = logits.shape[-1]
            per_sample, per_count = per_sample_complement_entropy(logits, labels)
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
