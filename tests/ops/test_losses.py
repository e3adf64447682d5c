"""``hf_cot.losses`` against naive float64 references written here, independently of the chunked kernel.

* ``ref_terms``: masked log-softmax in float64 with plain autograd (``q = softmax(z with z_g = -inf)``), the
  textbook form of the complement entropy, masked *before* the multiply so that 0 * log 0 never appears.
* ``official_cot``: a faithful copy of ``ComplementEntropy.forward`` from henry8527/COT ``code/COT.py``
  (softmax, ``/ (1 - p_g + 1e-7)``, ``log(. + 1e-10)``, zero-hot mask, ``/ batch / classes``), device-agnostic.
* ``official_gce``: henry8527/GCE ``GCE.py`` without its two epsilons and normalized by log(K - 1), in float64.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_cot.linear_losses import linear_complement_entropy, linear_complement_terms
from hf_cot.losses import (
    complement_entropy,
    complement_normalizer,
    complement_objective,
    complement_terms,
    guided_complement_entropy,
    guided_rows,
)
from hf_cot.ops import backend

INF = float("inf")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The tensors here are tiny: intra-op threads only add spin-wait overhead on a loaded 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------- references


def ref_terms(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """float64 per-position ``(H, log p_g, valid)`` over the flattened positions, differentiable."""
    k = logits.shape[-1]
    z = logits.reshape(-1, k).double()
    y = labels.reshape(-1)
    valid = y != ignore_index
    target = torch.where(valid, y, torch.zeros_like(y))
    onehot = F.one_hot(target, k).bool()
    log_q = torch.log_softmax(z.masked_fill(onehot, -INF), dim=-1)
    # mask log q (target and -inf logits) before the multiply: q == 0 exactly there
    finite_log_q = torch.where(torch.isfinite(log_q), log_q, torch.zeros_like(log_q))
    entropy = -(log_q.exp() * finite_log_q).sum(-1)
    log_pg = torch.log_softmax(z, dim=-1).gather(1, target[:, None]).squeeze(1)
    zero = torch.zeros_like(entropy)
    return torch.where(valid, entropy, zero), torch.where(valid, log_pg, zero), valid


def ref_reduce(per_row: torch.Tensor, valid: torch.Tensor, reduction: str, shape) -> torch.Tensor:
    if reduction == "none":
        return per_row.reshape(shape)
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / valid.sum().clamp(min=1)


def ref_complement_entropy(logits, labels, reduction="mean", ignore_index=-100):
    entropy, _, valid = ref_terms(logits, labels, ignore_index)
    return ref_reduce(entropy, valid, reduction, labels.shape)


def ref_gce(logits, labels, alpha=1.0 / 3.0, reduction="mean", ignore_index=-100):
    entropy, log_pg, valid = ref_terms(logits, labels, ignore_index)
    scale = math.log(logits.shape[-1] - 1) if logits.shape[-1] > 2 else 1.0
    per_row = torch.where(valid, -torch.exp(alpha * log_pg) * entropy / scale, torch.zeros_like(entropy))
    return ref_reduce(per_row, valid, reduction, labels.shape)


def official_cot(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``ComplementEntropy.forward`` of henry8527/COT code/COT.py, with ``classes = K`` and no ``.cuda()``."""
    batch_size, classes = len(y), y_hat.shape[1]
    y_hat = F.softmax(y_hat, dim=1)
    yg = torch.gather(y_hat, 1, torch.unsqueeze(y, 1))
    yg_ = (1 - yg) + 1e-7  # avoiding numerical issues (first)
    px = y_hat / yg_.view(len(y_hat), 1)
    px_log = torch.log(px + 1e-10)  # avoiding numerical issues (second)
    y_zerohot = torch.ones(batch_size, classes, dtype=y_hat.dtype).scatter_(1, y.view(batch_size, 1), 0)
    output = px * px_log * y_zerohot
    loss = torch.sum(output)
    loss /= float(batch_size)
    loss /= float(classes)
    return loss


