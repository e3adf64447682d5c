"""The run's random streams, left as a plain run has them.

Work that a plain Trainer would not do (the first-batch check's forwards, the alternating mode's complement forward)
must not draw from the streams the run's own forwards and data pipeline draw from: torch's (CPU and the device's:
dropout), numpy's global stream (Wav2Vec2's SpecAugment masks, many collators) and Python's `random` (augmentations,
data collators). `untouched_random_streams` saves all of them and puts them back afterwards.

Work that draws random numbers of its own (the complement step's dropout and SpecAugment masks) runs inside it on
streams of its own: `seed_streams` starts them, `capture_streams` / `restore_streams` carry them from one block to the
next and through a checkpoint, in a form `torch.load(..., weights_only=True)` reads back (tensors, numbers, None).
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def _device_module(device: torch.device | None):
    if device is None or device.type == "cpu":
        return None
    module = getattr(torch, device.type, None)
    return module if module is not None and hasattr(module, "get_rng_state") else None


@contextlib.contextmanager
def untouched_random_streams(device: torch.device | None = None):
    """Run the block, then restore torch's CPU generator (and ``device``'s, for an accelerator), numpy's global
    stream and Python's `random` to the states they had before it."""
    module = _device_module(device)
    devices = [device] if module is not None else []
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def seed_streams(seed: int, device: torch.device | None = None) -> None:
    """Seed torch's CPU generator (and ``device``'s: the current device of its type), numpy's global stream and
    Python's `random` with ``seed``."""
    torch.random.default_generator.manual_seed(seed)
    module = _device_module(device)
    if module is not None:
        module.manual_seed(seed)
    _seed_numpy(seed)
    random.seed(seed)


def _seed_numpy(seed: int) -> None:
    np.random.seed(seed % 2**32)  # numpy takes 32-bit seeds only


def capture_streams(device: torch.device | None = None) -> dict:
    """The current states of the streams `seed_streams` seeds: ``{"cpu", "device" (None without an accelerator),
    "numpy", "python"}``, numbers and tensors only."""
    module = _device_module(device)
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "cpu": torch.get_rng_state(),
        "device": module.get_rng_state(device) if module is not None else None,
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32 words: int64 holds them exactly
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def restore_streams(state: dict, device: torch.device | None = None, *, seed: int) -> None:
    """Put back what `capture_streams` returned. A part it lacks (a checkpoint written before numpy's and Python's
    streams were kept, or without the device's) is seeded with ``seed`` instead, as `seed_streams` would."""
    torch.set_rng_state(state["cpu"])
    module = _device_module(device)
    if module is not None:
        if state.get("device") is not None:
            module.set_rng_state(state["device"], device)
        else:
            module.manual_seed(seed)
    numpy_state = state.get("numpy")
    if numpy_state is None:
        _seed_numpy(seed)
    else:
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            ("MT19937", keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
        )
    python_state = state.get("python")
    if python_state is None:
        random.seed(seed)
    else:
        internal = tuple(int(x) for x in python_state["internal"].tolist())
        random.setstate((python_state["version"], internal, python_state["gauss_next"]))
