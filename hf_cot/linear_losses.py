"""Complement entropy through a linear head, without materializing the ``[N, V]`` logits (pure tensor math).

For a language model the logits ``hidden @ weight.T + bias`` are the largest tensor of a training step (batch 8 x
4,096 tokens x a 128k vocabulary is 4.2 G elements). Here they are built one chunk of rows at a time, folded into
per-row statistics by the same streaming arithmetic as `hf_cot.losses` (eager, or the same Triton kernels, chosen by
the same ``impl=``), and dropped; the backward recomputes each chunk's logits and turns them into the gradients of
the hidden states, the weight and the bias (float32 accumulation). Extra memory: a few ``[chunk, V]`` float32 buffers
plus the head's weight gradient. The machinery is in `hf_cot.ops.linear` (internal).

One pass gives, per row, the complement entropy ``H``, ``log p_g`` (so the cross-entropy is ``-log p_g``, GCE's
guide ``p_g^alpha`` and the full-softmax entropy ``(1 - p_g) H + H_binary(p_g)`` need no second pass) and whether the
label is the arg-max. Logit transforms that models apply after the head are supported: a scale (Cohere's
``logit_scale``, Granite's ``1 / logits_scaling``) and Gemma-2-style soft-capping ``cap * tanh(z / cap)``.
"""

from __future__ import annotations

import torch

from .losses import check_chunk_size, check_label_range
from .ops.backend import kernels_for, resolve_impl
from .ops.chunking import head_chunk_rows
from .ops.linear import LinearComplementFunction
from .ops.reduction import check_reduction, reduce_rows

__all__ = ["linear_complement_entropy", "linear_complement_terms"]


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
    impl: str | None = None,
) -> dict[str, torch.Tensor]:
    """Per position of ``labels`` (shape ``[...]``), from one chunked pass over ``hidden @ weight.T + bias``:

    * ``"complement_entropy"``: ``H`` (differentiable), 0 at ignored positions;
    * ``"log_probs"``: ``log p_g`` (differentiable; the cross-entropy is its negative), 0 at ignored positions;
    * ``"entropy"``: the full softmax's entropy ``(1 - p_g) H + H_binary(p_g)`` (no gradient; TRL's metric);
    * ``"is_top1"``: whether the label is the arg-max, ties to the first maximal index as ``argmax`` (and TRL's
      ``mean_token_accuracy``) take them (no gradient; token accuracy);
    * ``"valid"``: positions whose label is not ``ignore_index``.

    Only valid positions are projected (a prompt masked with ``-100`` costs nothing in the head). The arguments are
    `linear_complement_entropy`'s.
    """
    impl = resolve_impl(impl)
    _check_head(hidden, weight, bias, labels)
    vocab = weight.shape[0]
    labels = labels.long()
    valid = check_label_range(labels.reshape(-1), vocab, ignore_index).reshape(labels.shape)
    # Valid positions in row-major order; every output is a fresh tensor of the labels' shape (not a view: engines
    # such as FSDP2 hook a module's outputs, and a view would let an in-place op drop that hook).
    index = valid.nonzero(as_tuple=True)
    picked = hidden[index]
    target = labels[index]
    if chunk_size is not None:
        check_chunk_size(chunk_size)
    kernels = kernels_for(impl, hidden)
    chunk = head_chunk_rows(hidden.shape[-1], vocab, chunk_size)
    outputs = LinearComplementFunction.apply(
        picked,
        weight,
        bias,
        target,
        torch.ones_like(target, dtype=torch.bool),
        chunk,
        logit_scale,
        final_logit_softcapping,
        kernels,
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
    impl: str | None = None,
) -> torch.Tensor:
    """``complement_entropy(hidden @ weight.T + bias, labels)`` without ever building the ``[N, V]`` logits.

    Args:
        hidden: ``[..., d]`` hidden states (any float dtype; under autocast the projection runs in autocast's dtype,
            as ``nn.Linear`` would).
        weight: ``[V, d]`` head weight (``lm_head.weight``); ``bias``: ``[V]`` or None.
        labels: ``[...]`` class indices; ``ignore_index`` positions contribute nothing.
        reduction: ``"mean"`` over valid positions, ``"sum"`` or ``"none"`` (shape ``[...]``).
        chunk_size: rows projected at a time (default: about 2**22 logits per chunk, at least max(128, d / 4) rows).
        logit_scale, final_logit_softcapping: the model's logit transform ``cap * tanh(scale * y / cap)``.
        impl: what computes each chunk's sums and gradient, as in `hf_cot.losses.complement_entropy`: ``"auto"``
            (the Triton kernels on CUDA, else eager torch), ``"eager"``, ``"triton"`` or None (``HF_COT_TRITON``).

    Returns:
        A float32 tensor, differentiable with respect to ``hidden``, ``weight`` and ``bias``. Extra memory
        ``O(chunk x V + V x d)``, computed in float32 whatever the input dtype.
    """
    impl = resolve_impl(impl)
    check_reduction(reduction)
    terms = linear_complement_terms(
        hidden,
        weight,
        labels,
        bias=bias,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        logit_scale=logit_scale,
        final_logit_softcapping=final_logit_softcapping,
        impl=impl,
    )
    return reduce_rows(terms["complement_entropy"], terms["valid"], reduction, labels.shape)
