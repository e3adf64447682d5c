"""``reduction=`` of the public losses: its check, and the reduction of per-row values."""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_rows(values: torch.Tensor, valid: torch.Tensor, reduction: str, shape: torch.Size) -> torch.Tensor:
    """``"none"``: ``values`` in ``shape``; ``"sum"``; ``"mean"`` over the valid positions."""
    if reduction == "none":
        return values.reshape(shape)
    total = values.sum()
    if reduction == "sum":
        return total
    # mean over valid positions; with none valid, total is an exact 0 connected to the graph, so 0 / 1 = 0
    # with a zero gradient.
    return total / valid.sum().clamp(min=1)
