"""Complement-entropy losses: pure tensor math, no Trainer.

Notation: logits ``z`` of shape ``[..., K]``, ground-truth index ``g``. The complement distribution is the
softmax over the non-ground-truth logits only, ``q_j = softmax(z_{-g})_j = p_j / (1 - p_g)`` for ``j != g``
(exactly, with no epsilon). Its entropy ``H = -sum_{j != g} q_j log q_j`` is what COT maximizes.

Streaming identities the kernel uses (checked by the tests), with ``M`` the largest non-target logit of a row,
``e_j = exp(z_j - M)``, ``s = sum_{j != g} e_j``, ``E = sum_{j != g} e_j (z_j - M)``:

* ``L = logsumexp_{j != g} z_j = M + log s``, ``log q_j = z_j - L``;
* ``H = -sum_j q_j log q_j = log s - E / s``;
* ``dH/dz_k = -q_k (log q_k + H)`` for ``k != g`` and ``0`` at ``g``.

So the backward needs only the input logits plus a few floats per row: the kernel keeps no activation besides the
gradient it returns. The functions here check their arguments and call the kernel in `hf_cot.ops` (internal): an
eager torch implementation that streams chunks of rows through two small float32 work buffers whatever the
vocabulary size, or fused Triton kernels doing the same arithmetic without work buffers. ``impl=`` chooses:
``"auto"`` (Triton on CUDA tensors when triton imports, else eager), ``"eager"``, ``"triton"`` (an error where the
Triton kernels cannot run); ``None``, the default, takes the ``HF_COT_TRITON`` environment variable (``auto``, ``0``
or ``eager``, ``force`` or ``triton``; unset: ``auto``).
"""

from __future__ import annotations

import math

import torch

from .ops.backend import kernels_for, resolve_impl
from .ops.chunking import logits_chunk_rows
from .ops.complement import ComplementEntropyFunction
from .ops.reduction import check_reduction, reduce_rows

__all__ = [
    "complement_entropy",
    "complement_objective",
    "guided_complement_entropy",
    "complement_normalizer",
    "NORMALIZATIONS",
]

NORMALIZATIONS = ("log", "paper", "none")


def complement_normalizer(num_classes: int, normalization: str) -> float:
    """The constant the complement entropy is divided by.

    * ``"log"``: ``log(K - 1)``, the entropy of the uniform complement, so the normalized value lies in [0, 1]
      for any number of classes (a 5-class head and a 250k-token vocabulary give comparable step sizes).
    * ``"paper"``: ``K - 1``, Eq. 2 of the COT paper. Over a large vocabulary this makes an SGD complement step
      vanish (with Adam/AdamW a constant scale mostly cancels).
    * ``"none"``: 1.

    For ``K == 2`` the complement has one class, its entropy is always 0 and ``log(K - 1) == 0``: 1 is used.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if num_classes < 2:
        raise ValueError(f"the complement needs at least 2 classes, got K={num_classes}")
    if normalization == "paper":
        return float(num_classes - 1)
    if normalization == "log" and num_classes > 2:
        return math.log(num_classes - 1)
    return 1.0


def check_chunk_size(chunk_size) -> None:
    """Raise a ValueError unless ``chunk_size`` (rows per chunk; None is checked by the caller) is an int >= 1."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def check_label_range(labels: torch.Tensor, num_classes: int, ignore_index: int = -100) -> torch.Tensor:
    """Raise a ValueError naming the first label outside ``[0, K)`` that is not ``ignore_index``; return the valid mask."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if _compiling():
        # Under torch.compile a host-side check breaks the graph at every step; an asynchronous device assert keeps
        # it whole and still fails the step (with the kernel's message, not this one).
        torch._assert_async(~bad.any(), f"a label is outside [0, {num_classes}) and is not ignore_index")
        return valid
    if bool(bad.any()):
        raise ValueError(
            f"label {int(labels[bad][0])} is outside [0, {num_classes}) and is not ignore_index={ignore_index}: "
            "check num_labels / the vocabulary size, or mark padding with ignore_index"
        )
    return valid


def _flatten(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point tensor of shape [..., K]")
    if logits.dim() < 1:
        raise ValueError("logits must have a class dimension: shape [..., K]")
    if not torch.is_tensor(labels):
        raise TypeError(f"labels must be an integer tensor of class indices, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels must have the shape of logits without its last (class) dimension: "
            f"logits {tuple(logits.shape)} needs labels {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}"
        )
    num_classes = logits.shape[-1]
    if num_classes < 2:
        raise ValueError(f"the complement needs at least 2 classes, got K={num_classes}")
    flat_logits = logits.reshape(-1, num_classes)
    flat_labels = labels.reshape(-1).long()
    valid = check_label_range(flat_labels, num_classes, ignore_index)
    target = flat_labels.masked_fill(~valid, 0)
    return flat_logits, target, valid


def _complement_rows(logits, labels, ignore_index: int, chunk_size: int | None, impl: str, with_log_pg: bool):
    """Per flattened position ``(H, log p_g, valid)`` (``log p_g`` a non-differentiable 0 unless ``with_log_pg``)."""
    flat_logits, target, valid = _flatten(logits, labels, ignore_index)
    if chunk_size is not None:
        check_chunk_size(chunk_size)
    kernels = kernels_for(impl, flat_logits)
    chunk = logits_chunk_rows(flat_logits, chunk_size)
    entropy, log_pg = ComplementEntropyFunction.apply(flat_logits, target, valid, chunk, with_log_pg, kernels)
    return entropy, log_pg, valid


def complement_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """Entropy (nats) of the complement distribution ``q = softmax(logits without the ground-truth class)``.

    Args:
        logits: ``[..., K]`` scores (any float dtype; computed in float32).
        labels: ``[...]`` integer class indices; positions equal to ``ignore_index`` contribute nothing.
        reduction: ``"mean"`` over valid positions (0.0 with a zero gradient when none are valid), ``"sum"`` or
            ``"none"`` (shape ``[...]``, 0 at ignored positions).
        chunk_size: rows the eager kernel processes at a time (default: about 2**17 float32 values per chunk on a
            CPU with one intra-op thread, 2**22 otherwise). The Triton kernels process every row at once.
        impl: ``"auto"`` (the Triton kernels on CUDA tensors when triton imports, else the eager torch kernel),
            ``"eager"``, ``"triton"`` (RuntimeError where they cannot run: no triton, or a non-CUDA tensor outside
            Triton's CPU interpreter) or None (the default: the ``HF_COT_TRITON`` environment variable, ``auto``
            when unset). The same arithmetic either way.

    Returns:
        A float32 tensor, differentiable with respect to ``logits``. COT *maximizes* this quantity.
    """
    impl = resolve_impl(impl)
    check_reduction(reduction)
    per_row, _, valid = _complement_rows(logits, labels, ignore_index, chunk_size, impl, with_log_pg=False)
    return reduce_rows(per_row, valid, reduction, labels.shape)


def complement_objective(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    normalization: str = "log",
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """The loss that COT's complement step *minimizes*: ``-H / complement_normalizer(K, normalization)``.

    With ``normalization="log"`` it lies in ``[-1, 0]`` for any K; ``"paper"`` is Eq. 2 of the paper
    (``-H / (K - 1)``). Minimizing it flattens the wrong classes. The other arguments are `complement_entropy`'s.
    """
    impl = resolve_impl(impl)
    scale = complement_normalizer(logits.shape[-1], normalization)
    entropy = complement_entropy(
        logits, labels, ignore_index=ignore_index, reduction=reduction, chunk_size=chunk_size, impl=impl
    )
    return entropy.neg() / scale


def complement_terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position ``(H, log p_g, valid)`` over the flattened positions, from one chunked pass (for trainers that
    need both the loss and the entropy it implies without a second pass). Arguments as in `complement_entropy`."""
    impl = resolve_impl(impl)
    return _complement_rows(logits, labels, ignore_index, chunk_size, impl, with_log_pg=True)


