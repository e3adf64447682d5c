"""Adversarial attacks in input-embedding space (FGSM and multi-step PGD), to compare how robust COT- and CE-trained
classifiers are.

Why: the COT paper reports that flattening the wrong-class probabilities makes models more robust to single-step
adversarial attacks (FGSM, Goodfellow et al. 2015). A flatter softmax is also a known way to weaken one gradient step
without making the model more robust (gradient masking), so a single-step number alone cannot tell the two apart:
projected gradient descent (PGD, Madry et al. 2018), many small steps from a random start, is the standard check.

Text is discrete, so the attacks are applied where the model becomes continuous: the word embeddings ``e``. Both are
L-infinity attacks of radius ``epsilon`` on all non-padding positions (padding is left untouched):

* FGSM: ``e + epsilon * sign(grad)``, the gradient taken at ``e``.
* PGD: from ``e + delta_0`` (``delta_0`` uniform in ``[-epsilon, epsilon]`` with ``random_start``, else 0), ``steps``
  times ``delta <- clip(delta + step_size * sign(grad at e + delta), -epsilon, epsilon)``.

The gradient is that of an attack loss the attack maximizes: ``"ce"``, the cross-entropy of the gold class, or
``"margin"``, ``max_{j != y} z_j - z_y`` on the logits ``z`` (Carlini & Wagner 2017; it does not saturate when the
softmax does, so it is the stronger choice against flat or very confident outputs).

An example counts as correct under attack only if the model is right on **every** point the attack visits: the clean
input, the random start and every iterate (FGSM: the clean input and the one step). So accuracy under attack never
exceeds clean accuracy, and with the same start and step size, more PGD steps never raise it. An example is no
longer attacked once it is broken.

``epsilon`` is in embedding units: for BERT-like models the word-embedding coordinates have a standard deviation of a
few hundredths, so useful values are around 0.001 to 0.1.

The model is put in eval mode (no dropout, so each example's gradient depends on that example only and the result
does not depend on the batch size), its training flag is restored afterwards, and gradients are taken with
``torch.autograd.grad`` with respect to the embeddings only, so no parameter ``.grad`` is created or changed. PGD's
random start is drawn on the CPU from a generator seeded with ``seed``, one example after the other in dataset order,
so it is reproducible and the same for any batch size or device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "ATTACK_LOSSES",
    "attack_loss",
    "check_attack_arguments",
    "eval_mode",
    "fgsm_embedding_accuracy",
    "format_fgsm_results",
    "pgd_embedding_accuracy",
]

# Batch keys the attack uses; anything else in a dataset row (text, ids, ...) is dropped before collation.
_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "label", "label_ids")
# The losses an attack can maximize: the gold class's cross-entropy, or the best wrong logit minus the gold logit.
ATTACK_LOSSES = ("ce", "margin")


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


@dataclass
class _Batch:
    """One collated batch in embedding space: the clean word embeddings (detached) and what the forward needs."""

    embeds: torch.Tensor  # [batch, seq, dim]
    attention_mask: torch.Tensor  # [batch, seq]; 0 = padding, never perturbed
    token_type_ids: torch.Tensor | None
    labels: torch.Tensor  # [batch]

    def logits(self, model, embeds: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for ``embeds``, which hold the batch's rows ``rows`` (all rows when None)."""
        kwargs = {"inputs_embeds": embeds, "attention_mask": self._take(self.attention_mask, rows)}
        if self.token_type_ids is not None:
            kwargs["token_type_ids"] = self._take(self.token_type_ids, rows)
        out = model(**kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if logits.dim() != 2 or logits.shape[-1] < 2:
            raise ValueError(
                f"accuracy under attack needs single-label classification logits of shape "
                f"[batch, num_labels >= 2], got {tuple(logits.shape)}"
            )
        return logits

    def at(self, delta: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The clean embeddings of ``rows`` plus a float32 perturbation, in the embeddings' dtype."""
        embeds = self._take(self.embeds, rows)
        return (embeds.float() + delta).to(embeds.dtype)

    def wrong(self, model, embeds: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Whether the model misclassifies each of ``rows`` at ``embeds`` (no gradient)."""
        with torch.no_grad():
            return self.logits(model, embeds, rows).argmax(dim=-1) != self._take(self.labels, rows)

    def signed_gradient(self, model, embeds: torch.Tensor, loss: str, rows: torch.Tensor | None = None):
        """(whether each row is misclassified at ``embeds``, sign of the attack loss's gradient there, 0 on padding)."""
        labels = self._take(self.labels, rows)
        with torch.enable_grad():
            embeds = embeds.detach().requires_grad_(True)
            logits = self.logits(model, embeds, rows)
            # Summed, so each example's gradient is its own loss's gradient whatever the batch size.
            (grad,) = torch.autograd.grad(attack_loss(logits.float(), labels, loss), embeds)
        mask = self._take(self.attention_mask, rows).unsqueeze(-1)
        return logits.detach().argmax(dim=-1) != labels, grad.sign().float() * mask.float()

    @staticmethod
    def _take(tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return tensor if rows is None else tensor[rows]


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """The summed per-example loss the attack maximizes."""
    if loss == "ce":
        return F.cross_entropy(logits, labels, reduction="sum")
    gold = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[-1]).bool(), float("-inf"))
    return (others.max(dim=-1).values - gold).sum()


def check_attack_arguments(epsilons, loss: str) -> list[float]:
    eps_list = list(dict.fromkeys(float(e) for e in epsilons))  # ordered, without duplicates
    if not eps_list:
        raise ValueError("epsilons must not be empty")
    if any(not e >= 0 for e in eps_list):
        raise ValueError(f"epsilons must be >= 0, got {eps_list}")
    if loss not in ATTACK_LOSSES:
        raise ValueError(f"loss must be one of {ATTACK_LOSSES}, got {loss!r}")
    return eps_list


@contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _batches(model, data, batch_size: int, data_collator, device) -> Iterator[_Batch]:
    if device is None:
        device = next(model.parameters()).device
    embedding = model.get_input_embeddings()
    for batch in _make_loader(data, batch_size, data_collator):
        input_ids = torch.as_tensor(batch["input_ids"]).to(device)
        attention_mask = batch.get("attention_mask")
        attention_mask = (
            torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask).to(device)
        )
        token_type_ids = batch.get("token_type_ids")
        if token_type_ids is not None:
            token_type_ids = torch.as_tensor(token_type_ids).to(device)
        with torch.no_grad():
            embeds = embedding(input_ids).detach()
        yield _Batch(embeds, attention_mask, token_type_ids, _labels(batch).to(device).long())


def _accuracies(correct: dict[float, int], total: int) -> dict[float, float]:
    if total == 0:
        raise ValueError("the dataset is empty")
    return {eps: n / total for eps, n in correct.items()}


def fgsm_embedding_accuracy(
    model,
    dataset_or_dataloader,
    epsilons: Sequence[float] | Iterable[float],
    *,
    loss: str = "ce",
    batch_size: int = 32,
    data_collator=None,
    device=None,
) -> dict[float, float]:
    """Accuracy of a sequence classifier under a single-step FGSM attack on its word embeddings.

    An example counts as correct if the model is right on the clean input and on ``e + epsilon * sign(grad)``.

    Args:
        model: a ``*ForSequenceClassification``-style model: ``get_input_embeddings()`` and a forward that accepts
            ``inputs_embeds`` / ``attention_mask`` (/ ``token_type_ids``) and returns logits ``[batch, num_labels]``.
        dataset_or_dataloader: a ``torch.utils.data.DataLoader`` yielding dict batches (used as is), or a dataset
            of tokenized rows (``input_ids``, optional ``attention_mask`` / ``token_type_ids``, and ``label`` or
            ``labels``); other columns are ignored.
        epsilons: perturbation sizes (L-infinity, in embedding units); 0 gives the clean accuracy.
        loss: the loss whose gradient sign is the step: ``"ce"`` (the classic FGSM) or ``"margin"``.
        batch_size: batch size when a dataset is given.
        data_collator: collator when a dataset is given. The default, ``transformers.default_data_collator``, does
            not pad: pass ``DataCollatorWithPadding(tokenizer)`` for rows of different lengths.
        device: where to run; default the device of the model's parameters.

    Returns:
        ``{epsilon: accuracy}`` in the order the epsilons were given.
    """
    eps_list = check_attack_arguments(epsilons, loss)
    correct, total = dict.fromkeys(eps_list, 0), 0
    with eval_mode(model):
        for batch in _batches(model, dataset_or_dataloader, batch_size, data_collator, device):
            clean_wrong, direction = batch.signed_gradient(model, batch.embeds, loss)
            for eps in eps_list:
                broken = clean_wrong if eps == 0 else clean_wrong | batch.wrong(model, batch.at(eps * direction))
                correct[eps] += int((~broken).sum())
            total += batch.labels.numel()
    return _accuracies(correct, total)


def pgd_embedding_accuracy(
    model,
    dataset_or_dataloader,
    epsilons: Sequence[float] | Iterable[float],
    *,
    steps: int = 10,
    step_size: float | None = None,
    loss: str = "ce",
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    data_collator=None,
    device=None,
) -> dict[float, float]:
    """Accuracy of a sequence classifier under a multi-step L-infinity PGD attack on its word embeddings.

    An example counts as correct if the model is right on the clean input, the start and every iterate; broken
    examples are not attacked further.

    Args:
        model, dataset_or_dataloader, batch_size, data_collator, device: as for :func:`fgsm_embedding_accuracy`.
            A given ``DataLoader`` should not shuffle: the random start is drawn example by example in its order.
        epsilons: radii of the L-infinity ball (in embedding units); 0 gives the clean accuracy.
        steps: gradient steps (>= 1).
        step_size: L-infinity size of each step, the same for every epsilon; default ``2.5 * epsilon / steps`` for
            each epsilon (Madry et al. 2018). ``steps=1, step_size=epsilon, random_start=False`` is FGSM.
        loss: ``"ce"`` (cross-entropy of the gold class) or ``"margin"`` (``max_{j != y} z_j - z_y``), maximized.
        random_start: start from a point drawn uniformly from the ball (non-padding positions), else from the clean
            input.
        seed: seed of the random start; the same unit draw is scaled by each epsilon.

    Returns:
        ``{epsilon: accuracy}`` in the order the epsilons were given.
    """
    eps_list = check_attack_arguments(epsilons, loss)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    generator = torch.Generator().manual_seed(seed)
    correct, total = dict.fromkeys(eps_list, 0), 0
    with eval_mode(model):
        for batch in _batches(model, dataset_or_dataloader, batch_size, data_collator, device):
            clean_wrong = batch.wrong(model, batch.embeds)
            unit_start = _uniform_start(batch, generator) if random_start else None
            for eps in eps_list:
                broken = clean_wrong.clone()
                if eps > 0:
                    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
                    delta = torch.zeros_like(batch.embeds, dtype=torch.float32)
                    if unit_start is not None:
                        delta = eps * unit_start
                    _pgd(model, batch, delta, broken, eps, alpha, steps, loss)
                correct[eps] += int((~broken).sum())
            total += batch.labels.numel()
    return _accuracies(correct, total)


def _uniform_start(batch: _Batch, generator: torch.Generator) -> torch.Tensor:
    """Noise uniform in [-1, 1) on the non-padding positions, 0 on padding; one draw per example, in batch order,
    of shape [non-padding tokens, dim], so the draws do not depend on batching, padding side or device."""
    noise = torch.zeros_like(batch.embeds, dtype=torch.float32)
    for i, keep in enumerate(batch.attention_mask.bool()):
        draw = torch.rand(int(keep.sum()), batch.embeds.shape[-1], generator=generator) * 2 - 1
        noise[i, keep] = draw.to(noise.device)
    return noise


def _pgd(model, batch: _Batch, delta, broken, eps: float, alpha: float, steps: int, loss: str) -> None:
    """Runs the attack in place: ``broken`` ends True for every row misclassified at any point visited."""
    for step in range(steps + 1):
        rows = (~broken).nonzero().squeeze(-1)
        if rows.numel() == 0:
            return
        x = batch.at(delta[rows], rows)
        if step == steps:  # the last iterate: only its prediction counts
            broken[rows] |= batch.wrong(model, x, rows)
            return
        wrong, direction = batch.signed_gradient(model, x, loss, rows)
        broken[rows] |= wrong
        delta[rows] = (delta[rows] + alpha * direction).clamp(-eps, eps)


def format_fgsm_results(results: dict[float, float], prefix: str = "fgsm_accuracy_eps_") -> dict[str, float]:
    """Flat metric names for ``all_results.json``: ``{0.01: 0.8}`` -> ``{"fgsm_accuracy_eps_0.01": 0.8}``.

    Epsilons are written with ``%g`` (``0``, ``0.001``, ``1e-05``), so equal values give equal keys. For PGD the
    classification example uses ``prefix=f"pgd_{loss}_accuracy_eps_"``.
    """
    return {f"{prefix}{float(eps):g}": float(acc) for eps, acc in results.items()}
