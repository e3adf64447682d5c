"""Complement entropy through a linear head, without materializing the ``[N, V]`` logits (pure tensor math).

For a language model the logits ``hidden @ weight.T + bias`` are the largest tensor of a training step (batch 8 x
4,096 tokens x a 128k vocabulary is 4.2 G elements). Here they are built one chunk of rows at a time, folded into
per-row statistics by the same streaming arithmetic as `hf_cot.losses` (`chunk_sums`: the max of the non-target
logits, ``s``, ``E``; on CUDA the same Triton kernels), and dropped. The backward recomputes each chunk's logits,
turns them into their gradient (`chunk_grad`) and accumulates ``grad_hidden = g @ W`` and ``grad_weight += g.T @ h``
(float32 accumulation). Extra memory: a few ``[chunk, V]`` float32 buffers plus the head's weight gradient.

One pass gives, per row, the complement entropy ``H``, ``log p_g`` (so the cross-entropy is ``-log p_g``, GCE's
guide ``p_g^alpha`` and the full-softmax entropy ``(1 - p_g) H + H_binary(p_g)`` need no second pass) and whether the
label is the arg-max. Logit transforms that models apply after the head are supported: a scale (Cohere's
``logit_scale``, Granite's ``1 / logits_scaling``) and Gemma-2-style soft-capping ``cap * tanh(z / cap)``.
"""

from __future__ import annotations

import torch

from .losses import (
    _check_reduction,
    _reduce,
    _triton_kernels,
    check_chunk_size,
    check_label_range,
    chunk_grad,
    chunk_sums,
    finish_forward,
    grad_coefficients,
)

__all__ = ["linear_complement_entropy", "linear_complement_terms"]

# torch.addmm(..., out_dtype=torch.float32) from half-precision operands (CUDA, torch >= 2.8)
_MM_OUT_DTYPE = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 8)

# Rows per chunk: about this many logits (float32: 16 MiB per work buffer, two live at once, three with soft-capping)
_CHUNK_ELEMENTS = 1 << 22
# ... but never fewer rows than this, nor than d / 4: every chunk reads the whole [V, d] weight and its weight-gradient
# GEMM has the chunk's rows as inner dimension, so a chunk needs enough rows to stay compute-bound (CPU sweep in
# BENCHMARKS.md: at d = 256, 128 rows cost 1.11-1.14x the time of the logits path; at d = 1024, 128 rows 1.58x and
# 256 rows 1.35x).
_MIN_CHUNK_ROWS = 128