def official_gce(y_hat: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """henry8527/GCE GCE.py in float64, without its epsilons, divided by log(K - 1) instead of log(10)."""
    batch_size, classes = len(y), y_hat.shape[1]
    y_hat = F.softmax(y_hat.double(), dim=1)
    yg = torch.gather(y_hat, 1, torch.unsqueeze(y, 1))
    guided_factor = yg**alpha
    px = y_hat / (1 - yg).view(len(y_hat), 1)
    px_log = torch.log(px)
    y_zerohot = torch.ones(batch_size, classes, dtype=y_hat.dtype).scatter_(1, y.view(batch_size, 1), 0)
    output = px * px_log * y_zerohot
    guided_output = guided_factor.squeeze(1) * torch.sum(output, dim=1)
    return torch.sum(guided_output) / batch_size / math.log(classes - 1)


# ----------------------------------------------------------------------------------------------- helpers


def make_case(shape, k, *, scale=3.0, seed=0, ignore_fraction=0.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, k, generator=gen, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, k, shape, generator=gen)
    if ignore_fraction:
        drop = torch.rand(shape, generator=gen) < ignore_fraction
        labels = labels.masked_fill(drop, -100)
    return logits, labels


def value_and_grad(fn, logits, labels, **kwargs):
    leaf = logits.detach().clone().requires_grad_(True)
    out = fn(leaf, labels, **kwargs)
    out.sum().backward()
    return out.detach(), leaf.grad


def ref_value_and_grad(fn, logits, labels, **kwargs):
    """Reference on the logits *as given* (already rounded to their dtype), in float64."""
    leaf = logits.detach().double().requires_grad_(True)
    out = fn(leaf, labels, **kwargs)
    out.sum().backward()
    return out.detach(), leaf.grad


def assert_close64(actual, expected, atol, rtol=1e-5):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


SHAPES = [(6,), (2, 3)]  # [B, K] and [B, T, V]
KS = [2, 3, 5, 50, 1000]


# ----------------------------------------------------------------------------------------------- values, grads


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("shape", SHAPES, ids=["BK", "BTV"])
def test_complement_entropy_matches_reference(shape, k):
    logits, labels = make_case(shape, k, seed=k)
    for reduction in ("mean", "sum", "none"):
        out, grad = value_and_grad(complement_entropy, logits, labels, reduction=reduction)
        ref, ref_grad = ref_value_and_grad(ref_complement_entropy, logits, labels, reduction=reduction)
        assert out.dtype == torch.float32 and grad.dtype == torch.float32
        assert out.shape == ref.shape
        assert_close64(out, ref, atol=2e-6)
        assert_close64(grad, ref_grad, atol=1e-6)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(
    "kind", ["huge_spread", "one_hot_1e4", "target_1e4", "target_minus_1e4", "large_gaps", "near_uniform"]
)
def test_extreme_finite_logits_match_reference(kind, k):
    gen = torch.Generator().manual_seed(7)
    n = 5
    labels = torch.randint(0, k, (n,), generator=gen)
    if kind == "huge_spread":
        logits = torch.randn(n, k, generator=gen) * 1e4
    elif kind == "one_hot_1e4":  # one non-target class dominates by 1e4
        logits = torch.zeros(n, k)
        logits[torch.arange(n), (labels + 1) % k] = 1e4
    elif kind == "target_1e4":  # p_g == 1 to float precision: the complement must still be well defined
        logits = torch.randn(n, k, generator=gen)
        logits[torch.arange(n), labels] = 1e4
    elif kind == "target_minus_1e4":
        logits = torch.randn(n, k, generator=gen)
        logits[torch.arange(n), labels] = -1e4
    elif kind == "large_gaps":  # classes at 0, -40, -80, ...: q spans the float32 range
        logits = -40.0 * torch.arange(k, dtype=torch.float32).repeat(n, 1)
        logits = logits[:, torch.randperm(k, generator=gen)]
    else:
        logits = 1e4 + torch.randn(n, k, generator=gen) * 1e-3
    for fn, ref in ((complement_entropy, ref_complement_entropy), (guided_complement_entropy, ref_gce)):
        kwargs = {"alpha": 0.5} if fn is guided_complement_entropy else {}
        out, grad = value_and_grad(fn, logits, labels, reduction="none", **kwargs)
        expected, ref_grad = ref_value_and_grad(ref, logits, labels, reduction="none", **kwargs)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        # float32 inputs near 1e4 carry an absolute rounding of ~1e-3 in every logit; elsewhere tolerances are tight
        atol = 1e-3 if kind == "near_uniform" else 1e-5
        assert_close64(out, expected, atol=atol, rtol=1e-4)
        assert_close64(grad, ref_grad, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [5, 1000])
def test_low_precision_inputs(dtype, k):
    logits, labels = make_case((3, 4), k, seed=3, dtype=dtype)
    for fn, ref, kwargs in (
        (complement_entropy, ref_complement_entropy, {}),
        (guided_complement_entropy, ref_gce, {"alpha": 1 / 3}),
    ):
        out, grad = value_and_grad(fn, logits, labels, reduction="none", **kwargs)
        # the reference sees the same rounded logits, so only the output rounding of the gradient remains
        expected, ref_grad = ref_value_and_grad(ref, logits, labels, reduction="none", **kwargs)
        assert out.dtype == torch.float32
        assert grad.dtype == dtype
        assert_close64(out, expected, atol=2e-6)
        eps = torch.finfo(dtype).eps
        assert_close64(grad, ref_grad, atol=1e-6, rtol=eps)


def test_bfloat16_value_is_not_the_float32_value_of_unrounded_logits():
    """Sanity check of the test above: bf16 rounding is visible, so comparing against the rounded logits matters."""
    logits, labels = make_case((64,), 50, seed=4)
    fp32 = complement_entropy(logits, labels, reduction="none")
    bf16 = complement_entropy(logits.bfloat16(), labels, reduction="none")
    assert (fp32 - bf16).abs().max() > 1e-4


@pytest.mark.parametrize("chunk_size", [1, 3])
@pytest.mark.parametrize("k", [2, 50, 1000])
def test_chunked_equals_unchunked(chunk_size, k):
    logits, labels = make_case((4, 5), k, seed=11, ignore_fraction=0.3)
    for fn, kwargs in ((complement_entropy, {}), (guided_complement_entropy, {"alpha": 0.7})):
        out, grad = value_and_grad(fn, logits, labels, reduction="none", **kwargs)
        out_c, grad_c = value_and_grad(fn, logits, labels, reduction="none", chunk_size=chunk_size, **kwargs)
        torch.testing.assert_close(out_c, out, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(grad_c, grad, atol=1e-8, rtol=1e-6)


def test_bad_chunk_size_raises():
    logits, labels = make_case((3,), 5)
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="chunk_size"):
            complement_entropy(logits, labels, chunk_size=bad)


# ----------------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("fn", [complement_entropy, guided_complement_entropy], ids=["H", "GCE"])
def test_ignored_positions_contribute_nothing(fn):
    logits, labels = make_case((4, 6), 50, seed=5, ignore_fraction=0.4)
    ignored = labels == -100
    assert ignored.any() and (~ignored).any()
    # garbage (but finite) logits at ignored positions must not matter
    noisy = logits.clone()
    noisy[ignored] = torch.randn(int(ignored.sum()), 50) * 1e6
    ref = ref_gce if fn is guided_complement_entropy else ref_complement_entropy
    for reduction in ("mean", "sum", "none"):
        out, grad = value_and_grad(fn, noisy, labels, reduction=reduction)
        expected, ref_grad = ref_value_and_grad(ref, logits, labels, reduction=reduction)
        assert_close64(out, expected, atol=2e-6)
        assert (grad[ignored] == 0).all()
        assert_close64(grad[~ignored], ref_grad[~ignored], atol=1e-6)
        if reduction == "none":
            assert (out[ignored] == 0).all()
    # mean is over valid positions only
    total = fn(logits, labels, reduction="sum")
    mean = fn(logits, labels, reduction="mean")
    torch.testing.assert_close(mean, total / (~ignored).sum(), rtol=1e-6, atol=1e-7)


def test_custom_ignore_index():
    logits, labels = make_case((8,), 5, seed=6)
    labels[::2] = 3
    labels[1::2] = labels[1::2] % 3
    out = complement_entropy(logits, labels, ignore_index=3, reduction="none")
    assert (out[::2] == 0).all() and (out[1::2] > 0).all()
    masked = labels.clone()
    masked[::2] = -100
    torch.testing.assert_close(out, complement_entropy(logits, masked, reduction="none"))


@pytest.mark.parametrize(
    "fn", [complement_entropy, complement_objective, guided_complement_entropy], ids=["H", "objective", "GCE"]
)
def test_all_ignored_gives_zero_and_zero_grad(fn):
    logits, _ = make_case((3, 4), 7, seed=8)
    labels = torch.full((3, 4), -100)
    for reduction in ("mean", "sum"):
        out, grad = value_and_grad(fn, logits, labels, reduction=reduction)
        assert out.item() == 0.0 and not torch.isnan(out)
        assert (grad == 0).all()
    out, grad = value_and_grad(fn, logits, labels, reduction="none")
    assert out.shape == (3, 4) and (out == 0).all() and (grad == 0).all()


def test_empty_input():
    logits = torch.randn(0, 4, 9, requires_grad=True)
    labels = torch.zeros(0, 4, dtype=torch.long)
    out = guided_complement_entropy(logits, labels) + complement_entropy(logits, labels)
    out.backward()
    assert out.item() == 0.0 and logits.grad.shape == logits.shape


# ----------------------------------------------------------------------------------------------- -inf logits


def test_minus_inf_non_target_logits_are_excluded():
    """-inf logits (e.g. masked vocabulary) have q == 0: same value as dropping them, finite gradients."""
    logits, labels = make_case((6,), 8, seed=9)
    labels[:] = torch.tensor([0, 1, 2, 3, 4, 5])
    masked = logits.clone()
    masked[:, 6:] = -INF
    for fn, ref, kwargs in (
        (complement_entropy, ref_complement_entropy, {}),
        (guided_complement_entropy, ref_gce, {"alpha": 0.5}),
    ):
        out, grad = value_and_grad(fn, masked, labels, reduction="none", **kwargs)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        expected, ref_grad = ref_value_and_grad(ref, masked, labels, reduction="none", **kwargs)
        assert_close64(out, expected, atol=2e-6)
        assert_close64(grad, ref_grad, atol=1e-6)
        assert grad[:, 6:].abs().max() < 1e-30
    # H equals the complement entropy over the 6 finite classes
    expected = ref_complement_entropy(logits[:, :6], labels, reduction="none")
    assert_close64(complement_entropy(masked, labels, reduction="none"), expected, atol=2e-6)


def test_degenerate_rows_are_finite():
    """Every non-target logit -inf (the complement is empty), or every logit -inf: 0, not NaN."""
    logits = torch.tensor(
        [[1.0, -INF, -INF], [-INF, -INF, -INF], [-INF, 2.0, -INF], [0.5, -INF, 0.0]], requires_grad=True
    )
    labels = torch.tensor([0, 1, 0, 1])

    def gce_alpha_0(z, y, **kwargs):
        return guided_complement_entropy(z, y, alpha=0, **kwargs)

    for fn in (complement_entropy, guided_complement_entropy, gce_alpha_0):
        logits.grad = None
        out = fn(logits, labels, reduction="none")
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
        assert out[:2].abs().max() < 1e-30
    # K == 2 with the other class at -inf
    z = torch.tensor([[3.0, -INF]], requires_grad=True)
    out = complement_entropy(z, torch.tensor([0]))
    out.backward()
    assert abs(out.item()) < 1e-30 and torch.isfinite(z.grad).all()


def test_nan_logits_propagate():
    """NaN logits are not silently turned into a finite loss."""
    z = torch.tensor([[0.0, float("nan"), 1.0], [0.0, 1.0, 2.0]])
    labels = torch.tensor([0, 0])
    out = complement_entropy(z, labels, reduction="none")
    assert torch.isnan(out[0]) and torch.isfinite(out[1])


# ----------------------------------------------------------------------------------------------- input errors


@pytest.mark.parametrize("fn", [complement_entropy, complement_objective, guided_complement_entropy])
def test_label_out_of_range_raises_naming_it(fn):
    logits = torch.randn(4, 5)
    with pytest.raises(ValueError, match="label 7"):
        fn(logits, torch.tensor([0, 7, 1, -100]))
    with pytest.raises(ValueError, match="label -1"):
        fn(logits, torch.tensor([0, -1, 1, 2]))
    with pytest.raises(ValueError, match="label 5"):
        fn(logits, torch.tensor([5, 0, 1, 2]))


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="at least 2 classes"):
        complement_entropy(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 classes"):
        guided_complement_entropy(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        complement_entropy(torch.randn(3, 4), torch.zeros(3))
    with pytest.raises(TypeError, match="integer"):
        complement_entropy(torch.randn(3, 4), torch.zeros(3, dtype=torch.float16))
    with pytest.raises(TypeError):
        complement_entropy(torch.randn(3, 4), [0, 1, 2])
    with pytest.raises(TypeError):
        complement_entropy(torch.randint(0, 3, (3, 4)), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        complement_entropy(torch.randn(3, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        complement_entropy(torch.randn(2, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        complement_entropy(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match="normalization"):
        complement_objective(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), normalization="K")
    with pytest.raises(ValueError, match="alpha"):
        guided_complement_entropy(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), alpha=-0.1)


# ----------------------------------------------------------------------------------------------- objectives


def test_complement_normalizer_by_hand():
    assert complement_normalizer(10, "log") == pytest.approx(math.log(9))
    assert complement_normalizer(32000, "log") == pytest.approx(math.log(31999))
    assert complement_normalizer(10, "paper") == 9.0
    assert complement_normalizer(10, "none") == 1.0
    assert complement_normalizer(3, "log") == pytest.approx(math.log(2))
    for normalization in ("log", "paper", "none"):
        assert complement_normalizer(2, normalization) == 1.0
    with pytest.raises(ValueError):
        complement_normalizer(1, "log")
    with pytest.raises(ValueError):
        complement_normalizer(10, "K")


@pytest.mark.parametrize("normalization", ["log", "paper", "none"])
def test_complement_objective_is_scaled_negative_entropy(normalization):
    logits, labels = make_case((5, 3), 50, seed=12, ignore_fraction=0.2)
    out, grad = value_and_grad(complement_objective, logits, labels, normalization=normalization)
    ref, ref_grad = ref_value_and_grad(ref_complement_entropy, logits, labels)
    scale = complement_normalizer(50, normalization)
    assert_close64(out, -ref / scale, atol=2e-6)
    assert_close64(grad, -ref_grad / scale, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 5, 50, 1000])
def test_log_objective_lies_in_minus_one_zero(k):
    logits, labels = make_case((64,), k, seed=13, scale=5.0)
    out = complement_objective(logits, labels, reduction="none")
    assert (out <= 0).all() and (out >= -1 - 1e-6).all()
    # the uniform complement reaches -1 (for K > 2): all non-target logits equal, whatever the target logit
    uniform = torch.zeros(4, k)
    uniform[:, 0] = torch.tensor([-5.0, 0.0, 3.0, 30.0])
    out = complement_objective(uniform, torch.zeros(4, dtype=torch.long), reduction="none")
    torch.testing.assert_close(out, torch.full((4,), -1.0 if k > 2 else 0.0), atol=1e-6, rtol=0)


def test_matches_the_official_cot_formula():
    """Away from its epsilons' reach (p_g not near 1), the official loss times K is our -H mean."""
    logits, labels = make_case((32,), 10, seed=14, scale=2.0)
    official = official_cot(logits, labels) * 10
    ours = complement_objective(logits, labels, normalization="none")
    torch.testing.assert_close(ours, official, atol=2e-5, rtol=1e-4)


def test_official_formula_loses_the_complement_when_the_target_is_certain():
    """Why there are no epsilons here: with p_g == 1 in float32 the official formula returns ~0 entropy for a
    complement that is uniform; the masked log-softmax keeps it exact."""
    logits = torch.zeros(4, 10)
    logits[:, 0] = 40.0
    labels = torch.zeros(4, dtype=torch.long)
    assert abs(official_cot(logits, labels).item()) < 1e-3
    torch.testing.assert_close(complement_entropy(logits, labels), torch.tensor(math.log(9)))


@pytest.mark.parametrize("normalization", ["log", "paper"])
def test_descent_step_raises_complement_entropy(normalization):
    logits, labels = make_case((16,), 20, seed=15, scale=3.0)
    z = logits.clone().requires_grad_(True)
    before = complement_entropy(z, labels).item()
    complement_objective(z, labels, normalization=normalization).backward()
    lr = 0.5 * complement_normalizer(20, normalization)
    with torch.no_grad():
        z -= lr * z.grad * labels.numel()
    after = complement_entropy(z, labels).item()
    assert after > before + 1e-3


@pytest.mark.parametrize("k", [2, 3, 10, 1000])
@pytest.mark.parametrize("alpha", [0.0, 1 / 3, 1.0, 2.0])
def test_gce_matches_official_formula_without_epsilons(k, alpha):
    logits, labels = make_case((8,), k, seed=16, scale=2.0)
    out, grad = value_and_grad(guided_complement_entropy, logits, labels, alpha=alpha)
    leaf = logits.detach().double().requires_grad_(True)
    if k == 2:  # log(K - 1) == 0: the normalizer is 1 and H == 0
        expected = torch.zeros((), dtype=torch.float64)
        assert_close64(out, expected, atol=1e-7)
        return
    expected = official_gce(leaf, labels, alpha)
    expected.backward()
    assert_close64(out, expected.detach(), atol=2e-6)
    assert_close64(grad, leaf.grad, atol=1e-6)
    # and the value lies in [-1, 0]
    assert -1 - 1e-6 <= out.item() <= 0


def test_gce_descent_step_raises_p_g():
    logits, labels = make_case((32,), 10, seed=17, scale=2.0)
    z = logits.clone().requires_grad_(True)
    p_before = torch.softmax(z, -1).gather(1, labels[:, None]).mean().item()
    guided_complement_entropy(z, labels).backward()
    with torch.no_grad():
        z -= 1.0 * z.grad * labels.numel()
    p_after = torch.softmax(z, -1).gather(1, labels[:, None]).mean().item()
    assert p_after > p_before + 1e-3


def test_complement_terms_and_guided_rows():
    logits, labels = make_case((3, 5), 40, seed=18, ignore_fraction=0.3)
    leaf = logits.clone().requires_grad_(True)
    entropy, log_pg, valid = complement_terms(leaf, labels)
    ref_entropy, ref_log_pg, ref_valid = ref_terms(logits, labels)
    assert torch.equal(valid, ref_valid)
    assert_close64(entropy.detach(), ref_entropy.detach(), atol=2e-6)
    assert_close64(log_pg.detach(), ref_log_pg.detach(), atol=2e-6)
    # gradients through both outputs at once (as a joint CE + complement loss would use them)
    (entropy.sum() - 0.7 * log_pg.sum()).backward()
    ref_leaf = logits.detach().double().requires_grad_(True)
    e, lp, _ = ref_terms(ref_leaf, labels)
    (e.sum() - 0.7 * lp.sum()).backward()
    assert_close64(leaf.grad, ref_leaf.grad, atol=1e-6)
    rows = guided_rows(entropy.detach(), log_pg.detach(), valid, 40, 0.5)
    torch.testing.assert_close(rows.sum() / valid.sum(), guided_complement_entropy(logits, labels, alpha=0.5))


# ----------------------------------------------------------------------------------------------- impl=
# Which implementation runs is decided by `impl=` (default: HF_COT_TRITON). Here the Triton kernels module is replaced
# by a stand-in whose entry points record the call and raise, so these tests need no triton: a call that reaches the
# kernels is seen, and one that does not must match the float64 reference (tests/ops/test_triton_kernels.py runs the real
# kernels under Triton's interpreter).


class _KernelLaunched(Exception):
    pass


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []

    def entry(name):
        def launch(*args, **kwargs):
            calls.append(name)
            raise _KernelLaunched(name)

        return launch

    stand_in = types.SimpleNamespace(
        INTERPRETED=True, forward_sums=entry("forward_sums"), backward_grad=entry("backward_grad")
    )
    monkeypatch.setattr(backend, "load_triton_kernels", lambda: stand_in)
    return calls


def _head_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(11, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 11, (7,), generator=gen)
    labels[2] = -100
    return hidden, weight, labels


def _impl_cases():
    """(name, call(logits, labels, hidden, weight, head_labels, **kw) -> scalar to backpropagate, float64 reference)."""
    logits, labels = make_case((2, 3), 9, seed=30, ignore_fraction=0.3)
    hidden, weight, head_labels = _head_problem()

    def ref_linear(h, w, y):
        entropy, log_pg, _ = ref_terms(h @ w.T, y)
        return entropy.sum() - 0.5 * log_pg.sum()

    return [
        ("complement_entropy", lambda z, **kw: complement_entropy(z, labels, **kw), ref_complement_entropy, logits),
        (
            "complement_objective",
            lambda z, **kw: complement_objective(z, labels, normalization="paper", **kw),
            lambda z, y: -ref_complement_entropy(z, y) / 8,
            logits,
        ),
        ("guided_complement_entropy", lambda z, **kw: guided_complement_entropy(z, labels, **kw), ref_gce, logits),
        (
            "complement_terms",
            lambda z, **kw: (lambda t: t[0].sum() - 0.5 * t[1].sum())(complement_terms(z, labels, **kw)),
            lambda z, y: (lambda t: t[0].sum() - 0.5 * t[1].sum())(ref_terms(z, y)),
            logits,
        ),
        (
            "linear_complement_terms",
            lambda h, **kw: (lambda t: t["complement_entropy"].sum() - 0.5 * t["log_probs"].sum())(
                linear_complement_terms(h, weight.float(), head_labels, chunk_size=3, **kw)
            ),
            lambda h, y: ref_linear(h, weight, head_labels),
            hidden,
        ),
        (
            "linear_complement_entropy",
            lambda h, **kw: linear_complement_entropy(h, weight.float(), head_labels, reduction="sum", **kw),
            lambda h, y: ref_terms(h @ weight.T, head_labels)[0].sum(),
            hidden,
        ),
    ], labels


_IMPL_CASES, _IMPL_LABELS = _impl_cases()
_IMPL_IDS = [case[0] for case in _IMPL_CASES]


def _check_against_reference(case, **kw):
    _, call, ref, inputs = case
    out, grad = value_and_grad(lambda x, _y, **k: call(x, **k), inputs.float(), _IMPL_LABELS, **kw)
    ref_out, ref_grad = ref_value_and_grad(ref, inputs, _IMPL_LABELS)
    assert_close64(out, ref_out, atol=1e-5)
    assert_close64(grad, ref_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", _IMPL_CASES, ids=_IMPL_IDS)
def test_impl_eager_never_launches_the_kernels_even_when_forced(case, kernel_calls, monkeypatch):
    monkeypatch.setenv("HF_COT_TRITON", "force")
    _check_against_reference(case, impl="eager")
    assert kernel_calls == []
    # an explicit impl is not overridden by the variable, whatever its value
    monkeypatch.setenv("HF_COT_TRITON", "not-a-mode")
    _check_against_reference(case, impl="auto")  # "auto" on CPU tensors: eager
    assert kernel_calls == []


@pytest.mark.parametrize("case", _IMPL_CASES, ids=_IMPL_IDS)
@pytest.mark.parametrize("env", ["force", "triton", "0", "eager", "auto", None])
def test_the_environment_variable_is_the_default_impl(case, env, kernel_calls, monkeypatch):
    if env is None:
        monkeypatch.delenv("HF_COT_TRITON", raising=False)
    else:
        monkeypatch.setenv("HF_COT_TRITON", env)
    if env in ("force", "triton"):
        with pytest.raises(_KernelLaunched, match="forward_sums"):
            _check_against_reference(case)
        assert kernel_calls == ["forward_sums"]
    else:  # "0", "eager", and "auto" / unset on CPU tensors
        _check_against_reference(case)
        assert kernel_calls == []
    # impl="triton" reaches the kernels whatever the variable says
    monkeypatch.setenv("HF_COT_TRITON", "0")
    with pytest.raises(_KernelLaunched):
        _check_against_reference(case, impl="triton")


@pytest.mark.parametrize("case", _IMPL_CASES, ids=_IMPL_IDS)
@pytest.mark.parametrize("impl", ["cuda", "Triton", "force", "0", "", True])
def test_an_unknown_impl_is_refused_before_any_work(case, impl, kernel_calls):
    _, call, _, _ = case
    # the inputs are not even tensors: the impl is checked first
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'eager', 'triton'\).*HF_COT_TRITON"):
        call(None, impl=impl)
    assert kernel_calls == []


def test_an_unknown_environment_value_names_the_accepted_ones(monkeypatch):
    monkeypatch.setenv("HF_COT_TRITON", "yes")
    logits, labels = make_case((3,), 5)
    with pytest.raises(ValueError, match="HF_COT_TRITON must be one of .*'auto', '0', 'force', 'eager', 'triton'"):
        complement_entropy(logits, labels)


@pytest.mark.parametrize("case", _IMPL_CASES, ids=_IMPL_IDS)
def test_impl_triton_without_triton_says_what_to_install(case, monkeypatch):
    monkeypatch.setattr(backend, "load_triton_kernels", lambda: None)
    _, call, _, inputs = case
    for env, kw in (("0", {"impl": "triton"}), ("force", {})):
        monkeypatch.setenv("HF_COT_TRITON", env)
        with pytest.raises(RuntimeError, match=r"impl='triton'.*needs triton.*pip install triton.*'eager'"):
            call(inputs.float(), **kw)
    # "auto" falls back to the eager kernel, silently and correctly
    _check_against_reference(case, impl="auto")


@pytest.mark.parametrize("case", _IMPL_CASES, ids=_IMPL_IDS)
def test_impl_triton_on_cpu_tensors_needs_the_interpreter(case, kernel_calls, monkeypatch):
    monkeypatch.setattr(backend.load_triton_kernels(), "INTERPRETED", False)
    _, call, _, inputs = case
    with pytest.raises(RuntimeError, match=r"CUDA tensors, got a tensor on cpu.*TRITON_INTERPRET=1.*'eager'"):
        call(inputs.float(), impl="triton")
    assert kernel_calls == []


# ----------------------------------------------------------------------------------------------- fuzz

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_MAGNITUDE = {"fp32": 1e30, "bf16": 1e30, "fp16": 6e4}


@st.composite
def fuzz_cases(draw):
    dtype_name = draw(st.sampled_from(sorted(_DTYPES)))
    k = draw(st.integers(2, 40))
    lead = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
    numel = math.prod(lead) * k
    big = _MAGNITUDE[dtype_name]
    special = st.sampled_from([0.0, big, -big, 1e4, -1e4, 88.0, -88.0, -INF])
    values = draw(
        st.lists(
            st.one_of(st.floats(-30, 30, width=32), special),
            min_size=numel,
            max_size=numel,
        )
    )
    logits = torch.tensor(values, dtype=torch.float32).reshape(*lead, k).to(_DTYPES[dtype_name])
    n = math.prod(lead)
    labels = draw(st.lists(st.one_of(st.integers(0, k - 1), st.just(-100)), min_size=n, max_size=n))
    labels = torch.tensor(labels, dtype=torch.long).reshape(lead)
    mode = draw(st.sampled_from(["ok", "ok", "ok", "all_ignored", "empty_complement", "bad_label", "float_labels"]))
    if mode == "empty_complement" and n:  # one row whose non-target logits (or all logits) are -inf
        row = draw(st.integers(0, n - 1))
        flat = logits.view(n, k)
        target = int(labels.view(-1)[row])
        keep = flat[row, target].clone() if target >= 0 and draw(st.booleans()) else -INF
        flat[row] = -INF
        if target >= 0:
            flat[row, target] = keep
    elif mode == "all_ignored":
        labels = torch.full_like(labels, -100)
    elif mode == "bad_label" and n:
        labels.view(-1)[draw(st.integers(0, n - 1))] = draw(st.sampled_from([k, k + 5, -1, -7]))
    elif mode == "float_labels":
        labels = labels.float()
    fn = draw(st.sampled_from(["H", "objective", "gce"]))
    kwargs = {
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
        "chunk_size": draw(st.sampled_from([None, 1, 2, 3, 7])),
    }
    if fn == "objective":
        kwargs["normalization"] = draw(st.sampled_from(["log", "paper", "none"]))
    if fn == "gce":
        kwargs["alpha"] = draw(st.sampled_from([0.0, 1 / 3, 1.0, 2.5]))
    return logits, labels, fn, kwargs


_FNS = {"H": complement_entropy, "objective": complement_objective, "gce": guided_complement_entropy}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fuzz_cases())
def test_fuzz_finite_or_clear_error(case):
    logits, labels, fn_name, kwargs = case
    leaf = logits.clone().requires_grad_(True)
    try:
        out = _FNS[fn_name](leaf, labels, **kwargs)
    except TypeError as err:
        assert labels.is_floating_point(), err
        return
    except ValueError as err:
        assert "label" in str(err)
        flat = labels.reshape(-1)
        assert ((flat != -100) & ((flat < 0) | (flat >= logits.shape[-1]))).any()
        return
    assert not labels.is_floating_point()
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all(), (out, logits, labels)
    out.sum().backward()
    assert leaf.grad.dtype == logits.dtype
    assert torch.isfinite(leaf.grad).all(), (leaf.grad, logits, labels)
    ignored = labels == -100
    assert (leaf.grad[ignored] == 0).all()
    if kwargs["reduction"] == "none":
        assert out.shape == labels.shape and (out[ignored] == 0).all()


def test_non_contiguous_logits():
    """Views (a slice of a wider tensor, a transposed batch) give the same values and gradients as a copy."""
    wide, labels = make_case((6,), 40, seed=19)
    for view in (wide[:, :30], wide.t().contiguous().t()[:, 5:35]):
        y = labels % 30
        out, grad = value_and_grad(guided_complement_entropy, view, y, reduction="none")
        out_c, grad_c = value_and_grad(guided_complement_entropy, view.contiguous(), y, reduction="none")
        torch.testing.assert_close(out, out_c)
        torch.testing.assert_close(grad, grad_c)
    batch_first, labels = make_case((3, 4), 20, seed=20)
    time_first = batch_first.transpose(0, 1).contiguous().transpose(0, 1)  # [B, T, V] with strides of [T, B, V]
    assert not time_first.is_contiguous()
    out, grad = value_and_grad(complement_entropy, time_first, labels, reduction="none")
    ref, ref_grad = ref_value_and_grad(ref_complement_entropy, batch_first, labels, reduction="none")
    assert_close64(out, ref, atol=2e-6)
    assert_close64(grad, ref_grad, atol=1e-6)
