"""The CUDA kernels' own code, run on the CPU (tests/cuda_emulator.py: g++, a std::thread per CUDA
thread, barriers for __syncthreads and the warp shuffles), through the real launchers in
minigrad/kernels with NumPy standing in for CuPy. Small shapes that leave partial tiles; the
results must equal the plain ops (float32, 1e-5), so indexing, tiling and barriers are checked
without a GPU. Skips where there is no g++.
"""
import importlib

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from minigrad import backend
from minigrad.kernels import (adamw as adamw_launch, attention as attn_launch, crossentropy as ce_launch,
                              embedding as emb_launch, gelu as gelu_launch, layernorm as ln_launch, twins)

from cuda_emulator import Module, compiler

# the package exports a function of the same name, so take the launcher module itself
br_launch = importlib.import_module("minigrad.kernels.bias_residual")
pytestmark = pytest.mark.skipif(compiler() is None, reason="no g++ to build the CPU emulation of the kernels")
TOL = dict(rtol=1e-5, atol=1e-5)
_modules: dict = {}


def _emu_kernel(file, name, **defines):
    key = (file, tuple(sorted(defines.items())))
    if key not in _modules:
        _modules[key] = Module(file, defines)
    fn = getattr(_modules[key], name)
    return lambda grid, block, args: fn(grid, block[0], *args)


@pytest.fixture
def emulated(monkeypatch):
    """The launchers run the emulated kernels on NumPy arrays."""
    monkeypatch.setattr(backend, "cupy", lambda: np)
    for mod in (adamw_launch, attn_launch, br_launch, ce_launch, emb_launch, gelu_launch, ln_launch):
        monkeypatch.setattr(mod, "kernel", _emu_kernel)


def _randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _sdpa_ref(q, k, v, g, causal):
    Q, K, V = (mg.tensor(a, requires_grad=True) for a in (q, k, v))
    out = F.scaled_dot_product_attention(Q, K, V, is_causal=causal)
    (out * mg.tensor(g)).sum().backward()
    return out.data, Q.grad, K.grad, V.grad


@pytest.mark.parametrize("BH,T,S,D,causal", [(2, 70, 70, 16, True), (1, 37, 90, 16, True), (2, 45, 20, 16, False),
                                             (1, 1, 1, 64, True), (1, 65, 65, 64, True)])
def test_attention_kernels_emulated(emulated, BH, T, S, D, causal):
    rng = np.random.default_rng(BH * T + S + D)
    q, k, v = _randn(rng, BH, T, D), _randn(rng, BH, S, D), _randn(rng, BH, S, D)
    g = _randn(rng, BH, T, D)
    scale = float(D) ** -0.5
    o, lse = attn_launch.forward(q, k, v, scale, causal)
    ref = _sdpa_ref(q, k, v, g, causal)
    np.testing.assert_allclose(o, ref[0], **TOL)
    _, lse_twin = twins.attention_forward(q, k, v, scale, causal)
    np.testing.assert_allclose(lse, lse_twin, **TOL)
    for got, want in zip(attn_launch.backward(q, k, v, o, lse, g, scale, causal), ref[1:]):
        np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("N,V", [(5, 600), (3, 1), (2, 257)])
def test_crossentropy_kernels_emulated(emulated, N, V):
    rng = np.random.default_rng(N + V)
    x = _randn(rng, N, V, scale=5)
    t = rng.integers(0, V, N)
    t[0] = -100
    losses, lse, bad = ce_launch.forward(x, t.astype(np.int64), -100)
    assert int(bad[0]) == 0
    L = mg.tensor(x, requires_grad=True)
    ref = F.cross_entropy(L, t, reduction="none")
    ref.backward(mg.tensor(np.ones(N, np.float32)))
    np.testing.assert_allclose(losses, ref.data, **TOL)
    d = ce_launch.backward(x, t.astype(np.int64), lse, np.ones(1, np.float32), -100)
    np.testing.assert_allclose(d, L.grad, **TOL)
    t[-1] = V  # out of range: flagged, never read
    assert int(ce_launch.forward(x, t.astype(np.int64), -100)[2][0]) == 1


def test_layernorm_gelu_bias_residual_kernels_emulated(emulated):
    rng = np.random.default_rng(0)
    N, C = 70, 45  # more than one row chunk of the dw/db sums, C not a multiple of 32
    x, w, b, g = _randn(rng, N, C, scale=2), _randn(rng, C), _randn(rng, C), _randn(rng, N, C)
    X, W, Bb = (mg.tensor(a, requires_grad=True) for a in (x, w, b))
    out = F.layer_norm(X, W, Bb)
    (out * mg.tensor(g)).sum().backward()
    y, mean, rstd = ln_launch.forward(x, w, b, 1e-5)
    np.testing.assert_allclose(y, out.data, **TOL)
    for got, want in zip(ln_launch.backward(g, x, w, mean, rstd), (X.grad, W.grad, Bb.grad)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)

    X = mg.tensor(x, requires_grad=True)
    out = F.gelu(X)
    (out * mg.tensor(g)).sum().backward()
    np.testing.assert_allclose(gelu_launch.forward(x), out.data, **TOL)
    np.testing.assert_allclose(gelu_launch.backward(x, g), X.grad, **TOL)

    r = _randn(rng, N, C)
    np.testing.assert_allclose(br_launch.forward(x, b, r), x + b + r, **TOL)
    np.testing.assert_allclose(br_launch.bias_grad(g), g.sum(axis=0), **TOL)


