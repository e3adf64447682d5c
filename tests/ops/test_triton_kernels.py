"""The fused Triton kernels against the eager chunked kernel, entry for entry.

On a machine without a GPU they run under Triton's CPU interpreter (``TRITON_INTERPRET=1``, chosen with
``impl="triton"`` or ``HF_COT_TRITON=force``): the same kernel source, so indexing, masking, the floor and the degenerate-row rule are
checked in CI; on a CUDA machine the same tests run the compiled kernels.
"""

import math
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' brings it on Linux x86-64)")
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.fail(
        "no GPU: these tests need TRITON_INTERPRET=1 set before triton is imported (tests/conftest.py does it)",
        pytrace=False,
    )

from hf_cot.losses import (  # noqa: E402
    complement_entropy,
    complement_objective,
    complement_terms,
    guided_complement_entropy,
)
from hf_cot.ops import triton_kernels  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture
def kernel_mode(monkeypatch):
    def use(mode):
        monkeypatch.setenv("HF_COT_TRITON", mode)

    return use


def _values_and_grads(fn, logits, labels, upstream):
    x = logits.clone().requires_grad_(True)
    out = fn(x, labels, reduction="none")
    (out * upstream).sum().backward()
    return out.detach(), x.grad


def _batch(num_classes, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(9, num_classes, generator=g) * 3).to(dtype)
    labels = torch.randint(0, num_classes, (9,), generator=g)
    labels[2] = -100  # ignored row
    logits[3, : num_classes // 2] = float("-inf")  # -inf logits (e.g. masked vocabulary)
    logits[4] = float("-inf")
    logits[4, labels[4]] = 1.0  # empty complement: H = 0
    logits[5] *= 40  # peaked row: most e_j floored
    upstream = torch.randn(9, generator=g)
    return logits.to(DEVICE), labels.to(DEVICE), upstream.to(DEVICE)


@pytest.mark.parametrize("fn", [complement_entropy, guided_complement_entropy], ids=["entropy", "guided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("num_classes", [5, 37, 5000])  # 5000 > one 4096-wide block: the row loop runs twice
def test_triton_matches_the_eager_kernel(fn, dtype, num_classes, kernel_mode):
    logits, labels, upstream = _batch(num_classes, dtype, seed=num_classes)
    kernel_mode("0")
    eager = _values_and_grads(fn, logits, labels, upstream)
    kernel_mode("force")
    fused = _values_and_grads(fn, logits, labels, upstream)
    torch.testing.assert_close(fused[0], eager[0], rtol=1e-5, atol=1e-6)
    assert fused[1].dtype == eager[1].dtype == dtype
    # Both compute in float32 and round once at the end: within one unit in the last place of the gradient dtype.
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(fused[1].float(), eager[1].float(), rtol=ulp, atol=1e-6)


def test_triton_propagates_nan_and_matches_the_reference_values(kernel_mode):
    kernel_mode("force")
    logits = torch.randn(3, 7, device=DEVICE, dtype=torch.float64).float()
    logits[1, 2] = float("nan")
    labels = torch.tensor([0, 1, 2], device=DEVICE)
    h = complement_entropy(logits, labels, reduction="none")
    assert torch.isnan(h[1]) and torch.isfinite(h[[0, 2]]).all()
    # Independent of both kernels: the definition, in float64.
    for row in (0, 2):
        z = logits[row].double()
        rest = torch.cat([z[: labels[row]], z[labels[row] + 1 :]])
        q = torch.softmax(rest, 0)
        assert h[row].item() == pytest.approx(float(-(q * q.log()).sum()), rel=1e-5)


def test_unknown_kernel_mode_is_refused(kernel_mode):
    kernel_mode("yes")
    with pytest.raises(ValueError, match="HF_COT_TRITON"):
        complement_entropy(torch.randn(2, 4, device=DEVICE), torch.tensor([0, 1], device=DEVICE))


@pytest.fixture
def launches(monkeypatch):
    """Counts the launches of the real kernels' two entry points (which still run)."""
    counts = {"forward_sums": 0, "backward_grad": 0}
    for name in counts:
        original = getattr(triton_kernels, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(triton_kernels, name, counted)
    return counts


def _reference_terms(logits, labels):
    """float64 ``(H, log p_g)`` per row from the definition (masked log-softmax), 0 where the label is ignored."""
    z = logits.double()
    valid = labels != -100
    target = labels.clamp(min=0)
    log_q = torch.log_softmax(z.scatter(1, target[:, None], float("-inf")), -1)
    entropy = -(log_q.exp() * log_q.nan_to_num(neginf=0.0)).sum(-1)
    log_pg = torch.log_softmax(z, -1).gather(1, target[:, None]).squeeze(1)
    return entropy.where(valid, 0.0), log_pg.where(valid, 0.0)


_REDUCED = {
    "entropy": (lambda z, y, **kw: complement_entropy(z, y, reduction="none", **kw), lambda h, lp: h),
    "objective": (
        lambda z, y, **kw: complement_objective(z, y, reduction="none", normalization="paper", **kw),
        lambda h, lp: -h / 36,
    ),
    "guided": (
        lambda z, y, **kw: guided_complement_entropy(z, y, reduction="none", alpha=0.5, **kw),
        lambda h, lp: -torch.exp(0.5 * lp) * h / math.log(36),
    ),
    "terms": (
        lambda z, y, **kw: (lambda t: t[0] - 0.5 * t[1])(complement_terms(z, y, **kw)),
        lambda h, lp: h - 0.5 * lp,
    ),
}


@pytest.mark.parametrize("name", list(_REDUCED))
def test_impl_triton_equals_impl_eager_and_the_definition(name, launches, kernel_mode):
    """``impl=`` picks the kernels whatever HF_COT_TRITON says; both agree with each other and with float64 math."""
    fn, expected_of = _REDUCED[name]
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(9, 37, generator=g) * 3).to(DEVICE)
    labels = torch.randint(0, 37, (9,), generator=g).to(DEVICE)
    labels[2] = -100
    upstream = torch.randn(9, generator=g).to(DEVICE)
    ref_leaf = logits.double().requires_grad_()
    expected = expected_of(*_reference_terms(ref_leaf, labels)).where(labels != -100, 0.0)
    (expected * upstream).sum().backward()
    results = {}
    for impl, env in (("eager", "force"), ("triton", "0")):
        kernel_mode(env)  # the opposite of impl: the keyword wins
        before = dict(launches)
        results[impl] = _values_and_grads(
            lambda x, y, reduction, impl=impl: fn(x, y, impl=impl), logits, labels, upstream
        )
        ran = {k: launches[k] - before[k] for k in launches}
        assert ran == (
            {"forward_sums": 1, "backward_grad": 1} if impl == "triton" else {"forward_sums": 0, "backward_grad": 0}
        )
        torch.testing.assert_close(results[impl][0].double(), expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(results[impl][1].double(), ref_leaf.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(results["triton"][0], results["eager"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["triton"][1], results["eager"][1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_classes", [37, 5000])
@pytest.mark.parametrize("via", ["env", "impl"])
def test_fused_lm_head_runs_the_kernels_on_each_chunk(num_classes, via, launches, kernel_mode):
    """`linear_complement_terms` feeds each chunk's logits to the same kernels: Triton == eager, values and gradients."""
    from hf_cot.linear_losses import linear_complement_terms

    g = torch.Generator().manual_seed(num_classes)
    hidden = torch.randn(11, 8, generator=g).to(DEVICE)
    weight = torch.randn(num_classes, 8, generator=g).to(DEVICE)
    labels = torch.randint(0, num_classes, (11,), generator=g).to(DEVICE)
    labels[3] = -100
    results = []
    for mode, impl in (("0", "eager"), ("force", "triton")):
        if via == "env":
            kernel_mode(mode)
            kwargs = {}
        else:
            kernel_mode("force" if impl == "eager" else "0")  # the opposite: the keyword wins
            kwargs = {"impl": impl}
        before = launches["forward_sums"]
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        t = linear_complement_terms(h, w, labels, chunk_size=4, **kwargs)
        (t["complement_entropy"].sum() - 0.5 * t["log_probs"].sum()).backward()
        # 10 valid rows in chunks of 4: three chunks, each through the kernels (or none of them)
        assert launches["forward_sums"] - before == (3 if impl == "triton" else 0)
        results.append((t["complement_entropy"].detach(), t["log_probs"].detach(), h.grad, w.grad))
    for eager, triton in zip(*results, strict=True):
        torch.testing.assert_close(triton, eager, atol=1e-5, rtol=1e-5)
