"""Long-tailed training sets and inverse-frequency class weights, shared by the classification examples.

Why: the follow-up the `joint` mode implements (Complement Cross Entropy, Kim et al., Pattern Recognition Letters 2021)
claims its gain on class-imbalanced data, and what a practitioner tries first there is class weights. The examples make
an imbalanced training set the way the long-tailed CIFAR literature does (Cui et al., CVPR 2019; Cao et al., NeurIPS
2019): an exponential profile over the class ids, class 0 the most frequent,

    n_i = floor(n_max * ratio ** (-i / (K - 1))),   i = 0 .. K-1,   at least 1,

with ``n_max`` the size of the smallest class of the (balanced) training split, so that every class can supply its
``n_i`` and the profile is exactly exponential (the ratio n_0 / n_{K-1} is ``ratio`` up to the flooring). Which
examples of a class are kept is a seeded draw, so a training set is fixed by the split seed, whatever the training
seed. Validation and test splits are left as they are (balanced, as in that literature).

Used by ``run_image_classification.py`` (which puts this folder on ``sys.path``) and ``run_classification.py``
(``--imbalance_ratio``, ``--class_weights_from_train inverse_frequency``) and by ``studies/run_study.py``'s
long-tailed plans.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np

WEIGHTINGS = ("inverse_frequency",)
# The tail of a long-tailed task: the rarest ceil(TAIL_FRACTION * K) classes (3 of 10, 2 of 5) form its "tail recall".
TAIL_FRACTION = 0.3


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Examples kept per class: ``floor(n_max * ratio ** (-i / (K - 1)))``, at least 1, class 0 the most frequent.

    Args:
        n_max (`int`): examples of class 0 (the head).
        num_classes (`int`): K >= 2.
        ratio (`float`): the imbalance ratio n_0 / n_{K-1} (>= 1; 1 keeps every class at ``n_max``).

    Returns:
        `list[int]`: K counts, non-increasing.
    """
    if num_classes < 2:
        raise ValueError(f"a long-tailed profile needs at least 2 classes, got {num_classes}")
    if not ratio >= 1:
        raise ValueError(f"--imbalance_ratio must be >= 1 (n_max / n_min), got {ratio}")
    if n_max < 1:
        raise ValueError(f"the head class needs at least one example, got n_max={n_max}")
    # + 1e-9: a product that is an integer on paper (100 * 10 ** -1) must not floor to the integer below it.
    return [max(1, math.floor(n_max * ratio ** (-i / (num_classes - 1)) + 1e-9)) for i in range(num_classes)]


def long_tail_indices(labels: Sequence[int], num_classes: int, ratio: float, seed: int) -> list[int]:
    """The positions of a long-tailed subset of a training split, in the split's order.

    Args:
        labels (`Sequence[int]`): the class id of each training example.
        num_classes (`int`): K; every class 0..K-1 must occur.
        ratio (`float`): the imbalance ratio (see :func:`long_tail_counts`).
        seed (`int`): which examples of each class are kept (a numpy ``default_rng(seed)`` permutation per class).

    Returns:
        `list[int]`: sorted positions into ``labels`` (the split's order is kept; the Trainer shuffles anyway).
    """
    labels = np.asarray(labels, dtype=np.int64)
    available = np.bincount(labels, minlength=num_classes)
    if len(available) > num_classes or available.min() == 0:
        raise ValueError(
            f"a long-tailed subset needs every class 0..{num_classes - 1} in the training split; per-class counts "
            f"are {available.tolist()}"
        )
    counts = long_tail_counts(int(available.min()), num_classes, ratio)
    rng = np.random.default_rng(seed)
    kept = []
    for label, count in enumerate(counts):
        members = np.flatnonzero(labels == label)
        kept.append(members[rng.permutation(len(members))[:count]])
    return sorted(np.concatenate(kept).tolist())


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    """Examples per class id 0..K-1."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes].tolist()


def inverse_frequency_weights(counts: Sequence[int]) -> list[float]:
    """``w_c = (1 / n_c) / mean_j (1 / n_j)``: inverse class frequency, normalized to mean 1.

    Mean 1 keeps the loss on the scale of the unweighted one where classes are balanced (all weights 1). With
    ``class_weights`` hf-cot divides the weighted sum by the summed weights of the batch, so the scale cancels in the
    loss; it still decides how the weights read in a command line.

    Raises:
        `ValueError`: a class has no training example (its inverse frequency is undefined).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2 or np.any(counts <= 0):
        raise ValueError(
            f"inverse-frequency class weights need at least one training example of every class; counts {counts}"
        )
    inverse = 1.0 / counts
    return (inverse / inverse.mean()).tolist()


def tail_classes(counts: Sequence[int], fraction: float = TAIL_FRACTION) -> list[int]:
    """The rarest ``ceil(fraction * K)`` class ids by training count (ties: the higher id, i.e. later in the profile)."""
    k = math.ceil(fraction * len(counts))
    return sorted(sorted(range(len(counts)), key=lambda c: (counts[c], -c))[:k])


def check_long_tail_options(imbalance_ratio: float | None, class_weights_from_train: str | None) -> None:
    """The examples' ``--imbalance_ratio`` / ``--class_weights_from_train``, refused when the arguments are parsed."""
    if imbalance_ratio is not None and not imbalance_ratio >= 1:
        raise ValueError(f"--imbalance_ratio must be >= 1 (n_max / n_min), got {imbalance_ratio}")
    if class_weights_from_train not in (None, *WEIGHTINGS):
        choices = " or ".join(repr(w) for w in WEIGHTINGS)
        raise ValueError(f"--class_weights_from_train takes {choices}, got {class_weights_from_train!r}")


def record_training_split(counts: Sequence[int], label_names, data_args, training_args, logger) -> list[int]:
    """What both examples do once their training split is fixed: ``--class_weights_from_train`` sets hf-cot's
    ``class_weights`` from ``counts`` (refused next to ``--class_weights`` or label smoothing, which hf-cot refuses with
    class weights); the tail classes, logged and written with the counts to ``train_class_counts.json``.

    Returns:
        `list[int]`: the tail class ids (for ``tail_recall``).
    """
    if data_args.class_weights_from_train is not None:
        if not hasattr(training_args, "class_weights"):  # a plain-Trainer version of the script
            raise ValueError("--class_weights_from_train sets hf-cot's class_weights: it needs COTTrainingArguments")
        if training_args.class_weights is not None:
            raise ValueError("Pass either --class_weights or --class_weights_from_train, not both.")
        if training_args.label_smoothing_factor > 0:
            raise ValueError("--class_weights_from_train cannot be combined with --label_smoothing_factor > 0 "
                             "(hf-cot refuses class weights with label smoothing).")  # fmt: skip
        training_args.class_weights = inverse_frequency_weights(counts)
    tail = tail_classes(counts)
    info = {"imbalance_ratio": data_args.imbalance_ratio, "labels": list(label_names), "counts": list(counts),
            "tail_classes": tail, "class_weights": getattr(training_args, "class_weights", None)}  # fmt: skip
    logger.info(f"Training split per class: {info}")
    if training_args.should_save:  # the main process only
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "train_class_counts.json"), "w") as f:
            json.dump(info, f, indent=2)
    return tail