def test_embedding_backward_kernel_emulated(emulated):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 7, 40)
    rows = _randn(rng, 40, 9)
    ref = np.zeros((10, 9), np.float32)
    np.add.at(ref, ids, rows)
    np.testing.assert_allclose(emb_launch.backward(ids, rows, 10), ref, **TOL)


def test_adamw_kernels_emulated(emulated):
    rng = np.random.default_rng(2)
    sizes = [(7, 5), (0,), (300,), (1,)]
    ps = [_randn(rng, *s) for s in sizes]
    ref = [mg.tensor(p.copy(), requires_grad=True) for p in ps]
    opt = mg.optim.AdamW(ref, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    dev = [p.copy() for p in ps]
    ms, vs = [np.zeros_like(p) for p in ps], [np.zeros_like(p) for p in ps]
    flat = [ps[2].copy(), np.zeros_like(ps[2]), np.zeros_like(ps[2])]
    multi = Module("adamw.cu").adamw_multi
    for step in range(1, 4):
        gs = [_randn(rng, *s) for s in sizes]
        for t, g in zip(ref, gs):
            t.grad = g
        opt.step()
        adamw_launch.adamw_update(flat[0], gs[2], flat[1], flat[2], 1e-3, (0.9, 0.95), 1e-8, 0.1, step)
        # adamw_multi through its pointer tables (NumPy addresses instead of device pointers)
        keep = [i for i, p in enumerate(dev) if p.size]
        ptr = lambda arrs: np.array([arrs[i].ctypes.data for i in keep], np.uint64)  # noqa: E731
        offsets = np.concatenate([[0], np.cumsum([dev[i].size for i in keep])]).astype(np.int64)
        decays = np.full(len(keep), 1e-3 * 0.1, np.float32)
        step_size, inv_sqrt_bc2 = adamw_launch._scalars(1e-3, (0.9, 0.95), step)
        multi(4, 256, ptr(dev), ptr(gs), ptr(ms), ptr(vs), offsets, decays, np.int32(len(keep)), np.float32(0.9),
              np.float32(0.95), np.float32(1e-8), np.float32(step_size), np.float32(inv_sqrt_bc2))
    for t, p in zip(ref, dev):
        np.testing.assert_allclose(p, t.data, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(flat[0], ref[2].data, rtol=1e-6, atol=1e-7)


@pytest.fixture
def fused_on_numpy(emulated, monkeypatch):
    """functional's dispatch takes the fused path for float32 NumPy arrays too (emulated kernels)."""
    import minigrad.kernels as K
    monkeypatch.setattr(K, "use_fused", lambda *a: all(isinstance(x, np.ndarray) and x.dtype == np.float32
                                                       and x.size > 0 for x in a))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_cross_entropy_function_emulated(fused_on_numpy, monkeypatch, reduction):
    rng = np.random.default_rng(3)
    x = _randn(rng, 2, 3, 40, scale=3)
    t = rng.integers(0, 40, (2, 3))
    t[0, 1] = -100
    g = _randn(rng, 2, 3) if reduction == "none" else np.float32(0.6)
    out = []
    for fused in (True, False):
        if not fused:
            monkeypatch.undo()  # the composite op
        L = mg.tensor(x, requires_grad=True)
        loss = F.cross_entropy(L, t, reduction=reduction)
        assert (loss._ctx.fn.__name__ == "FusedCrossEntropy") == fused
        loss.backward(mg.tensor(g))
        out.append((loss.data, L.grad))
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, **TOL)


def test_gpt2_forward_backward_fused_emulated(fused_on_numpy, monkeypatch):
    """A tiny GPT-2's loss and every gradient, all fused ops on the emulated kernels, equal the
    composite ops' (dropout 0, as the fused attention requires)."""
    from gpt2 import GPT2, GPT2Config
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 50, (2, 20)), rng.integers(0, 50, (2, 20))
    y[1, 3] = -100
    calls = []
    for mod, name in ((attn_launch, "forward"), (attn_launch, "backward"), (ln_launch, "forward"),
                      (gelu_launch, "backward"), (ce_launch, "backward"), (emb_launch, "backward")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _n=f"{mod.__name__}.{name}", **k: (calls.append(_n),
                                                                                                 _real(*a, **k))[1])
    results = []
    for fused in (True, False):
        if not fused:
            assert len(set(calls)) == 6, calls  # every fused kernel ran
            monkeypatch.undo()
        mg.manual_seed(0)
        model = GPT2(GPT2Config(vocab_size=50, n_ctx=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
        _, loss = model(x, y)
        loss.backward()
        results.append([loss.data] + [p.grad for _, p in sorted(model.named_parameters())])
    assert len(results[0]) > 10
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
