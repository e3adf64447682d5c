"""`linear_complement_entropy` / `linear_complement_terms`: the complement terms of ``hidden @ W.T + b`` without the
``[N, V]`` logits, against float64 autograd through the materialized logits."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hf_cot.linear_losses import linear_complement_entropy, linear_complement_terms
from testing_utils import naive_entropy


def _problem(n=40, d=12, vocab=29, bias=True, seed=0, ignore_every=5):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, d, generator=g, dtype=torch.float64) / math.sqrt(d) * 3
    b = torch.randn(vocab, generator=g, dtype=torch.float64) if bias else None
    labels = torch.randint(0, vocab, (n,), generator=g)
    if ignore_every:
        labels[::ignore_every] = -100
    return hidden, weight, b, labels


def _logits(hidden, weight, bias, scale=1.0, cap=None):
    z = hidden @ weight.T + (0 if bias is None else bias)
    z = z * scale
    return z if cap is None else cap * torch.tanh(z / cap)


def _leaves(*tensors, dtype=torch.float32):
    return [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_value_and_gradients_match_the_materialized_logits(reduction, bias, chunk_size):
    hidden, weight, b, labels = _problem(bias=bias)
    ref = _leaves(hidden, weight, b, dtype=torch.float64)
    valid = labels != -100
    per_row = torch.zeros(labels.shape, dtype=torch.float64)
    per_row[valid] = naive_entropy(_logits(*ref)[valid], labels[valid])
    expected = {"mean": per_row.sum() / valid.sum(), "sum": per_row.sum(), "none": per_row}[reduction]
    h, w, bb = _leaves(hidden, weight, b)
    got = linear_complement_entropy(h, w, labels, bias=bb, reduction=reduction, chunk_size=chunk_size)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=1e-5)
    upstream = torch.randn(expected.shape, dtype=torch.float64)
    (expected * upstream).sum().backward()
    (got * upstream.float()).sum().backward()
    for mine, theirs in zip((h, w, bb), ref, strict=True):
        if theirs is not None:
            torch.testing.assert_close(mine.grad.double(), theirs.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scale,cap", [(0.5, None), (1.0, 4.0), (2.0, 3.0)])
def test_logit_scale_and_softcapping_and_the_cross_entropy(scale, cap):
    """Both outputs that carry gradients (H and log p_g) through the model's logit transform, plus the two metrics."""
    hidden, weight, b, labels = _problem(seed=1)
    ref = _leaves(hidden, weight, b, dtype=torch.float64)
    z = _logits(*ref, scale=scale, cap=cap)
    valid = labels != -100
    log_p = torch.log_softmax(z[valid], -1)
    ce = -log_p.gather(1, labels[valid, None]).squeeze(1)
    H = naive_entropy(z[valid], labels[valid])
    (0.3 * ce.sum() - 1.7 * H.sum()).backward()
    h, w, bb = _leaves(hidden, weight, b)
    t = linear_complement_terms(h, w, labels, bias=bb, chunk_size=6, logit_scale=scale, final_logit_softcapping=cap)
    (0.3 * -t["log_probs"].sum() - 1.7 * t["complement_entropy"].sum()).backward()
    torch.testing.assert_close(-t["log_probs"][valid].double(), ce.detach(), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(t["complement_entropy"][valid].double(), H.detach(), atol=2e-6, rtol=1e-5)
    for mine, theirs in zip((h, w, bb), ref, strict=True):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, atol=1e-5, rtol=1e-4)
    full_entropy = -(log_p.exp() * log_p).sum(-1)
    torch.testing.assert_close(t["entropy"][valid].double(), full_entropy.detach(), atol=2e-6, rtol=1e-5)
    assert torch.equal(t["is_top1"][valid], z[valid].argmax(-1) == labels[valid])
    assert torch.equal(t["valid"], valid)
    for key in ("complement_entropy", "log_probs", "entropy"):
        assert (t[key][~valid] == 0).all()


def test_ties_at_the_top_go_to_the_first_index_as_argmax():
    """Equal logits in a row: the label is top-1 only if it is the first maximal index (torch.argmax's rule)."""
    hidden = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    weight = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])  # rows 0-1 tie, rows 2-3 tie
    labels = torch.tensor([0, 1, 2, 3])
    logits = hidden @ weight.T
    t = linear_complement_terms(hidden, weight, labels)
    assert torch.equal(t["is_top1"], logits.argmax(-1) == labels)
    assert t["is_top1"].tolist() == [True, False, True, False]


