"""Rows per chunk and the float32 work buffers both autograd Functions stream through.

Each chunk of rows needs two (with soft-capping, three) float32 ``[rows, width]`` work buffers, allocated once and
reused for every chunk. The sizes trade per-chunk overhead against buffer size; BENCHMARKS.md has the measurements
behind them.

* Logits (`logits_chunk_rows`): about ``CHUNK_ELEMENTS`` values per chunk, or ``CHUNK_ELEMENTS_CPU`` on a CPU with
  one intra-op thread. There the small buffers stay in the L2 cache, so the few elementwise passes over a chunk cost
  about one pass over DRAM. With several threads, and on accelerators, every op of a chunk is one parallel region
  (an OpenMP fork/join) or one kernel launch, whose fixed cost small chunks would multiply - and on an oversubscribed
  CPU each join can wait a scheduler tick for a descheduled thread.
* Linear head (`head_chunk_rows`): about ``CHUNK_ELEMENTS`` logits per chunk but at least ``MIN_CHUNK_ROWS`` and
  ``d / 4`` rows, because every chunk reads the whole ``[V, d]`` weight and its weight-gradient GEMM has the chunk's
  rows as its inner dimension: too few rows and the GEMMs stop being compute-bound.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 22  # 16 MiB float32 work buffers
CHUNK_ELEMENTS_CPU = 1 << 17  # 512 KiB work buffers: two fit a 2 MiB L2 cache
MIN_CHUNK_ROWS = 128


def chunk_rows(width: int, chunk_size: int | None, *, elements: int = CHUNK_ELEMENTS, min_rows: int = 1) -> int:
    """``chunk_size`` when given (checked by the caller), else about ``elements`` values of ``width`` per chunk."""
    if chunk_size is not None:
        return chunk_size
    return max(min_rows, elements // width)


def logits_chunk_rows(logits: torch.Tensor, chunk_size: int | None) -> int:
    """Rows per chunk of ``[N, K]`` logits (module docstring)."""
    single_thread_cpu = logits.device.type == "cpu" and torch.get_num_threads() == 1
    elements = CHUNK_ELEMENTS_CPU if single_thread_cpu else CHUNK_ELEMENTS
    return chunk_rows(logits.shape[-1], chunk_size, elements=elements)


def head_chunk_rows(hidden_size: int, vocab: int, chunk_size: int | None) -> int:
    """Rows per chunk of ``hidden`` projected through a ``[V, d]`` head (module docstring)."""
    return chunk_rows(vocab, chunk_size, min_rows=max(MIN_CHUNK_ROWS, hidden_size // 4))


def row_chunks(like: torch.Tensor, n: int, width: int, chunk: int, count: int = 2):
    """Yield ``(rows, *buffers)`` over ``n`` rows, ``chunk`` at a time: ``rows`` a slice, ``buffers`` the first
    ``m`` rows of ``count`` float32 ``[chunk, width]`` work buffers (on ``like``'s device), allocated once."""
    size = max(1, min(chunk, n))
    buffers = tuple(like.new_empty(size, width, dtype=torch.float32) for _ in range(count))
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        yield (slice(start, end), *(b[: end - start] for b in buffers))
