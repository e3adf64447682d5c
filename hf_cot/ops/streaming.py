"""The per-chunk primitives of the streaming kernel: forward sums, their per-row finish, backward gradient.

Notation of `hf_cot.losses`: for one row, ``M`` is the largest non-target logit, ``z'_j = max(z_j - M, FLOOR)``,
``e_j = exp(z'_j)``, ``s = sum_{j != g} e_j`` and ``E = sum_{j != g} e_j z'_j``. Then

* ``q_j = e_j / s``, ``log q_j = z'_j - log s``, so ``H = -sum q log q = log s - E / s``;
* ``L = logsumexp_{j != g} z_j = M + log s`` and ``log p_g = z_g - logaddexp(L, z_g)``;
* the logits' gradient is ``e_k (alpha z'_k + beta)`` with per-row ``alpha``, ``beta`` (`grad_coefficients`).

So the backward needs only the logits and ``M``, ``log s`` per row (``z'`` and ``e`` are recomputed). The eager
functions work on float32 ``[m, K]`` work buffers ``z`` and ``e`` (`hf_cot.ops.chunking`); given ``kernels``
(`hf_cot.ops.triton_kernels`) they call the fused Triton kernels instead, which compute the same arithmetic without
work buffers.
"""

from __future__ import annotations

import torch

# The shifted logits z_j - M (<= 0) are floored at -87 (exp(-87) = 1.6e-38, just above the smallest normal float32,
# exp(-87.3)):
# * it turns the masked ground-truth entry and -inf logits into finite numbers, so e * z' is never 0 * -inf = NaN;
# * every exp stays in the normal range: on x86 CPUs exp (and the multiplies after it) take a slow path for
#   subnormal or underflowing results, which peaked real-world logits produce in bulk (BENCHMARKS.md).
# A floored entry adds at most 1.6e-38 to s >= 1 (invisible in float32) and 1.4e-36 to H and to its own gradient;
# the ground-truth gradient is overwritten exactly. This is not an epsilon: no q above exp(-87) is changed.
LOG_Q_FLOOR = -87.0


def shifted_chunk(src: torch.Tensor, target: torch.Tensor, z: torch.Tensor, row_max: torch.Tensor | None):
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
    z.sub_(row_max.masked_fill(degenerate, 0.0).unsqueeze(1)).clamp_(min=LOG_Q_FLOOR)
    return row_max


def chunk_sums(logits: torch.Tensor, target: torch.Tensor, z: torch.Tensor, e: torch.Tensor, kernels=None):
    """Forward statistics of ``[m, K]`` logits: ``(M, s, E)`` per row, float32.

    ``z`` and ``e`` are float32 ``[m, K]`` work buffers (unused when ``kernels``, the Triton module, is given).
    """
    if kernels is not None:
        return kernels.forward_sums(logits, target, LOG_Q_FLOOR)
    row_max = shifted_chunk(logits, target, z, None)
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
    """The gradient of ``[m, K]`` logits, written into ``out`` (returned; a new tensor with ``kernels``).

    ``alpha``, ``beta``, ``at_target``: ``[m]`` from `grad_coefficients`; ``z``, ``e``: float32 work buffers.
    """
    if kernels is not None:
        return kernels.backward_grad(logits, target, row_max, alpha, beta, at_target, LOG_Q_FLOOR)
    alpha, beta = alpha.unsqueeze(1), beta.unsqueeze(1)
    shifted_chunk(logits, target, z, row_max)
    torch.exp(z, out=e)
    if logits.shape[1] >= 64:  # two plain broadcast ops beat addcmul on long rows (and lose to it on short ones)
        z.mul_(alpha).add_(beta)
    else:
        torch.addcmul(beta, z, alpha, out=z)
    torch.mul(z, e, out=out)
    out.scatter_(1, target.unsqueeze(1), at_target.unsqueeze(1).to(out.dtype))
    return out