def test_confident_rows_keep_the_full_entropy_exact():
    """p_g -> 1: the full entropy comes from (1 - p_g) H + H_binary(p_g), all non-negative terms (no cancellation)."""
    hidden = torch.tensor([[30.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.5], [-1.0, 0.0]])
    labels = torch.tensor([0, 1])
    t = linear_complement_terms(hidden, weight, labels)
    log_p = torch.log_softmax((hidden @ weight.T).double(), -1)
    full = -(log_p.exp() * log_p).sum(-1)
    assert full[0] < 1e-10  # where a "H_full - ..." subtraction in float32 would be all rounding noise
    torch.testing.assert_close(t["entropy"].double(), full, atol=1e-12, rtol=1e-5)


def test_no_logits_sized_tensor_is_ever_allocated():
    """Every tensor any op creates, forward and backward, stays within O(chunk x V + V x d + N x d)."""
    n, d, vocab, chunk = 600, 8, 500, 16
    hidden, weight, b, labels = _problem(n=n, d=d, vocab=vocab, ignore_every=0)
    h, w, bb = _leaves(hidden, weight, b)

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if torch.is_tensor(t):
                    LargestOutput.largest = max(LargestOutput.largest, t.numel())
            return out

    with LargestOutput():
        linear_complement_entropy(h, w, labels, bias=bb, chunk_size=chunk).backward()
    assert LargestOutput.largest <= max(chunk * vocab, vocab * d, n * d)
    assert LargestOutput.largest < n * vocab / 30  # the materialized path would allocate n x vocab
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_only_valid_rows_are_projected_and_all_ignored_gives_a_connected_zero():
    hidden, weight, b, labels = _problem(n=6)
    h, w, bb = _leaves(hidden, weight, b)
    value = linear_complement_entropy(h, w, torch.full_like(labels, -100), bias=bb)
    value.backward()
    assert value.item() == 0.0 and (w.grad == 0).all() and (h.grad == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    """The same loss and gradients as the materialized logits in that dtype, to that dtype's rounding."""
    hidden, weight, b, labels = _problem(n=64, d=16, vocab=50, bias=False)
    h, w = _leaves(hidden, weight, dtype=dtype)
    got = linear_complement_entropy(h, w, labels, chunk_size=8)
    got.backward()
    h2, w2 = _leaves(hidden, weight, dtype=dtype)
    valid = labels != -100
    z = (h2 @ w2.T).float()  # the materialized path: half-precision logits, the loss in float32
    expected = naive_entropy(z[valid].double(), labels[valid]).mean()
    expected.backward()
    assert got.dtype == torch.float32 and h.grad.dtype == dtype and w.grad.dtype == dtype
    assert got.item() == pytest.approx(expected.item(), rel=1e-3)
    for mine, theirs in ((h.grad, h2.grad), (w.grad, w2.grad)):
        torch.testing.assert_close(mine.float(), theirs.float(), atol=2e-3, rtol=2e-2)


def test_autocast_runs_the_projection_in_the_autocast_dtype():
    hidden, weight, b, labels = _problem(n=32, bias=True)
    h, w, bb = _leaves(hidden, weight, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_complement_entropy(h, w, labels, bias=bb)
        z = torch.nn.functional.linear(h, w, bb)  # what nn.Linear does under autocast
    valid = labels != -100
    expected = naive_entropy(z.float()[valid].double(), labels[valid]).mean()
    assert z.dtype == torch.bfloat16
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    got.backward()
    assert h.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


def test_bad_inputs_are_named():
    hidden, weight, b, labels = _problem()
    h, w = hidden.float(), weight.float()
    with pytest.raises(ValueError, match="share d"):
        linear_complement_entropy(h, w[:, :-1], labels)
    with pytest.raises(ValueError, match="bias must have shape"):
        linear_complement_entropy(h, w, labels, bias=torch.zeros(3))
    with pytest.raises(ValueError, match="shape of hidden"):
        linear_complement_entropy(h, w, labels[:-1])
    with pytest.raises(ValueError, match="outside"):
        linear_complement_entropy(h, w, torch.full_like(labels, w.shape[0]))
    with pytest.raises(TypeError, match="integer"):
        linear_complement_entropy(h, w, labels.float())
    with pytest.raises(ValueError, match="reduction"):
        linear_complement_entropy(h, w, labels, reduction="avg")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_complement_entropy(h, w, labels, chunk_size=0)


def test_leading_dimensions_are_kept():
    hidden, weight, b, labels = _problem(n=24)
    h, w = hidden.float().reshape(4, 6, -1), weight.float()
    got = linear_complement_entropy(h, w, labels.reshape(4, 6), reduction="none")
    flat = linear_complement_entropy(h.reshape(24, -1), w, labels, reduction="none")
    assert got.shape == (4, 6) and torch.equal(got.reshape(-1), flat)
