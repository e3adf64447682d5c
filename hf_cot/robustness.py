"""Single-step FGSM in input-embedding space, to compare how robust COT- and CE-trained classifiers are.

Why: the COT paper reports that flattening the wrong-class probabilities makes models more robust to single-step
adversarial attacks (FGSM, Goodfellow et al. 2015). Text is discrete, so the attack is applied where the model
becomes continuous: the word embeddings. For each example the gradient of the cross-entropy loss with respect to
its word embeddings ``e`` is computed and the model is evaluated on ``e + epsilon * sign(grad)``; padding positions
are left untouched. ``epsilon`` is in embedding units: for BERT-like models the word-embedding coordinates have a
standard deviation of a few hundredths, so useful values are around 0.001 to 0.1.

The model is put in eval mode (no dropout, so each example's gradient depends on that example only and the result
does not depend on the batch size), its training flag is restored afterwards, and gradients are taken with
``torch.autograd.grad`` with respect to the embeddings only, so no parameter ``.grad`` is created or changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["fgsm_embedding_accuracy", "format_fgsm_results"]

# Batch keys the attack uses; anything else in a dataset row (text, ids, ...) is dropped before collation.
_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "label", "label_ids")


def _make_loader(data, batch_size: int, data_collator):
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        return data
    if data_collator is None:
        from transformers import default_data_collator

        data_collator = default_data_collator

    def collate(rows):
        return data_collator([{k: row[k] for k in _MODEL_KEYS if k in row} for row in rows])

    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)


def _labels(batch) -> torch.Tensor:
    for key in ("labels", "label", "label_ids"):
        if key in batch and batch[key] is not None:
            return torch.as_tensor(batch[key])
    raise KeyError("each batch needs the gold class ids under 'labels' (or 'label' / 'label_ids')")


def _logits(model, embeds, attention_mask, token_type_ids) -> torch.Tensor:
    kwargs = {"inputs_embeds": embeds, "attention_mask": attention_mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    if logits.dim() != 2 or logits.shape[-1] < 2:
        raise ValueError(
            f"FGSM accuracy needs single-label classification logits of shape [batch, num_labels >= 2], "
            f"got {tuple(logits.shape)}"
        )
    return logits


def fgsm_embedding_accuracy(
    model,
    dataset_or_dataloader,
    epsilons: Sequence[float] | Iterable[float],
    *,
    batch_size: int = 32,
    data_collator=None,
    device=None,
) -> dict[float, float]:
    """Accuracy of a sequence classifier under a single-step FGSM attack on its word embeddings.

    Args:
        model: a ``*ForSequenceClassification``-style model: ``get_input_embeddings()`` and a forward that accepts
            ``inputs_embeds`` / ``attention_mask`` (/ ``token_type_ids``) and returns logits ``[batch, num_labels]``.
        dataset_or_dataloader: a ``torch.utils.data.DataLoader`` yielding dict batches (used as is), or a dataset
            of tokenized rows (``input_ids``, optional ``attention_mask`` / ``token_type_ids``, and ``label`` or
            ``labels``); other columns are ignored.
        epsilons: perturbation sizes (L-infinity, in embedding units); 0 gives the clean accuracy.
        batch_size: batch size when a dataset is given.
        data_collator: collator when a dataset is given. The default, ``transformers.default_data_collator``, does
            not pad: pass ``DataCollatorWithPadding(tokenizer)`` for rows of different lengths.
        device: where to run; default the device of the model's parameters.

    Returns:
        ``{epsilon: accuracy}`` in the order the epsilons were given.
    """
    eps_list = list(dict.fromkeys(float(e) for e in epsilons))  # ordered, without duplicates
    if not eps_list:
        raise ValueError("epsilons must not be empty")
    if any(not e >= 0 for e in eps_list):
        raise ValueError(f"epsilons must be >= 0, got {eps_list}")
    if device is None:
        device = next(model.parameters()).device
    loader = _make_loader(dataset_or_dataloader, batch_size, data_collator)
    embedding = model.get_input_embeddings()
    correct = dict.fromkeys(eps_list, 0)
    total = 0
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            input_ids = torch.as_tensor(batch["input_ids"]).to(device)
            labels = _labels(batch).to(device).long()
            attention_mask = batch.get("attention_mask")
            attention_mask = (
                torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask).to(device)
            )
            token_type_ids = batch.get("token_type_ids")
            if token_type_ids is not None:
                token_type_ids = torch.as_tensor(token_type_ids).to(device)

            with torch.enable_grad():
                embeds = embedding(input_ids).detach().requires_grad_(True)
                logits = _logits(model, embeds, attention_mask, token_type_ids)
                # Summed, so each example's gradient is its own loss's gradient whatever the batch size.
                loss = F.cross_entropy(logits.float(), labels, reduction="sum")
                (grad,) = torch.autograd.grad(loss, embeds)
            direction = grad.sign() * attention_mask.unsqueeze(-1).to(grad.dtype)
            embeds = embeds.detach()
            with torch.no_grad():
                for eps in eps_list:
                    adv_logits = _logits(model, embeds + eps * direction, attention_mask, token_type_ids)
                    correct[eps] += int((adv_logits.argmax(dim=-1) == labels).sum())
            total += labels.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("the dataset is empty")
    return {eps: correct[eps] / total for eps in eps_list}


def format_fgsm_results(results: dict[float, float], prefix: str = "fgsm_accuracy_eps_") -> dict[str, float]:
    """Flat metric names for ``all_results.json``: ``{0.01: 0.8}`` -> ``{"fgsm_accuracy_eps_0.01": 0.8}``.

    Epsilons are written with ``%g`` (``0``, ``0.001``, ``1e-05``), so equal values give equal keys.
    """
    return {f"{prefix}{float(eps):g}": float(acc) for eps, acc in results.items()}
