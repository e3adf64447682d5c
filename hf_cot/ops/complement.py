"""The autograd Function behind `hf_cot.losses`: complement entropy and ``log p_g`` of ``[N, K]`` logits."""

from __future__ import annotations

import torch

from .chunking import row_chunks
from .streaming import chunk_grad, chunk_sums, finish_forward, grad_coefficients


class ComplementEntropyFunction(torch.autograd.Function):
    """Row-wise complement entropy ``H`` and ground-truth log-probability ``log p_g`` of ``[N, K]`` logits.

    ``forward(logits, target, valid, chunk, with_log_pg, kernels)``: rows with ``valid == False`` give 0 for both;
    ``log p_g`` is computed only when ``with_log_pg`` (it comes from the same pass: GCE needs no full-vocabulary
    log-softmax), else it is a non-differentiable 0. ``kernels``: the Triton module (`hf_cot.ops.backend`), which
    processes all rows at once, or None for the eager kernel, which processes ``chunk`` rows at a time through two
    reused float32 work buffers. Saved for the backward: the logits and a few floats per row (``M``, ``log s``,
    ``H``, ``log p_g``); the backward recomputes ``z'`` and ``e`` and writes straight into the one logits-sized
    gradient buffer.
    """

    @staticmethod
    def forward(ctx, logits, target, valid, chunk: int, with_log_pg: bool, kernels):
        ctx.set_materialize_grads(False)
        n, k = logits.shape
        if kernels is not None:
            row_max, sum_e, sum_ez = chunk_sums(logits, target, None, None, kernels)
        else:
            row_max = logits.new_empty(n, dtype=torch.float32)
            sum_e = logits.new_empty(n, dtype=torch.float32)
            sum_ez = logits.new_empty(n, dtype=torch.float32)
            for rows, z, e in row_chunks(logits, n, k, chunk):
                sums = chunk_sums(logits[rows], target[rows], z, e)
                for total, part in zip((row_max, sum_e, sum_ez), sums, strict=True):
                    total[rows] = part
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
        none = (None,) * 5
        if not ctx.needs_input_grad[0]:
            return None, *none
        alpha, beta, at_target = grad_coefficients(entropy, log_pg, log_s, valid, grad_entropy, grad_log_pg)
        if ctx.kernels is not None:
            grad_logits = chunk_grad(logits, target, row_max, alpha, beta, at_target, None, None, None, ctx.kernels)
            return grad_logits, *none
        grad_logits = torch.empty_like(logits, memory_format=torch.contiguous_format)
        n, k = logits.shape
        for rows, z, e in row_chunks(logits, n, k, ctx.chunk):
            coefficients = (alpha[rows], beta[rows], at_target[rows])
            chunk_grad(logits[rows], target[rows], row_max[rows], *coefficients, z, e, grad_logits[rows])
        return grad_logits, *none