def guided_rows(entropy: torch.Tensor, log_pg: torch.Tensor, valid: torch.Tensor, num_classes: int, alpha: float):
    """GCE per position from `complement_terms`: ``-p_g^alpha * H / log(K - 1)`` (0 where invalid)."""
    # p_g ** 0 == 1 even where p_g == 0 (exp(0 * -inf) would be NaN)
    guide = torch.exp(alpha * log_pg) if alpha != 0 else torch.ones_like(log_pg)
    guide = guide.masked_fill(~valid, 0.0)
    return -guide * entropy / complement_normalizer(num_classes, "log")


def guided_complement_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 1.0 / 3.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """The GCE loss (Chen et al., ICCV 2019, arXiv 1903.09799), to be *minimized* on its own, without CE.

    ``loss_i = p_ig^alpha * (sum_{j != g} q_ij log q_ij) / log(K - 1) = -p_ig^alpha * H_i / log(K - 1)``

    The guide factor ``p_g^alpha`` is *not* detached (as in the reference code): its gradient is what raises the
    ground-truth probability. The value lies in ``[-1, 0]``. The reference code adds 1e-7 inside the power and
    divides by log K with K hard-coded; here ``p_g = exp(log_softmax(z)_g)`` exactly and the normalizer is
    log(K - 1), the entropy of a uniform complement (1 when K == 2). The other arguments are `complement_entropy`'s.
    """
    impl = resolve_impl(impl)
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    check_reduction(reduction)
    entropy, log_pg, valid = complement_terms(
        logits, labels, ignore_index=ignore_index, chunk_size=chunk_size, impl=impl
    )
    per_row = guided_rows(entropy, log_pg, valid, logits.shape[-1], alpha)
    return reduce_rows(per_row, valid, reduction, labels.shape)


def per_sample_complement_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (first dimension): the complement entropy summed over its valid positions, and how many there are.

    One value per sample, not per batch, so that a distributed evaluation can drop the samples that pad its last batch
    (`accelerator.gather_for_metrics`) before averaging ``sums.sum() / counts.sum()``.
    """
    per_position = complement_entropy(logits, labels, reduction="none").float()
    dims = tuple(range(1, labels.dim()))
    if not dims:
        return per_position, (labels != -100).long()
    return per_position.sum(dim=dims), (labels != -100).sum(dim=dims)