def _chunk_rows(hidden_size: int, vocab: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        check_chunk_size(chunk_size)
        return chunk_size
    return max(_MIN_CHUNK_ROWS, hidden_size // 4, _CHUNK_ELEMENTS // vocab)


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The projection's dtype: autocast's when it is on (as `nn.Linear` would run), else the hidden states'."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


class _Head:
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


class _LinearComplementFunction(torch.autograd.Function):
    """Per row of ``hidden`` ``[N, d]``: ``(H, log p_g)`` of the logits ``transform(hidden @ weight.T + bias)``,
    plus two non-differentiable rows for metrics: ``log(1 - p_g)`` and whether ``g`` is the (first) arg-max."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, valid, chunk: int, logit_scale: float, softcap):
        ctx.set_materialize_grads(False)
        n, vocab = hidden.shape[0], weight.shape[0]
        head = _Head(weight, bias, _compute_dtype(hidden), logit_scale, softcap)
        row_max = hidden.new_empty(n, dtype=torch.float32)
        sum_e, sum_ez, z_g = torch.empty_like(row_max), torch.empty_like(row_max), torch.empty_like(row_max)
        is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
        buffers = _buffers(hidden, n, vocab, chunk, count=2)
        kernels = _triton_kernels(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            for rows, logits, e in _row_chunks(n, chunk, buffers):
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
        ctx.chunk, ctx.logit_scale, ctx.softcap = chunk, logit_scale, softcap
        ctx.compute_dtype = head.compute_dtype
        return entropy, log_pg, log_1m_pg, is_top1

    @staticmethod
    def backward(ctx, grad_entropy, grad_log_pg, _grad_log_1m_pg, _grad_is_top1):
        hidden, weight, bias, target, valid, entropy, log_pg, row_max, log_s = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        none = (None,) * 5
        if not (needs_hidden or needs_weight or needs_bias) or (grad_entropy is None and grad_log_pg is None):
            return None, None, None, *none
        n, vocab = hidden.shape[0], weight.shape[0]
        alpha, beta, at_target = grad_coefficients(entropy, log_pg, log_s, valid, grad_entropy, grad_log_pg)
        head = _Head(weight, bias, ctx.compute_dtype, ctx.logit_scale, ctx.softcap)
        # float32 accumulators (rounding each chunk's contribution to bf16 before summing would bias the update);
        # grad_hidden has one contribution per row, so it is written in the compute dtype directly.
        grad_hidden = (
            torch.empty(hidden.shape, device=hidden.device, dtype=ctx.compute_dtype) if needs_hidden else None
        )
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if needs_weight else None
        grad_bias = torch.zeros(vocab, device=weight.device, dtype=torch.float32) if needs_bias else None
        # soft-capping needs the logits after their gradient is computed (a third buffer); otherwise the gradient
        # overwrites them in place
        keep_logits = ctx.softcap is not None
        buffers = _buffers(hidden, n, vocab, ctx.chunk, count=3 if keep_logits else 2)
        kernels = _triton_kernels(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            for rows, logits, e, *rest in _row_chunks(n, ctx.chunk, buffers):
                head.logits(hidden[rows], logits)
                coefficients = (alpha[rows], beta[rows], at_target[rows])
                z = rest[0] if keep_logits else logits
                grad = chunk_grad(logits, target[rows], row_max[rows], *coefficients, z, e, z, kernels)
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


def _buffers(hidden: torch.Tensor, n: int, vocab: int, chunk: int, count: int):
    """``count`` float32 ``[chunk, V]`` work buffers: the chunk's logits (then `chunk_sums`' / `chunk_grad`'s ``z``),
    ``e``, and with soft-capping a separate ``z``."""
    rows = max(1, min(chunk, n))
    return tuple(hidden.new_empty(rows, vocab, dtype=torch.float32) for _ in range(count))


def _row_chunks(n: int, chunk: int, buffers):
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        yield (slice(start, end), *(b[: end - start] for b in buffers))


def _check_head(hidden, weight, bias, labels) -> None:
    for name, tensor in (("hidden", hidden), ("weight", weight)):
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor")
    if hidden.dim() < 1 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden [..., d] and weight [V, d] must share d (the head computes hidden @ weight.T): got hidden "
            f"{tuple(hidden.shape)} and weight {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape [V] = ({weight.shape[0]},), got {tuple(bias.shape)}")
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError("labels must be an integer tensor of class indices")
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"labels must have the shape of hidden without its last dimension: hidden {tuple(hidden.shape)} needs "
            f"labels {tuple(hidden.shape[:-1])}, got {tuple(labels.shape)}"
        )
    if weight.shape[0] < 2:
        raise ValueError(f"the complement needs at least 2 classes, got V={weight.shape[0]}")


def linear_complement_terms(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
) -> dict[str, torch.Tensor]:
    """Per position of ``labels`` (shape ``[...]``), from one chunked pass over ``hidden @ weight.T + bias``:

    * ``"complement_entropy"``: ``H`` (differentiable), 0 at ignored positions;
    * ``"log_probs"``: ``log p_g`` (differentiable; the cross-entropy is its negative), 0 at ignored positions;
    * ``"entropy"``: the full softmax's entropy ``(1 - p_g) H + H_binary(p_g)`` (no gradient; TRL's metric);
    * ``"is_top1"``: whether the label is the arg-max, ties to the first maximal index as ``argmax`` (and TRL's
      ``mean_token_accuracy``) take them (no gradient; token accuracy);
    * ``"valid"``: positions whose label is not ``ignore_index``.

    Only valid positions are projected (a prompt masked with ``-100`` costs nothing in the head).
    """
    _check_head(hidden, weight, bias, labels)
    vocab = weight.shape[0]
    labels = labels.long()
    valid = check_label_range(labels.reshape(-1), vocab, ignore_index).reshape(labels.shape)
    # Valid positions in row-major order; every output is a fresh tensor of the labels' shape (not a view: engines
    # such as FSDP2 hook a module's outputs, and a view would let an in-place op drop that hook).
    index = valid.nonzero(as_tuple=True)
    picked = hidden[index]
    target = labels[index]
    chunk = _chunk_rows(hidden.shape[-1], vocab, chunk_size)
    outputs = _LinearComplementFunction.apply(
        picked,
        weight,
        bias,
        target,
        torch.ones_like(target, dtype=torch.bool),
        chunk,
        logit_scale,
        final_logit_softcapping,
    )
    entropy, log_pg, log_1m_pg, is_top1 = (
        # scatter back to every position; index_put keeps the result connected to the graph with no valid row
        hidden.new_zeros(labels.shape, dtype=out.dtype).index_put(index, out)
        for out in outputs
    )
    with torch.no_grad():
        # H(p) = H_binary(p_g) + (1 - p_g) H, with 1 - p_g from its own log (1 - exp(log p_g) rounds to 0 first)
        full_entropy = log_1m_pg.exp() * (entropy - log_1m_pg) - log_pg.exp() * log_pg
        full_entropy = full_entropy.masked_fill_(~valid, 0.0)
    return {
        "complement_entropy": entropy,
        "log_probs": log_pg,
        "entropy": full_entropy,
        "is_top1": is_top1,
        "valid": valid,
    }


def linear_complement_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
) -> torch.Tensor:
    """``complement_entropy(hidden @ weight.T + bias, labels)`` without ever building the ``[N, V]`` logits.

    Args:
        hidden: ``[..., d]`` hidden states (any float dtype; under autocast the projection runs in autocast's dtype,
            as ``nn.Linear`` would).
        weight: ``[V, d]`` head weight (``lm_head.weight``); ``bias``: ``[V]`` or None.
        labels: ``[...]`` class indices; ``ignore_index`` positions contribute nothing.
        reduction: ``"mean"`` over valid positions, ``"sum"`` or ``"none"`` (shape ``[...]``).
        chunk_size: rows projected at a time (default: about 4M logits per chunk, at least max(128, d / 4) rows).
        logit_scale, final_logit_softcapping: the model's logit transform ``cap * tanh(scale * y / cap)``.

    Returns:
        A float32 tensor, differentiable with respect to ``hidden``, ``weight`` and ``bias``. Extra memory
        ``O(chunk x V + V x d)``, computed in float32 whatever the input dtype.
    """
    _check_reduction(reduction)
    terms = linear_complement_terms(
        hidden,
        weight,
        labels,
        bias=bias,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        logit_scale=logit_scale,
        final_logit_softcapping=final_logit_softcapping,
    )
    return _reduce(terms["complement_entropy"], terms["valid"], reduction, labels.shape)
