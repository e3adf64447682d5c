"""FGSM and multi-step PGD in pixel space, for image classifiers (``pixel_values`` in, logits out).

``hf_cot.robustness`` attacks a text model's word embeddings (``get_input_embeddings()`` / ``inputs_embeds``); an
image model has no embedding lookup, its input is already continuous. This module applies the same attacks, with the
same rules, to ``pixel_values``:

* FGSM: ``x + epsilon * sign(grad)``, the gradient of the attack loss taken at ``x``.
* PGD: from ``x + delta_0`` (``delta_0`` uniform in ``[-epsilon, epsilon]`` with ``random_start``), ``steps`` times
  ``delta <- clip(delta + step_size * sign(grad at x + delta), -epsilon, epsilon)``; default step size
  ``2.5 * epsilon / steps`` (Madry et al. 2018).
* Attack losses (maximized): ``"ce"`` (cross-entropy of the gold class) or ``"margin"`` (``max_{j != y} z_j - z_y``).
* An example counts as correct only if the model is right on every point the attack visits (the clean input, the
  random start and every iterate); broken examples are not attacked further. The random start is drawn on the CPU
  from a generator seeded with ``seed``, one example after the other in dataset order.
* ``restarts=R``: the PGD attack is run R times, each from a fresh random start, and an example counts as correct
  only if it survives all R (broken examples are not attacked again). Restart r passes over the data once more and
  draws its starts from the same generator, continuing its stream (restart 1 after restart 0's last example, ...):
  restart 0 is the ``restarts=1`` attack itself, so ``restarts=1`` gives the single-start numbers and more restarts
  never raise the accuracy. ``data`` must give the same examples in the same order on every pass (a dataset, or a
  DataLoader without shuffling).
* ``pixel_range=(low, high)``: every point the attack visits is also clipped to the valid pixel range (images whose
  ``pixel_values`` are intensities in [0, 1], as the example's own preprocessing gives). ``None`` (inputs normalized
  by an image processor): the L-infinity ball only, epsilon in the normalized units.

The model is put in eval mode (BatchNorm uses its running statistics, so each example's result does not depend on the
batch) and restored afterwards; gradients are taken with ``torch.autograd.grad`` w.r.t. the pixels only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from hf_cot.robustness import ATTACK_LOSSES, attack_loss, check_attack_arguments, eval_mode

__all__ = ["ATTACK_LOSSES", "fgsm_pixel_accuracy", "pgd_pixel_accuracy"]


def _logits(model, pixels: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=pixels)
    return out.logits if hasattr(out, "logits") else out[0]


def _batches(model, data, batch_size: int, data_collator, device):
    from torch.utils.data import DataLoader

    if device is None:
        device = next(model.parameters()).device
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size, collate_fn=data_collator)
    for batch in loader:
        labels = batch["labels"] if "labels" in batch else batch["label"]
        yield batch["pixel_values"].to(device), torch.as_tensor(labels).to(device).long()


def _project(x: torch.Tensor, pixel_range) -> torch.Tensor:
    return x if pixel_range is None else x.clamp(*pixel_range)


def _signed_gradient(model, x, labels, loss):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = _logits(model, x)
        (grad,) = torch.autograd.grad(attack_loss(logits, labels, loss), x)
    return logits.detach().argmax(-1) != labels, grad.sign()


def _wrong(model, x, labels):
    with torch.no_grad():
        return _logits(model, x).argmax(-1) != labels


def fgsm_pixel_accuracy(model, data, epsilons: Iterable[float], *, loss: str = "ce", batch_size: int = 64,
                        data_collator=None, pixel_range=None, device=None) -> dict[float, float]:  # fmt: skip
    """Accuracy under a one-step FGSM attack on ``pixel_values``: ``{epsilon: accuracy}``."""
    eps_list = check_attack_arguments(epsilons, loss)
    correct, total = dict.fromkeys(eps_list, 0), 0
    with eval_mode(model):
        for x, labels in _batches(model, data, batch_size, data_collator, device):
            clean_wrong, direction = _signed_gradient(model, x, labels, loss)
            for eps in eps_list:
                broken = clean_wrong
                if eps > 0:
                    broken = clean_wrong | _wrong(model, _project(x + eps * direction, pixel_range), labels)
                correct[eps] += int((~broken).sum())
            total += labels.numel()
    if total == 0:
        raise ValueError("the dataset is empty")
    return {eps: n / total for eps, n in correct.items()}


def pgd_pixel_accuracy(model, data, epsilons: Iterable[float], *, steps: int = 10, step_size: float | None = None,
                       loss: str = "ce", random_start: bool = True, seed: int = 0, restarts: int = 1,
                       batch_size: int = 64, data_collator=None, pixel_range=None, device=None) -> dict[float, float]:  # fmt: skip
    """Accuracy under an L-infinity PGD attack on ``pixel_values``, with ``restarts`` random starts per example:
    ``{epsilon: accuracy}`` (see the module doc)."""
    eps_list = check_attack_arguments(epsilons, loss)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    generator = torch.Generator().manual_seed(seed)
    broken_per_batch, labels_per_batch = [], []  # per batch of the first pass: {epsilon: broken mask}, labels
    with eval_mode(model):
        for restart in range(restarts):
            batches = _batches(model, data, batch_size, data_collator, device)
            index = -1  # the pass's last batch (stays -1 on empty data)
            for index, (x, labels) in enumerate(batches):
                if restart == 0:
                    clean_wrong = _wrong(model, x, labels)
                    broken_per_batch.append({eps: clean_wrong.clone() for eps in eps_list})
                    labels_per_batch.append(labels)
                elif index >= len(labels_per_batch) or not torch.equal(labels, labels_per_batch[index]):
                    raise ValueError("restarts > 1 needs the data in the same order on every pass (no shuffling)")
                # One draw per example, in order, on the CPU: the same start for any batch size or device.
                unit = torch.stack([torch.rand(x.shape[1:], generator=generator) * 2 - 1 for _ in range(x.shape[0])])
                unit = unit.to(x.device) if random_start else torch.zeros_like(x)
                for eps, broken in broken_per_batch[index].items():
                    if eps > 0:
                        alpha = 2.5 * eps / steps if step_size is None else float(step_size)
                        _pgd(model, x, labels, eps * unit.float(), broken, eps, alpha, steps, loss, pixel_range)
            if restart > 0 and index + 1 != len(labels_per_batch):
                raise ValueError("restarts > 1 needs the data in the same order on every pass (no shuffling)")
    total = sum(labels.numel() for labels in labels_per_batch)
    if total == 0:
        raise ValueError("the dataset is empty")
    return {eps: sum(int((~b[eps]).sum()) for b in broken_per_batch) / total for eps in eps_list}


def _pgd(model, x, labels, delta, broken, eps, alpha, steps, loss, pixel_range) -> None:
    """In place: ``broken`` ends True for every example misclassified at any point visited."""
    for step in range(steps + 1):
        rows = (~broken).nonzero().squeeze(-1)
        if rows.numel() == 0:
            return
        point = _project(x[rows] + delta[rows].to(x.dtype), pixel_range)  # (the start may leave the range)
        if step == steps:
            broken[rows] |= _wrong(model, point, labels[rows])
            return
        wrong, direction = _signed_gradient(model, point, labels[rows], loss)
        broken[rows] |= wrong
        new = (delta[rows] + alpha * direction.float()).clamp(-eps, eps)
        delta[rows] = new if pixel_range is None else (x[rows] + new).clamp(*pixel_range) - x[rows]
