"""Fused ops and AdamW against PyTorch, in float32: forward values and gradients.

Tolerance: max |ours - torch| <= 1e-5 * max(1, max |torch|), i.e. float32 rounding, not a looser
reading of the formulas. A few ops also run in float64 at 1e-10, where a slightly wrong constant
(GELU's 0.044715, LayerNorm's eps) cannot hide under float32 rounding.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: parity tests need it (pip install torch)")

import minigrad as mg  # noqa: E402
import minigrad.functional as F  # noqa: E402
import minigrad.nn as nn  # noqa: E402
import minigrad.optim as optim  # noqa: E402
from minigrad import backend as mg_backend  # noqa: E402

TF = torch.nn.functional


TOL = {np.float32: 1e-5, np.float64: 1e-10}


def close(ours, theirs, what: str, dtype=np.float32) -> None:
    ours = ours.numpy() if isinstance(ours, mg.Tensor) else mg_backend.to_device(ours, "cpu")
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs torch {theirs.shape}"
    assert ours.dtype == dtype and theirs.dtype == dtype, f"{what}: {ours.dtype} vs torch {theirs.dtype}"
    scale = max(1.0, float(np.abs(theirs).max(initial=0.0)))
    err = float(np.abs(ours.astype(np.float64) - theirs).max(initial=0.0))
    assert err <= TOL[dtype] * scale, f"{what}: max abs diff {err:.3g} (scale {scale:.3g})"


def pair(rng, shape, device, scale=1.0, dtype=np.float32):
    """The same values as a minigrad leaf on `device` and a torch leaf."""
    a = (rng.standard_normal(shape) * scale).astype(dtype)
    return mg.tensor(a, device=device, requires_grad=True), torch.tensor(a, requires_grad=True)


def backward_both(out_mg, out_t, rng):
    g = rng.standard_normal(out_t.shape).astype(np.float32)
    out_mg.backward(mg.tensor(g, device=out_mg.device))
    out_t.backward(torch.tensor(g))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(backend, bias, transposed):
    rng = np.random.default_rng(0)
    x, xt = pair(rng, (2, 5, 8), backend)
    w, wt = pair(rng, (6, 8) if transposed else (8, 6), backend)
    b, bt = pair(rng, (6,), backend)
    out = F.linear(x, w, b if bias else None, transposed=transposed)
    out_t = xt @ (wt.T if transposed else wt) + (bt if bias else 0)
    close(out, out_t, "linear")
    backward_both(out, out_t, rng)
    close(x.grad, xt.grad, "linear dx")
    close(w.grad, wt.grad, "linear dw")
    if bias:
        close(b.grad, bt.grad, "linear db")


def test_embedding(backend):
    rng = np.random.default_rng(1)
    w, wt = pair(rng, (7, 5), backend)
    ids = np.array([[0, 3, 3, 6], [1, 0, 3, 2]])
    out, out_t = F.embedding(mg.tensor(ids, device=backend), w), TF.embedding(torch.tensor(ids), wt)
    close(out, out_t, "embedding")
    backward_both(out, out_t, rng)
    close(w.grad, wt.grad, "embedding dw")


DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


@DTYPES
@pytest.mark.parametrize("x_scale", [3.0, 0.003])  # at 0.003 the variance is near eps: eps matters
def test_layer_norm(backend, x_scale, dtype):
    rng = np.random.default_rng(2)
    x, xt = pair(rng, (2, 3, 16), backend, scale=x_scale, dtype=dtype)
    w, wt = pair(rng, (16,), backend, dtype=dtype)
    b, bt = pair(rng, (16,), backend, dtype=dtype)
    out, out_t = F.layer_norm(x, w, b), TF.layer_norm(xt, (16,), wt, bt, eps=1e-5)
    close(out, out_t, "layer_norm", dtype)
    backward_both(out, out_t, rng)
    for ours, theirs, name in ((x, xt, "dx"), (w, wt, "dw"), (b, bt, "db")):
        close(ours.grad, theirs.grad, f"layer_norm {name}", dtype)


@DTYPES
def test_gelu(backend, dtype):
    rng = np.random.default_rng(3)
    x, xt = pair(rng, (4, 50), backend, scale=3.0, dtype=dtype)
    out, out_t = F.gelu(x), TF.gelu(xt, approximate="tanh")
    close(out, out_t, "gelu", dtype)
    backward_both(out, out_t, rng)
    close(x.grad, xt.grad, "gelu dx", dtype)


@DTYPES
@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_family(backend, name, axis, dtype):
    rng = np.random.default_rng(4)
    x, xt = pair(rng, (2, 6, 9), backend, scale=4.0, dtype=dtype)
    out, out_t = getattr(F, name)(x, axis=axis), getattr(TF, name)(xt, dim=axis)
    close(out, out_t, name, dtype)
    backward_both(out, out_t, rng)
    close(x.grad, xt.grad, f"{name} dx", dtype)


@DTYPES
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(backend, reduction, dtype):
    rng = np.random.default_rng(5)
    B, T, V = 2, 5, 11
    x, xt = pair(rng, (B, T, V), backend, scale=3.0, dtype=dtype)
    targets = rng.integers(0, V, (B, T))
    targets[0, 1] = targets[1, 4] = -100
    out = F.cross_entropy(x, mg.tensor(targets, device=backend), reduction=reduction)
    out_t = TF.cross_entropy(xt.reshape(-1, V), torch.tensor(targets).reshape(-1), ignore_index=-100,
                             reduction=reduction)
    if reduction == "none":
        out_t = out_t.reshape(B, T)
    close(out, out_t, f"cross_entropy {reduction}", dtype)
    backward_both(out, out_t, rng)
    close(x.grad, xt.grad, f"cross_entropy {reduction} dx", dtype)


@pytest.mark.parametrize("case", ["causal", "causal_cache", "padding", "causal_padding", "scale"])
def test_scaled_dot_product_attention(backend, case):
    rng = np.random.default_rng(6)
    B, H, T, D = 2, 3, 5, 8
    S = T + 3 if case == "causal_cache" else T
    q, qt = pair(rng, (B, H, T, D), backend)
    k, kt = pair(rng, (B, H, S, D), backend)
    v, vt = pair(rng, (B, H, S, D), backend)
    causal = case.startswith("causal")
    # torch's is_causal aligns top-left; ours aligns bottom-right (the queries are the last T of
    # S positions, as with a KV cache), so torch gets that mask spelled out
    keep = np.tril(np.ones((T, S), dtype=bool), k=S - T) if causal else np.ones((T, S), dtype=bool)
    mask = None
    if "padding" in case:
        pad = np.ones((B, 1, 1, S), dtype=bool)
        pad[1, 0, 0, :2] = False   # the second sequence is left-padded by two positions
        pad[0, 0, 0, S - 1] = False  # and the first has a padded last position
        if causal:  # with causal, query 0 sees only key 0: keep it real so no row is empty
            pad[1, 0, 0, :2] = [True, False]
        mask = pad
        keep = keep & pad
    assert keep.any(axis=-1).all(), "the test wants no fully masked row here"
    scale = 0.2 if case == "scale" else None
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                         attn_mask=None if mask is None else mg.tensor(mask, device=backend),
                                         scale=scale)
    out_t = TF.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.tensor(keep), scale=scale)
    close(out, out_t, f"attention {case}")
    backward_both(out, out_t, rng)
    for ours, theirs, name in ((q, qt, "dq"), (k, kt, "dk"), (v, vt, "dv")):
        close(ours.grad, theirs.grad, f"attention {case} {name}")


def test_adamw_with_clipping_matches_torch(backend):
    """10 steps of AdamW(lr 1e-3, weight decay 0.1) with clip_grad_norm_(1.0) on a small
    Linear-gelu-Linear classifier, both starting from the same weights."""
    rng = np.random.default_rng(7)
    sizes = [(8, 16), (16,), (16, 4), (4,)]
    init = [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in sizes]
    ours = [nn.Parameter(mg.tensor(a.copy(), device=backend)) for a in init]  # mg.tensor does not copy
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    opt = optim.AdamW(ours, lr=1e-3, weight_decay=0.1)
    opt_t = torch.optim.AdamW(theirs, lr=1e-3, weight_decay=0.1)
    norms = []
    for step in range(10):
        x = rng.standard_normal((32, 8)).astype(np.float32) * 2
        y = rng.integers(0, 4, 32)
        w1, b1, w2, b2 = ours
        loss = F.cross_entropy(F.linear(F.gelu(F.linear(mg.tensor(x, device=backend), w1, b1)), w2, b2),
                               mg.tensor(y, device=backend))
        loss.backward()
        tw1, tb1, tw2, tb2 = theirs
        loss_t = TF.cross_entropy(TF.gelu(torch.tensor(x) @ tw1 + tb1, approximate="tanh") @ tw2 + tb2,
                                  torch.tensor(y))
        loss_t.backward()
        assert abs(loss.item() - loss_t.item()) <= 1e-5 * max(1.0, abs(loss_t.item()))
        norm = optim.clip_grad_norm_(ours, 1.0)
        norm_t = torch.nn.utils.clip_grad_norm_(theirs, 1.0).item()
        norms.append(norm_t)
        assert norm == pytest.approx(norm_t, rel=1e-5)
        for p, pt in zip(ours, theirs):
            close(p.grad, pt.grad, f"step {step}: clipped gradient")
        opt.step()
        opt_t.step()
        opt.zero_grad()
        opt_t.zero_grad()
    assert max(norms) > 1.0, "the clipping should have been active in some step"
    for i, (p, pt) in enumerate(zip(ours, theirs)):
        diff = float(np.abs(p.numpy().astype(np.float64) - pt.detach().numpy()).max())
        assert diff <= 1e-6, f"parameter {i}: max abs diff {diff:.3g} after 10 steps"
        assert not np.array_equal(p.numpy(), init[i])
