"""Complement-entropy losses: pure tensor math, no Trainer.

Notation: logits ``z`` of shape ``[..., K]``, ground-truth index ``g``. The complement distribution is the
softmax over the non-ground-truth logits only, ``q_j = softmax(z_{-g})_j = p_j / (1 - p_g)`` for ``j != g``
(exactly, with no epsilon). Its entropy ``H = -sum_{j != g} q_j log q_j`` is what COT maximizes.

Streaming identities used by the chunked kernel (derived in ``docs``/notes, checked by the tests), with ``M`` the
largest non-target logit of a row, ``e_j = exp(z_j - M)``, ``s = sum_{j != g} e_j``, ``E = sum_{j != g} e_j (z_j - M)``:

* ``L = logsumexp_{j != g} z_j = M + log s``, ``log q_j = z_j - L``;
* ``H = -sum_j q_j log q_j = log s - E / s``;
* ``dH/dz_k = -q_k (log q_k + H)`` for ``k != g`` and ``0`` at ``g``.

So the backward pass needs only the input logits plus a few floats per row (``M``, ``log s``, ``H``; ``e`` is
recomputed): the kernel keeps no activation besides the gradient buffer it returns, and processes rows in chunks
so that its two float32 work buffers stay small whatever the vocabulary size (on CPU, small enough to stay in
cache). On CUDA the two streaming loops run as fused Triton kernels instead (``hf_cot/_triton_kernels.py``: the
same arithmetic, no work buffers, 7-10x faster than the eager loops on an H100); ``HF_COT_TRITON=0`` turns them off.
"""

from __future__ import annotations

import functools
import math
import os

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
# Elements per chunk of rows. Each chunk needs two float32 work buffers of this size.
# * CPU, one intra-op thread: 2**17 elements (two 512 KiB buffers) keep a chunk inside the L2 cache, so the ~7
#   elementwise passes over a chunk cost about one pass over DRAM (the loss then runs as fast as cross_entropy or
#   faster). Bigger chunks (2**22) spill to DRAM: 15-20% slower, measured at N x V = 1024 x 32000 and 256 x 128000.
# * CPU with several threads, and accelerators: 2**22 elements (16 MiB buffers). Every op of a chunk is one
#   parallel region (OpenMP fork/join) or one kernel launch; small chunks multiply them. On an idle CPU a region
#   costs microseconds, but when the cores are oversubscribed each one can wait a scheduler tick for a descheduled
#   thread: with two threads on a 2-core machine at load ~6, 2**18-element chunks made the loss 15x slower than with
#   one thread; 2**22 keeps that to ~2.5x. (On a busy CPU, torch.set_num_threads(1) is the fastest setting.)
_CHUNK_ELEMENTS = 1 << 22
_CHUNK_ELEMENTS_CPU = 1 << 17
# The shifted logits z_j - M (M = the row's largest non-target logit, so they are <= 0) are floored at -87
# (exp(-87) = 1.6e-38, just above the smallest normal float32, exp(-87.3)):
# * it turns the masked ground-truth entry and -inf logits into finite numbers, so e * z' is never 0 * -inf = NaN;
# * every exp stays in the normal range: on x86 CPUs exp (and the multiplies after it) take a slow path, up to
#   100x slower, for subnormal or underflowing results, which peaked real-world logits produce in bulk.
# A floored entry adds at most 1.6e-38 to s >= 1 (invisible in float32) and 1.4e-36 to H and to its own gradient;
# the ground-truth gradient is overwritten exactly. This is not an epsilon: no q above exp(-87) is changed.
_LOG_Q_FLOOR = -87.0


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


_TRITON_MODES = ("auto", "0", "force")


@functools.lru_cache(maxsize=1)
def _load_triton_kernels():
    try:
        from . import _triton_kernels
    except ImportError:  # no triton (CPU-only torch builds, macOS, Windows): the eager kernel runs everywhere
        return None
    return _triton_kernels


