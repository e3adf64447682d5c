"""Internal machinery of the complement-entropy losses: no stable API, may change in any release.

The public functions are in `hf_cot.losses` and `hf_cot.linear_losses`; they check their arguments and call in here.

* ``backend``: the ``impl=`` argument (``"auto"`` / ``"eager"`` / ``"triton"``, default from ``HF_COT_TRITON``) and
  the lazy import of the Triton kernels;
* ``chunking``: rows per chunk and the reused float32 work buffers;
* ``streaming``: the per-chunk forward sums and backward gradient (eager torch, or the Triton kernels);
* ``complement``: the autograd Function over ``[N, K]`` logits;
* ``linear``: the autograd Function over ``hidden @ weight.T + bias`` (logits built one chunk at a time);
* ``reduction``: ``reduction=`` checking and the mean over valid positions;
* ``triton_kernels``: the fused Triton kernels (imported only when they run).
"""
