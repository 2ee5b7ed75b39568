"""The NumPy twins of the CUDA kernels (minigrad/kernels/twins.py) equal the plain ops on the CPU.

Each twin runs its kernel's algorithm (tiles, online softmax, FA2 backward, warp merges, sorted
segment sums); here it must agree with minigrad's composite op in float32 to 1e-5, over shapes
that leave partial tiles (T not a multiple of any tile size, S > T with causal, V not a multiple
of the block size, ignored rows).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad as mg
import minigrad.functional as F
from minigrad.kernels import twins
from minigrad.kernels.attention import tiles
from minigrad.optim import AdamW

TOL = dict(rtol=1e-5, atol=1e-5)
FAST = settings(max_examples=25, deadline=None)


def _randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@FAST
@given(B=st.integers(1, 2), H=st.integers(1, 2), T=st.integers(1, 150), extra=st.integers(0, 40),
       D=st.sampled_from([1, 3, 8, 16, 64]), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_attention_twin_equals_sdpa(B, H, T, extra, D, causal, seed):
    rng = np.random.default_rng(seed)
    S = T + extra
    q, k, v = _randn(rng, B, H, T, D), _randn(rng, B, H, S, D), _randn(rng, B, H, S, D)
    g = _randn(rng, B, H, T, D)
    Q, K, V = (mg.tensor(a, requires_grad=True) for a in (q, k, v))
    out = F.scaled_dot_product_attention(Q, K, V, is_causal=causal)
    (out * mg.tensor(g)).sum().backward()

    scale = 1.0 / np.sqrt(D)
    q3, k3, v3 = q.reshape(-1, T, D), k.reshape(-1, S, D), v.reshape(-1, S, D)
    o, lse = twins.attention_forward(q3, k3, v3, scale, causal)
    assert o.dtype == lse.dtype == np.float32 and lse.shape == (B * H, T)
    np.testing.assert_allclose(o.reshape(out.shape), out.data, **TOL)
    dq, dk, dv = twins.attention_backward(q3, k3, v3, o, lse, g.reshape(-1, T, D), scale, causal)
    np.testing.assert_allclose(dq.reshape(q.shape), Q.grad.data, **TOL)
    np.testing.assert_allclose(dk.reshape(k.shape), K.grad.data, **TOL)
    np.testing.assert_allclose(dv.reshape(v.shape), V.grad.data, **TOL)


def test_attention_twin_lse_is_the_rows_logsumexp():
    rng = np.random.default_rng(1)
    T, D = tiles()["BQ"] + 5, 8  # two query tiles, the second partial
    q, k, v = _randn(rng, 1, T, D), _randn(rng, 1, T, D), _randn(rng, 1, T, D)
    _, lse = twins.attention_forward(q, k, v, 0.5, True)
    s = (q[0] * 0.5) @ k[0].T
    s[np.triu_indices(T, 1)] = -np.inf
    ref = np.log(np.exp(s - s.max(1, keepdims=True)).sum(1)) + s.max(1)
    np.testing.assert_allclose(lse[0], ref, **TOL)


@FAST
@given(N=st.integers(1, 24), V=st.integers(1, 700), n_ignored=st.integers(0, 24),
       reduction=st.sampled_from(["mean", "sum", "none"]), spread=st.sampled_from([0.1, 3.0, 30.0]),
       seed=st.integers(0, 2**16))
def test_crossentropy_twin_equals_cross_entropy(N, V, n_ignored, reduction, spread, seed):
    rng = np.random.default_rng(seed)
    x = _randn(rng, N, V, scale=spread)
    t = rng.integers(0, V, N)
    t[rng.permutation(N)[:min(n_ignored, N - 1)]] = -100  # at least one row counts
    L = mg.tensor(x, requires_grad=True)
    loss = F.cross_entropy(L, t, reduction=reduction)
    g = _randn(rng, N) if reduction == "none" else np.float32(1.7)
    loss.backward(mg.tensor(g))

    losses, lse = twins.crossentropy_forward(x, t)
    n_valid = int((t != -100).sum())
    got = {"mean": losses.sum() / np.float32(n_valid), "sum": losses.sum(), "none": losses}[reduction]
    np.testing.assert_allclose(got, loss.data, **TOL)
    scale = g if reduction == "none" else (g / np.float32(n_valid) if reduction == "mean" else g)
    np.testing.assert_allclose(twins.crossentropy_backward(x, t, lse, scale), L.grad.data, **TOL)
    assert np.all(twins.crossentropy_backward(x, t, lse, scale)[t == -100] == 0)


def test_crossentropy_twin_gives_nan_for_bad_targets():
    losses, _ = twins.crossentropy_forward(np.zeros((2, 5), np.float32), np.array([1, 5]))
    assert np.isfinite(losses[0]) and np.isnan(losses[1])


@FAST
@given(N=st.integers(1, 140), C=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_layernorm_and_gelu_twins(N, C, seed):
    rng = np.random.default_rng(seed)
    x, w, b, g = _randn(rng, N, C, scale=2), _randn(rng, C), _randn(rng, C), _randn(rng, N, C)
    X, W, Bb = (mg.tensor(a, requires_grad=True) for a in (x, w, b))
    out = F.layer_norm(X, W, Bb)
    (out * mg.tensor(g)).sum().backward()
    y, mean, rstd = twins.layernorm_forward(x, w, b, 1e-5)
    np.testing.assert_allclose(y, out.data, **TOL)
    dx, dw, db = twins.layernorm_backward(g, x, w, mean, rstd)
    for a, ref in ((dx, X.grad), (dw, W.grad), (db, Bb.grad)):
        np.testing.assert_allclose(a, ref.data, rtol=1e-5, atol=2e-5)

    X = mg.tensor(x, requires_grad=True)
    out = F.gelu(X)
    (out * mg.tensor(g)).sum().backward()
    np.testing.assert_allclose(twins.gelu_forward(x), out.data, **TOL)
    np.testing.assert_allclose(twins.gelu_backward(x, g), X.grad.data, **TOL)


@FAST
@given(N=st.integers(0, 60), n=st.integers(1, 12), C=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_embedding_backward_twin(N, n, C, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n, N)
    rows = _randn(rng, N, C)
    ref = np.zeros((n, C), np.float32)
    np.add.at(ref, ids, rows)
    np.testing.assert_allclose(twins.embedding_backward(ids, rows, n), ref, **TOL)


def test_adamw_twin_equals_optimizer():
    rng = np.random.default_rng(3)
    p0 = _randn(rng, 50)
    opt_p = mg.tensor(p0.copy(), requires_grad=True)
    opt = AdamW([opt_p], lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    p, m, v = p0.copy(), np.zeros(50, np.float32), np.zeros(50, np.float32)
    for step in range(1, 6):
        g = _randn(rng, 50)
        opt_p.grad = g.copy()
        opt.step()
        twins.adamw_update(p, g, m, v, 3e-3, (0.9, 0.95), 1e-8, 0.1, step)
    np.testing.assert_allclose(p, opt_p.data, rtol=1e-6, atol=1e-7)