def _triton_kernels(logits: torch.Tensor):
    """The fused Triton kernels when they should run on these logits, else None (the eager chunked kernel).

    ``HF_COT_TRITON``: ``auto`` (default: on CUDA tensors when triton imports), ``0`` (never), ``force`` (on any
    device, e.g. CPU tensors under ``TRITON_INTERPRET=1``, which is how the tests check them without a GPU).
    """
    mode = os.environ.get("HF_COT_TRITON", "auto").strip().lower()
    if mode not in _TRITON_MODES:
        raise ValueError(f"HF_COT_TRITON must be one of {_TRITON_MODES}, got {mode!r}")
    if mode == "0" or (mode == "auto" and not logits.is_cuda):
        return None
    return _load_triton_kernels()


def check_chunk_size(chunk_size) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")


def _chunk_rows(logits: torch.Tensor, chunk_size: int | None) -> int:
    if chunk_size is not None:
        check_chunk_size(chunk_size)
        return chunk_size
    if logits.device.type == "cpu" and torch.get_num_threads() == 1:
        return max(1, _CHUNK_ELEMENTS_CPU // logits.shape[-1])
    return max(1, _CHUNK_ELEMENTS // logits.shape[-1])


def _shifted_chunk(src: torch.Tensor, target: torch.Tensor, z: torch.Tensor, row_max: torch.Tensor | None):
    """``z`` (float32 ``[m, K]``) := ``max(src - M, floor)`` with the targets masked out, and the row-wise ``M``.

    ``M`` is the max of the non-target logits of a row: ``None`` to compute it (it is returned), else the value
    saved by the forward. Then ``exp(z) / s`` with ``s = sum exp(z)`` is ``q`` (up to the floor) and
    ``log q = z - log s``. The target entry becomes the floor (``exp`` of it is ~1e-38; callers overwrite its
    gradient). A row whose non-target logits are all -inf (``M == -inf``, empty complement) gets 0 at its target
    instead, so every value stays finite: its ``H`` is then ~0 with a ~0 gradient. NaN logits give NaN.
    """
    target = target.unsqueeze(1)
    z.copy_(src)
    if row_max is None:
        z.scatter_(1, target, float("-inf"))
        row_max = torch.amax(z, 1)
    degenerate = row_max == float("-inf")
    z.scatter_(1, target, torch.where(degenerate, 0.0, float("-inf")).unsqueeze(1))
    z.sub_(row_max.masked_fill(degenerate, 0.0).unsqueeze(1)).clamp_(min=_LOG_Q_FLOOR)
    return row_max


def _chunks(logits: torch.Tensor, chunk: int):
    """Yield ``(start, end, z, e)`` over row chunks, ``z`` and ``e`` being views of two reused float32 work buffers."""
    n, k = logits.shape
    z_buf = logits.new_empty(max(1, min(chunk, n)), k, dtype=torch.float32)
    e_buf = torch.empty_like(z_buf)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        yield start, end, z_buf[: end - start], e_buf[: end - start]


def chunk_sums(logits: torch.Tensor, target: torch.Tensor, z: torch.Tensor, e: torch.Tensor, kernels=None):
    """Forward statistics of one chunk of ``[m, K]`` logits: ``(M, s, E)`` per row, float32 (see the module docstring).

    ``z`` and ``e`` are float32 ``[m, K]`` work buffers (unused when ``kernels``, the Triton module, is given).
    """
    if kernels is not None:
        return kernels.forward_sums(logits, target, _LOG_Q_FLOOR)
    row_max = _shifted_chunk(logits, target, z, None)
    torch.exp(z, out=e)
    sum_e = e.sum(1)
    return row_max, sum_e, e.mul_(z).sum(1)


def finish_forward(row_max, sum_e, sum_ez, z_g, valid, with_log_pg: bool):
    """``(H, log s, log p_g)`` per row from the sums of `chunk_sums` (``log p_g`` is None unless ``with_log_pg``).

    ``z_g`` (float32, the target logits) is only read when ``with_log_pg``. Invalid rows give 0.
    """
    entropy = sum_ez.div(sum_e).neg_()
    log_s = sum_e.log()
    entropy = entropy.add_(log_s).masked_fill_(~valid, 0.0)
    if not with_log_pg:
        return entropy, log_s, None
    log_pg = z_g - torch.logaddexp(row_max + log_s, z_g)
    # z_g == -inf: p_g == 0 even when every logit is -inf (where logaddexp gives -inf - -inf = NaN).
    log_pg = log_pg.masked_fill_(z_g == float("-inf"), float("-inf")).masked_fill_(~valid, 0.0)
    return entropy, log_s, log_pg


def grad_coefficients(entropy, log_pg, log_s, valid, grad_entropy, grad_log_pg):
    """Per-row ``(alpha, beta, at_target)`` of the logits' gradient ``e_k (alpha z'_k + beta)`` (``at_target`` at g).

    dH/dz_k = -q_k (log q_k + H) and d log p_g / dz_k = -p_k = -q_k (1 - p_g) for k != g, so the gradient is
    q_k (a log q_k + b) off the target with a = -g_H, b = -(g_H H + g_lp (1 - p_g)); at the target it is
    g_lp (1 - p_g) (H does not depend on z_g). With q_k = e_k / s and log q_k = z'_k - log s this is
    e_k (alpha z'_k + beta) with alpha = a / s, beta = (b - a log s) / s.
    """
    n = entropy.shape[0]
    g_h = entropy.new_zeros(n) if grad_entropy is None else grad_entropy.to(torch.float32).masked_fill(~valid, 0.0)
    a = g_h.neg()
    b = a * entropy
    at_target = entropy.new_zeros(n)
    if grad_log_pg is not None:
        at_target = grad_log_pg.to(torch.float32).masked_fill(~valid, 0.0) * (-torch.expm1(log_pg))
        b = b - at_target
    inv_s = log_s.neg().exp_()
    alpha = (a * inv_s).masked_fill_(~valid, 0.0)
    beta = ((b - a * log_s) * inv_s).masked_fill_(~valid, 0.0)
    return alpha, beta, at_target


def chunk_grad(logits, target, row_max, alpha, beta, at_target, z, e, out, kernels=None) -> torch.Tensor:
    """The gradient of one chunk of ``[m, K]`` logits, written into ``out`` (returned; a new tensor with ``kernels``).

    ``alpha``, ``beta``, ``at_target``: ``[m]`` from `grad_coefficients`; ``z``, ``e``: float32 work buffers.
    """
    if kernels is not None:
        return kernels.backward_grad(logits, target, row_max, alpha, beta, at_target, _LOG_Q_FLOOR)
    alpha, beta = alpha.unsqueeze(1), beta.unsqueeze(1)
    _shifted_chunk(logits, target, z, row_max)
    torch.exp(z, out=e)
    if logits.shape[1] >= 64:  # two plain broadcast ops beat addcmul on long rows (and lose to it on short ones)
        z.mul_(alpha).add_(beta)
    else:
        torch.addcmul(beta, z, alpha, out=z)
    torch.mul(z, e, out=out)
    out.scatter_(1, target.unsqueeze(1), at_target.unsqueeze(1).to(out.dtype))
    return out


class _ComplementEntropyFunction(torch.autograd.Function):
    """Row-wise complement entropy ``H`` and ground-truth log-probability ``log p_g`` of ``[N, K]`` logits.

    Rows with ``valid == False`` give 0 for both. With ``M`` the max of a row's non-target logits,
    ``z'_j = z_j - M`` (floored), ``e_j = exp(z'_j)``, ``s = sum_{j != g} e_j``, ``E = sum_{j != g} e_j z'_j``:

    * ``q_j = e_j / s``, ``log q_j = z'_j - log s``, so ``H = -sum q log q = log s - E / s``;
    * ``L = logsumexp_{j != g} z_j = M + log s`` and ``log p_g = z_g - logaddexp(L, z_g)`` (only when
      ``with_log_pg``), which lets GCE use the same single pass (no full-vocabulary log-softmax);
    * the gradient (`grad_coefficients`) is ``e_k (alpha z'_k + beta)`` with per-row ``alpha``, ``beta``.

    Per chunk of rows two float32 work buffers are reused; the backward recomputes ``z'`` and ``e`` from the logits
    (saved: only ``M`` and ``log s`` per row) and writes straight into the one logits-sized gradient buffer.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, chunk: int, with_log_pg: bool):
        ctx.set_materialize_grads(False)
        n, k = logits.shape
        kernels = _triton_kernels(logits)
        if kernels is not None:
            row_max, sum_e, sum_ez = kernels.forward_sums(logits, target, _LOG_Q_FLOOR)
        else:
            row_max = logits.new_empty(n, dtype=torch.float32)
            sum_e = logits.new_empty(n, dtype=torch.float32)
            sum_ez = logits.new_empty(n, dtype=torch.float32)
            for start, end, z, e in _chunks(logits, chunk):
                sums = chunk_sums(logits[start:end], target[start:end], z, e)
                for total, part in zip((row_max, sum_e, sum_ez), sums, strict=True):
                    total[start:end] = part
        z_g = logits.gather(1, target.unsqueeze(1)).squeeze(1).float() if with_log_pg else None
        entropy, log_s, log_pg = finish_forward(row_max, sum_e, sum_ez, z_g, valid, with_log_pg)
        if log_pg is None:
            log_pg = entropy.new_zeros(n)
            ctx.mark_non_differentiable(log_pg)
        ctx.save_for_backward(logits, target, valid, entropy, log_pg, row_max, log_s)
        ctx.chunk = chunk
        ctx.kernels = kernels
        return entropy, log_pg

    @staticmethod
    def backward(ctx, grad_entropy, grad_log_pg):
        logits, target, valid, entropy, log_pg, row_max, log_s = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        alpha, beta, at_target = grad_coefficients(entropy, log_pg, log_s, valid, grad_entropy, grad_log_pg)
        if ctx.kernels is not None:
            grad_logits = ctx.kernels.backward_grad(logits, target, row_max, alpha, beta, at_target, _LOG_Q_FLOOR)
            return grad_logits, None, None, None, None
        grad_logits = torch.empty_like(logits, memory_format=torch.contiguous_format)
        for start, end, z, e in _chunks(logits, ctx.chunk):
            rows = slice(start, end)
            chunk_grad(
                logits[rows],
                target[rows],
                row_max[rows],
                alpha[rows],
                beta[rows],
                at_target[rows],
                z,
                e,
                grad_logits[rows],
            )
        return grad_logits, None, None, None, None


def check_label_range(labels: torch.Tensor, num_classes: int, ignore_index: int = -100) -> torch.Tensor:
    """Raise a ValueError naming the first label outside ``[0, K)`` that is not ``ignore_index``; return the valid mask."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
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
        chunk_size: rows processed at a time (default: about 128k float32 elements per chunk on CPU, 4M on
            accelerators).

    Returns:
        A float32 tensor, differentiable with respect to ``logits``. COT *maximizes* this quantity.
    """
    _check_reduction(reduction)
    flat_logits, target, valid = _flatten(logits, labels, ignore_index)
    chunk = _chunk_rows(flat_logits, chunk_size)
    per_row, _ = _ComplementEntropyFunction.apply(flat_logits, target, valid, chunk, False)
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
    chunk = _chunk_rows(flat_logits, chunk_size)
    entropy, log_pg = _ComplementEntropyFunction.apply(flat_logits, target, valid, chunk, True)
    return entropy, log_pg, valid


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
