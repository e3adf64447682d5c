"""Which implementation runs the streaming passes: the ``impl=`` argument of the public losses.

* ``"auto"``: the fused Triton kernels on CUDA tensors when triton imports, else the eager (torch) chunked kernel;
* ``"eager"``: always the eager kernel;
* ``"triton"``: always the Triton kernels; an error if they cannot run here (no triton, or a tensor that is not on
  CUDA while the kernels are not under Triton's CPU interpreter, ``TRITON_INTERPRET=1``).

``impl=None`` takes the value of ``HF_COT_TRITON``: ``auto`` (also when unset), ``0`` or ``eager``, ``force`` or
``triton``.
"""

from __future__ import annotations

import functools
import os

import torch

IMPLS = ("auto", "eager", "triton")
ENV_VAR = "HF_COT_TRITON"
# HF_COT_TRITON value -> impl: the historical names ("0", "force") and the impl names
_ENV_VALUES = {"auto": "auto", "0": "eager", "force": "triton", "eager": "eager", "triton": "triton"}


def resolve_impl(impl: str | None) -> str:
    """The impl to use: ``impl`` itself, or ``HF_COT_TRITON``'s when None. ValueError for an unknown value."""
    if impl is None:
        value = os.environ.get(ENV_VAR, "auto").strip().lower()
        if value not in _ENV_VALUES:
            raise ValueError(f"{ENV_VAR} must be one of {tuple(_ENV_VALUES)}, got {value!r}")
        return _ENV_VALUES[value]
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} (or None: {ENV_VAR} decides, default 'auto'), got {impl!r}")
    return impl


@functools.lru_cache(maxsize=1)
def load_triton_kernels():
    """The `triton_kernels` module, or None where triton does not import (CPU-only torch builds, macOS, Windows)."""
    try:
        from . import triton_kernels
    except ImportError:
        return None
    return triton_kernels


def kernels_for(impl: str, tensor: torch.Tensor):
    """The Triton kernels module when ``impl`` (resolved) runs them on ``tensor``, else None (the eager kernel)."""
    if impl == "eager" or (impl == "auto" and not tensor.is_cuda):
        return None
    kernels = load_triton_kernels()
    if impl == "auto" or (kernels is not None and (tensor.is_cuda or kernels.INTERPRETED)):
        return kernels
    requested = f"impl='triton' (or {ENV_VAR}=force / =triton with impl=None)"
    if kernels is None:
        raise RuntimeError(
            f"{requested} needs triton, which does not import here: install it (`pip install triton`; CUDA builds "
            "of torch on Linux ship it), or use impl='auto' / 'eager' to run the eager torch kernel"
        )
    raise RuntimeError(
        f"{requested} runs its kernels on CUDA tensors, got a tensor on {tensor.device}: move the inputs to a CUDA "
        "device, set TRITON_INTERPRET=1 before triton is first imported to run the kernels under Triton's CPU "
        "interpreter (slow; for tests), or use impl='auto' / 'eager'"
    )
