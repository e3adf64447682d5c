"""Complement-entropy losses: pure tensor math, no Trainer.

Notation: logits ``z`` of shape ``[..., K]``, ground-truth index ``g``. The complement distribution is the
softmax over the non-ground-truth logits only, ``q_j = softmax(z_{-g})_j = p_j / (1 - p_g)`` for ``j != g``
(exactly, with no epsilon). Its entropy ``H = -sum_{j != g} q_j log q_j`` is what COT maximizes.

Streaming identities used by the chunked kernel (derived in ``docs``/notes, checked by the tests):

* ``L = logsumexp_{j != g} z_j``, ``log q_j = z_j - L``;
* ``H = -sum_j q_j log q_j``;
* ``dH/dz_k = -q_k (log q_k + H)`` for ``k != g`` and ``0`` at ``g``.

So the backward pass needs only the input logits plus two floats per row (``L`` and ``H``): the kernel keeps
no activation besides the gradient buffer it returns, and processes rows in chunks so that its float32
temporaries stay small whatever the vocabulary size.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "complement_entropy",
    "complement_objective",
    "guided_complement_entropy",
    "complement_normalizer",
    "NORMALIZATIONS",
]

NORMALIZATIONS = ("log", "paper", "none")
_REDUCTIONS = ("mean", "sum", "none")
# Rows per chunk are chosen so that one float32 temporary holds about this many elements (16 MiB).
_CHUNK_ELEMENTS = 1 << 22
# exp(x) == 0 in float32 for x < -104, so clamping log q at this value changes no output bit; it only turns the
# masked ground-truth entry (log q = -inf) into a finite number so that 0 * log q stays 0 instead of NaN.
_LOG_Q_FLOOR = -1.0e4


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


def _chunk_rows(num_classes: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // num_classes)


def _masked_log_q(z_chunk: torch.Tensor, target: torch.Tensor, lse: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``log q`` of a chunk (ground truth masked out) and the row-wise ``L``; never modifies the input."""
    z = z_chunk.to(torch.float32, copy=True)
    z.scatter_(1, target.unsqueeze(1), float("-inf"))
    if lse is None:
        lse = torch.logsumexp(z, dim=1)
    z.sub_(lse.unsqueeze(1)).clamp_(min=_LOG_Q_FLOOR)
    return z, lse


class _ComplementEntropyFunction(torch.autograd.Function):
    """Row-wise complement entropy ``H`` and ground-truth log-probability ``log p_g`` of ``[N, K]`` logits.

    Rows with ``valid == False`` give 0 for both. ``log p_g = z_g - logaddexp(L, z_g)`` comes for free from ``L``,
    which lets GCE use the same single pass (no full-vocabulary log-softmax).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, chunk: int):
        n = logits.shape[0]
        entropy = logits.new_zeros(n, dtype=torch.float32)
        lse = logits.new_zeros(n, dtype=torch.float32)
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            log_q, row_lse = _masked_log_q(logits[sl], target[sl], None)
            q = log_q.exp()
            entropy[sl] = -(q.mul_(log_q)).sum(dim=1)
            lse[sl] = row_lse
        entropy.masked_fill_(~valid, 0.0)
        z_g = logits.gather(1, target.unsqueeze(1)).squeeze(1).float()
        log_pg = (z_g - torch.logaddexp(lse, z_g)).masked_fill_(~valid, 0.0)
        ctx.save_for_backward(logits, target, valid, lse, entropy, log_pg)
        ctx.chunk = chunk
        return entropy, log_pg

    @staticmethod
    def backward(ctx, grad_entropy: torch.Tensor, grad_log_pg: torch.Tensor):
        logits, target, valid, lse, entropy, log_pg = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        chunk = ctx.chunk
        g_h = grad_entropy.to(torch.float32).masked_fill(~valid, 0.0)
        # d log p_g / dz_k = -p_k = -q_k (1 - p_g) for k != g, and (1 - p_g) at g.
        g_lp = grad_log_pg.to(torch.float32).masked_fill(~valid, 0.0) * (-torch.expm1(log_pg))
        # The one logits-sized buffer, in the input dtype.
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], chunk):
            sl = slice(start, min(start + chunk, logits.shape[0]))
            log_q, _ = _masked_log_q(logits[sl], target[sl], lse[sl])
            q = log_q.exp()
            # dH/dz_k = -q_k (log q_k + H) for k != g; q_g == 0 exactly, so the ground truth gets 0 from H.
            coef_h = g_h[sl].unsqueeze(1)
            log_q.add_(entropy[sl].unsqueeze(1)).mul_(coef_h).add_(g_lp[sl].unsqueeze(1)).mul_(q).neg_()
            log_q.scatter_(1, target[sl].unsqueeze(1), g_lp[sl].unsqueeze(1))
            grad_logits[sl] = log_q
        return grad_logits, None, None, None


def _flatten(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point tensor of shape [..., K]")
    if logits.dim() < 1:
        raise ValueError("logits must have a class dimension: shape [..., K]")
    if labels.is_floating_point() or labels.is_complex():
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
    valid = flat_labels != ignore_index
    bad = valid & ((flat_labels < 0) | (flat_labels >= num_classes))
    if bool(bad.any()):
        offender = int(flat_labels[bad][0])
        raise ValueError(
            f"label {offender} is outside [0, {num_classes}) and is not ignore_index={ignore_index}: "
            "check num_labels / the vocabulary size, or mark padding with ignore_index"
        )
    target = flat_labels.masked_fill(~valid, 0)
    return flat_logits, target, valid


def _reduce(values: torch.Tensor, valid: torch.Tensor, reduction: str, shape: torch.Size) -> torch.Tensor:
    if reduction == "none":
        return values.reshape(shape)
    total = values.sum()
    if reduction == "sum":
        return total
    # mean over valid positions; with none valid, total is an exact 0 connected to the graph, so 0 / 1 = 0
    # with a zero gradient.
    return total / valid.sum().clamp(min=1)


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def complement_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Entropy (nats) of the complement distribution ``q = softmax(logits without the ground-truth class)``.

    Args:
        logits: ``[..., K]`` scores (any float dtype; computed in float32).
        labels: ``[...]`` integer class indices; positions equal to ``ignore_index`` contribute nothing.
        reduction: ``"mean"`` over valid positions (0.0 with a zero gradient when none are valid), ``"sum"`` or
            ``"none"`` (shape ``[...]``, 0 at ignored positions).
        chunk_size: rows processed at a time (default: about 4M float32 elements per chunk).

    Returns:
        A float32 tensor, differentiable with respect to ``logits``. COT *maximizes* this quantity.
    """
    _check_reduction(reduction)
    flat_logits, target, valid = _flatten(logits, labels, ignore_index)
    chunk = _chunk_rows(flat_logits.shape[1], chunk_size)
    per_row, _ = _ComplementEntropyFunction.apply(flat_logits, target, valid, chunk)
    return _reduce(per_row, valid, reduction, labels.shape)


