"""Fused Triton kernels for the two streaming passes of `hf_cot.ops.streaming` (``impl="triton"``, and ``"auto"`` on
CUDA).

The eager path runs each chunk of rows as about ten forward and eight backward elementwise / reduction ops, each a
full float32 pass over the chunk (one kernel launch each on a GPU). Here one program handles one row and reads its
logits in their own dtype:

* forward: one read for the max ``M`` of the non-target logits, one read for ``s = sum e`` and ``E = sum e z'``
  (``z' = max(z - M, floor)``, ``e = exp(z')``); only three floats per row are written;
* backward: one read, one write of the gradient ``e (alpha z' + beta)`` (``at_target`` at the ground truth).

The math is the eager code's, entry for entry (same floor, same degenerate-row rule, NaN propagates), so the two
paths agree to float32 rounding; tests/ops/test_triton_kernels.py checks that under Triton's CPU interpreter.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

_MAX_BLOCK = 4096


@triton.jit
def _forward_kernel(
    logits_ptr,
    stride_row,
    target_ptr,
    row_max_ptr,
    sum_e_ptr,
    sum_ez_ptr,
    num_classes,
    FLOOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    gold = tl.load(target_ptr + row)
    # Pass 1: the largest non-target logit.
    running_max = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(base + cols, mask=cols < num_classes, other=float("-inf")).to(tl.float32)
        z = tl.where(cols == gold, float("-inf"), z)
        running_max = tl.maximum(running_max, z)
    row_max = tl.max(running_max, axis=0)
    # Empty complement (every non-target logit -inf): the target entry becomes 0 instead, as in the eager code.
    degenerate = row_max == float("-inf")
    shift = tl.where(degenerate, 0.0, row_max)
    target_value = tl.where(degenerate, 0.0, FLOOR)
    # Pass 2: s = sum e and E = sum e z'.
    acc_e = tl.zeros([BLOCK], tl.float32)
    acc_ez = tl.zeros([BLOCK], tl.float32)
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        in_row = cols < num_classes
        z = tl.load(base + cols, mask=in_row, other=0.0).to(tl.float32)
        shifted = z - shift
        shifted = tl.where(shifted < FLOOR, FLOOR, shifted)  # a comparison keeps NaN (tl.maximum might not)
        shifted = tl.where(cols == gold, target_value, shifted)
        e = tl.where(in_row, tl.exp(shifted), 0.0)
        acc_e += e
        acc_ez += e * shifted
    tl.store(row_max_ptr + row, row_max)
    tl.store(sum_e_ptr + row, tl.sum(acc_e, axis=0))
    tl.store(sum_ez_ptr + row, tl.sum(acc_ez, axis=0))


@triton.jit
def _backward_kernel(
    logits_ptr,
    stride_row,
    grad_ptr,
    stride_grad_row,
    target_ptr,
    row_max_ptr,
    alpha_ptr,
    beta_ptr,
    at_target_ptr,
    num_classes,
    FLOOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    out = grad_ptr + row * stride_grad_row
    gold = tl.load(target_ptr + row)
    row_max = tl.load(row_max_ptr + row)
    alpha = tl.load(alpha_ptr + row)
    beta = tl.load(beta_ptr + row)
    at_target = tl.load(at_target_ptr + row)
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        in_row = cols < num_classes
        z = tl.load(base + cols, mask=in_row, other=0.0).to(tl.float32)
        shifted = z - shift
        shifted = tl.where(shifted < FLOOR, FLOOR, shifted)
        grad = tl.exp(shifted) * (alpha * shifted + beta)
        grad = tl.where(cols == gold, at_target, grad)
        tl.store(out + cols, grad.to(grad_ptr.dtype.element_ty), mask=in_row)


# Triton picks its interpreter when the kernels are decorated (TRITON_INTERPRET=1 at import): they then also run on CPU
# tensors, as the tests use them without a GPU.
INTERPRETED = not isinstance(_forward_kernel, triton.runtime.jit.JITFunction)


def _block(num_classes: int) -> tuple[int, int]:
    block = min(triton.next_power_of_2(num_classes), _MAX_BLOCK)
    return block, (8 if block >= 2048 else 4)


def _row_major(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.stride(-1) == 1 else logits.contiguous()


def _on_device_of(tensor: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's (a model on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def forward_sums(logits: torch.Tensor, target: torch.Tensor, floor: float):
    """``(row_max, s, E)`` per row of ``[N, K]`` logits, all float32 (see the module docstring)."""
    logits = _row_major(logits)
    n, k = logits.shape
    row_max = torch.empty(n, device=logits.device, dtype=torch.float32)
    sum_e = torch.empty_like(row_max)
    sum_ez = torch.empty_like(row_max)
    if n:
        block, warps = _block(k)
        with _on_device_of(logits):
            _forward_kernel[(n,)](
                logits, logits.stride(0), target, row_max, sum_e, sum_ez, k, FLOOR=floor, BLOCK=block, num_warps=warps
            )
    return row_max, sum_e, sum_ez


def backward_grad(logits, target, row_max, alpha, beta, at_target, floor: float) -> torch.Tensor:
    """The logits' gradient ``e (alpha z' + beta)``, ``at_target`` at the ground truth; the logits' dtype."""
    logits = _row_major(logits)
    n, k = logits.shape
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    if n:
        block, warps = _block(k)
        with _on_device_of(logits):
            _backward_kernel[(n,)](
                logits,
                logits.stride(0),
                grad,
                grad.stride(0),
                target,
                row_max,
                alpha.contiguous(),
                beta.contiguous(),
                at_target.contiguous(),
                k,
                FLOOR=floor,
                BLOCK=block,
                num_warps=warps,
            )
    return grad
