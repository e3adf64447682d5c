"""The autograd Function behind `hf_cot.linear_losses`: the complement terms of ``transform(hidden @ weight.T + b)``
with the logits built one chunk of rows at a time.

Forward: per chunk, project the rows into a float32 work buffer, read ``z_g`` and the arg-max, fold the logits into
the per-row sums of `hf_cot.ops.streaming` (eager, or the Triton kernels), drop them. Backward: per chunk, project
again, turn the logits into their gradient, chain it through the transform and accumulate ``grad_hidden = g @ W``,
``grad_weight += g.T @ h`` and ``grad_bias += sum g`` (float32 accumulators). Extra memory: two or three
``[chunk, V]`` float32 buffers plus the head's weight gradient.
"""

from __future__ import annotations

import torch

from .chunking import row_chunks
from .streaming import chunk_grad, chunk_sums, finish_forward, grad_coefficients

# torch.addmm(..., out_dtype=torch.float32) from half-precision operands (CUDA, torch >= 2.8)
_MM_OUT_DTYPE = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 8)


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The projection's dtype: autocast's when it is on (as `nn.Linear` would run), else the hidden states'."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


class Head:
    """The logits of a chunk of rows, ``transform(hidden @ weight.T + bias)``, in float32, and the chain rule back."""

    def __init__(self, weight, bias, compute_dtype, logit_scale: float, softcap: float | None):
        self.weight = weight.to(compute_dtype)
        self.bias = None if bias is None else bias.to(compute_dtype)
        self.compute_dtype = compute_dtype
        self.logit_scale = float(logit_scale)
        self.softcap = None if softcap is None else float(softcap)

    def logits(self, hidden_chunk: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (float32 ``[m, V]``) := the transformed logits of ``hidden_chunk``."""
        h = hidden_chunk.to(self.compute_dtype)
        # float32: the GEMM writes straight into the work buffer; half precision: one rounding to float32 after it
        target = out if self.compute_dtype == torch.float32 else None
        if self.bias is not None:
            projected = torch.addmm(self.bias, h, self.weight.t(), out=target)
        else:
            projected = torch.mm(h, self.weight.t(), out=target)
        if target is None:
            out.copy_(projected)
        if self.logit_scale != 1.0:
            out.mul_(self.logit_scale)
        if self.softcap is not None:
            out.div_(self.softcap).tanh_().mul_(self.softcap)
        return out

    def grad_projection(self, grad_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The gradient at ``hidden @ weight.T + bias`` from the gradient at the transformed logits (in place)."""
        if self.softcap is not None:  # d/dy cap * tanh(y / cap) = 1 - tanh^2 = 1 - (z / cap)^2
            grad_logits.mul_(1.0 - (logits / self.softcap).square_())
        if self.logit_scale != 1.0:
            grad_logits.mul_(self.logit_scale)
        return grad_logits


class LinearComplementFunction(torch.autograd.Function):
    """Per row of ``hidden`` ``[N, d]``: ``(H, log p_g)`` of the logits ``transform(hidden @ weight.T + bias)``,
    plus two non-differentiable rows for metrics: ``log(1 - p_g)`` and whether ``g`` is the (first) arg-max.

    ``forward(hidden, weight, bias, target, valid, chunk, logit_scale, softcap, kernels)``; ``kernels``: the Triton
    module or None (`hf_cot.ops.backend`), used on each chunk's logits in both passes."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, valid, chunk: int, logit_scale: float, softcap, kernels):
        ctx.set_materialize_grads(False)
        n, vocab = hidden.shape[0], weight.shape[0]
        head = Head(weight, bias, compute_dtype(hidden), logit_scale, softcap)
        row_max = hidden.new_empty(n, dtype=torch.float32)
        sum_e, sum_ez, z_g = torch.empty_like(row_max), torch.empty_like(row_max), torch.empty_like(row_max)
        is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            # buffers: the chunk's logits (then `chunk_sums`' z) and e
            for rows, logits, e in row_chunks(hidden, n, vocab, chunk, count=2):
                head.logits(hidden[rows], logits)
                z_g[rows] = logits.gather(1, target[rows].unsqueeze(1)).squeeze(1)
                # top-1 as argmax (and TRL's token accuracy) counts it: ties go to the first maximal index
                is_top1[rows] = logits.argmax(1) == target[rows]
                # the logits are not needed after this chunk's sums: their buffer is the work buffer z
                sums = chunk_sums(logits, target[rows], logits, e, kernels)
                for total, part in zip((row_max, sum_e, sum_ez), sums, strict=True):
                    total[rows] = part
        entropy, log_s, log_pg = finish_forward(row_max, sum_e, sum_ez, z_g, valid, with_log_pg=True)
        # log(1 - p_g) = logsumexp of the complement - logsumexp of all = L - logaddexp(L, z_g)
        log_complement = row_max + log_s
        log_1m_pg = (log_complement - torch.logaddexp(log_complement, z_g)).masked_fill_(~valid, 0.0)
        is_top1 &= valid
        ctx.mark_non_differentiable(log_1m_pg, is_top1)
        ctx.save_for_backward(hidden, weight, bias, target, valid, entropy, log_pg, row_max, log_s)
        ctx.chunk, ctx.logit_scale, ctx.softcap, ctx.kernels = chunk, logit_scale, softcap, kernels
        ctx.compute_dtype = head.compute_dtype
        return entropy, log_pg, log_1m_pg, is_top1

    @staticmethod
    def backward(ctx, grad_entropy, grad_log_pg, _grad_log_1m_pg, _grad_is_top1):
        hidden, weight, bias, target, valid, entropy, log_pg, row_max, log_s = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        none = (None,) * 6
        if not (needs_hidden or needs_weight or needs_bias) or (grad_entropy is None and grad_log_pg is None):
            return None, None, None, *none
        n, vocab = hidden.shape[0], weight.shape[0]
        alpha, beta, at_target = grad_coefficients(entropy, log_pg, log_s, valid, grad_entropy, grad_log_pg)
        head = Head(weight, bias, ctx.compute_dtype, ctx.logit_scale, ctx.softcap)
        # float32 accumulators (rounding each chunk's contribution to bf16 before summing would bias the update);
        # grad_hidden has one contribution per row, so it is written in the compute dtype directly.
        grad_hidden = (
            torch.empty(hidden.shape, device=hidden.device, dtype=ctx.compute_dtype) if needs_hidden else None
        )
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if needs_weight else None
        grad_bias = torch.zeros(vocab, device=weight.device, dtype=torch.float32) if needs_bias else None
        # soft-capping needs the logits after their gradient is computed (a third buffer: a separate z); otherwise
        # the gradient overwrites them in place
        keep_logits = ctx.softcap is not None
        with torch.autocast(hidden.device.type, enabled=False):
            for rows, logits, e, *rest in row_chunks(hidden, n, vocab, ctx.chunk, count=3 if keep_logits else 2):
                head.logits(hidden[rows], logits)
                coefficients = (alpha[rows], beta[rows], at_target[rows])
                z = rest[0] if keep_logits else logits
                grad = chunk_grad(logits, target[rows], row_max[rows], *coefficients, z, e, z, ctx.kernels)
                grad = head.grad_projection(grad, logits)
                if grad_bias is not None:
                    grad_bias += grad.sum(0)
                grad_c = grad.to(ctx.compute_dtype)
                if grad_hidden is not None:
                    torch.mm(grad_c, head.weight, out=grad_hidden[rows])
                if grad_weight is not None:
                    _addmm_float32(grad_weight, grad, grad_c, hidden[rows])
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            *none,
        )


def _addmm_float32(acc: torch.Tensor, grad: torch.Tensor, grad_c: torch.Tensor, hidden: torch.Tensor) -> None:
    """``acc += grad.T @ hidden`` into a float32 accumulator. On CUDA with bf16/fp16 the GEMM reads the half-precision
    operands and writes float32 (as TRL's chunked head does); elsewhere it runs in float32."""
    if acc.is_cuda and grad_c.dtype in (torch.float16, torch.bfloat16) and _MM_OUT_DTYPE:
        torch.addmm(acc, grad_c.t(), hidden.to(grad_c.dtype), out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(grad.t(), hidden.float())