def complement_objective(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    normalization: str = "log",
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The loss that COT's complement step *minimizes*: ``-H / complement_normalizer(K, normalization)``.

    With ``normalization="log"`` it lies in ``[-1, 0]`` for any K; ``"paper"`` is Eq. 2 of the paper
    (``-H / (K - 1)``). Minimizing it flattens the wrong classes.
    """
    scale = complement_normalizer(logits.shape[-1], normalization)
    entropy = complement_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction, chunk_size=chunk_size)
    return entropy.neg() / scale


def complement_terms(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position ``(H, log p_g, valid)`` over the flattened positions, from one chunked pass (for trainers that
    need both the loss and the entropy it implies without a second pass)."""
    flat_logits, target, valid = _flatten(logits, labels, ignore_index)
    chunk = _chunk_rows(flat_logits.shape[1], chunk_size)
    entropy, log_pg = _ComplementEntropyFunction.apply(flat_logits, target, valid, chunk)
    return entropy, log_pg, valid


def guided_rows(entropy: torch.Tensor, log_pg: torch.Tensor, valid: torch.Tensor, num_classes: int, alpha: float):
    """GCE per position from `complement_terms`: ``-p_g^alpha * H / log(K - 1)`` (0 where invalid)."""
    guide = torch.exp(alpha * log_pg).masked_fill(~valid, 0.0)
    return -guide * entropy / complement_normalizer(num_classes, "log")


def guided_complement_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 1.0 / 3.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The GCE loss (Chen et al., ICCV 2019, arXiv 1903.09799), to be *minimized* on its own, without CE.

    ``loss_i = p_ig^alpha * (sum_{j != g} q_ij log q_ij) / log(K - 1) = -p_ig^alpha * H_i / log(K - 1)``

    The guide factor ``p_g^alpha`` is *not* detached (as in the reference code): its gradient is what raises the
    ground-truth probability. The value lies in ``[-1, 0]``. The reference code adds 1e-7 inside the power and
    divides by log K with K hard-coded; here ``p_g = exp(log_softmax(z)_g)`` exactly and the normalizer is
    log(K - 1), the entropy of a uniform complement (1 when K == 2).
    """
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    _check_reduction(reduction)
    entropy, log_pg, valid = complement_terms(logits, labels, ignore_index=ignore_index, chunk_size=chunk_size)
    per_row = guided_rows(entropy, log_pg, valid, logits.shape[-1], alpha)
    return _reduce(per_row, valid, reduction, labels.shape)
