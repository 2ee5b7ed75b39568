"""The CUDA kernels' own code, run on the CPU (tests/cuda_emulator.py: g++, a std::thread per CUDA
thread, barriers for __syncthreads and the warp shuffles), through the real launchers in
minigrad/kernels with NumPy standing in for CuPy. Small shapes that leave partial tiles; the
results must equal the plain ops (float32: 1e-5), so indexing, tiling and barriers are checked
without a GPU. Each kernel's float16 form (-DFP16=1) is checked against the plain float32 op on
the same float16 values, to float16's rounding of the result. Skips where there is no g++.
"""
import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from minigrad import backend, kernels
from minigrad.kernels import (adamw as adamw_launch, attention as attn_launch, bias_residual as br_launch,
                              crossentropy as ce_launch, embedding as emb_launch, flash_attention as fa_launch,
                              gelu as gelu_launch, layernorm as ln_launch, self_attention, twins,
                              unscale as unscale_launch)
from minigrad.kernels.dropout import Dropout

import cuda_emulator
from cuda_emulator import compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="no g++ to build the CPU emulation of the kernels")
TOL = dict(rtol=1e-5, atol=1e-5)
LAUNCHERS = (adamw_launch, attn_launch, br_launch, ce_launch, emb_launch, fa_launch, gelu_launch, ln_launch,
             unscale_launch)


@pytest.fixture
def emulated(monkeypatch):
    """The launchers run the emulated kernels on NumPy arrays."""
    monkeypatch.setattr(backend, "cupy", lambda: np)
    for mod in LAUNCHERS:
        monkeypatch.setattr(mod, "kernel", cuda_emulator.kernel)


def _randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


f32, f16 = np.float32, np.float16
DTYPES = pytest.mark.parametrize("dt", [f32, f16], ids=["float32", "float16"])


def _tol(dt, scale=1.0):
    """float32: the plain op's 1e-5; float16: the result rounded to float16 (and, for sums of a few
    dozen float16 products, a few of its units in the last place)."""
    return TOL if dt == f32 else dict(rtol=4e-3, atol=4e-3 * scale)


def _t(a, grad=True):
    """A float32 tensor of a's values (float16 ones exactly): the reference's input."""
    return mg.tensor(a.astype(f32), requires_grad=grad)


def _sdpa_ref(q, k, v, g, causal, p=0.0):
    """The composite op's output and gradients; with dropout, the mask of counter step 0 of seed 5."""
    Q, K, V = (mg.tensor(a, requires_grad=True) for a in (q, k, v))
    mg.manual_seed(5)
    out = F.scaled_dot_product_attention(Q, K, V, is_causal=causal, dropout_p=p)
    (out * mg.tensor(g)).sum().backward()
    return out.data, Q.grad, K.grad, V.grad


def _drop(p):
    """The Dropout of counter step 0 of seed 5 (what _sdpa_ref's op draws), or None."""
    mg.manual_seed(5)
    return Dropout.draw(p)


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("BH,T,S,D,causal", [(2, 70, 70, 16, True), (1, 37, 90, 16, True), (2, 45, 20, 16, False),
                                             (1, 1, 1, 64, True), (1, 65, 65, 64, True),
                                             (1, 21, 21, 10, True), (2, 9, 13, 3, False)])  # G = 4 does not divide D
def test_attention_kernels_emulated(emulated, BH, T, S, D, causal, p):
    rng = np.random.default_rng(BH * T + S + D)
    q, k, v = _randn(rng, BH, T, D), _randn(rng, BH, S, D), _randn(rng, BH, S, D)
    g = _randn(rng, BH, T, D)
    scale = float(D) ** -0.5
    drop = _drop(p)
    o, lse = attn_launch.forward(q, k, v, scale, causal, drop)
    ref = _sdpa_ref(q, k, v, g, causal, p)
    np.testing.assert_allclose(o, ref[0], **TOL)
    keep = None
    if p:  # the composite op's mask, which the kernels drew inside
        mg.manual_seed(5)
        keep = backend.dropout_keep(np, (BH, T, S), p)
    o_twin, lse_twin = twins.attention_forward(q, k, v, scale, causal, keep, 1 / (1 - p))
    np.testing.assert_allclose(o, o_twin, **TOL)
    np.testing.assert_allclose(lse, lse_twin, **TOL)
    for got, want in zip(attn_launch.backward(q, k, v, o, lse, g, scale, causal, drop), ref[1:]):
        np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("B,T,H,D,p,bias", [(2, 70, 2, 16, 0.0, True), (1, 37, 3, 16, 0.3, True),
                                             (2, 65, 1, 64, 0.1, False), (1, 1, 2, 32, 0.5, True)])
def test_attention_kernels_read_the_packed_projection_emulated(emulated, B, T, H, D, p, bias):
    """attention.cu with `packed`: q, k, v read in place from qkv (B, T, 3, H, D), the bias added as
    they are read, dropout inside, o (B, T, H, D) and dqkv written in place; against the composite
    causal_self_attention (bias add, split, attention with F.dropout's mask, merge)."""
    rng = np.random.default_rng(B * T + H + D)
    C = H * D
    qkv, g, b = _randn(rng, B, T, 3 * C), _randn(rng, B, T, C), _randn(rng, 3 * C) if bias else None
    X = mg.tensor(qkv, requires_grad=True)
    Bb = None if b is None else mg.tensor(b, requires_grad=True)
    mg.manual_seed(5)
    ref = F.causal_self_attention(X, H, dropout_p=p, bias=Bb)  # NumPy: the composite op
    (ref * mg.tensor(g)).sum().backward()
    x5 = qkv.reshape(B, T, 3, H, D)
    b3 = None if b is None else b.reshape(3, H, D)
    drop = _drop(p)
    o, lse = attn_launch.forward_qkv(x5, b3, D ** -0.5, drop)
    np.testing.assert_allclose(o.reshape(B, T, C), ref.data, **TOL)
    dqkv = attn_launch.backward_qkv(x5, b3, o, lse, g.reshape(B, T, H, D), D ** -0.5, drop)
    np.testing.assert_allclose(dqkv.reshape(B, T, 3 * C), X.grad, **TOL)


@DTYPES
@pytest.mark.parametrize("N,V", [(5, 600), (3, 1), (2, 257)])
def test_crossentropy_kernels_emulated(emulated, dt, N, V):
    rng = np.random.default_rng(N + V)
    x = _randn(rng, N, V, scale=5).astype(dt)
    t = rng.integers(0, V, N)
    t[0] = -100
    n_valid = int((t != -100).sum())
    losses, lse, total = ce_launch.forward(x, t.astype(np.int64), -100, 1.0 / n_valid)
    L = _t(x)
    ref = F.cross_entropy(L, t, reduction="none")
    ref.backward(mg.tensor(np.ones(N, np.float32)))
    assert losses.dtype == lse.dtype == total.dtype == f32  # float32 math on float16 logits too
    np.testing.assert_allclose(losses, ref.data, **TOL)
    np.testing.assert_allclose(total[0], ref.data.sum() / n_valid, **TOL)
    d = ce_launch.backward(x, t.astype(np.int64), lse, np.ones(1, np.float32), -100, mult=0.5)
    assert d.dtype == dt
    np.testing.assert_allclose(d, L.grad * 0.5, **_tol(dt))
    t[-1] = V  # out of range: never read, and the loss says so (NaN), its row and the total
    losses, _, total = ce_launch.forward(x, t.astype(np.int64), -100, 1.0)
    assert np.isnan(losses[-1]) and np.isnan(total[0]) and np.isfinite(losses[:-1]).all()


@DTYPES
def test_layernorm_gelu_bias_residual_kernels_emulated(emulated, dt):
    rng = np.random.default_rng(0)
    N, C = 70, 45  # more than one row chunk of the dw/db sums, C not a multiple of 32
    x, w, b, g = (a.astype(dt) for a in (_randn(rng, N, C, scale=2), _randn(rng, C), _randn(rng, C),
                                          _randn(rng, N, C)))
    X, W, Bb = _t(x), _t(w), _t(b)
    out = F.layer_norm(X, W, Bb)
    (out * _t(g, False)).sum().backward()
    y, mean, rstd = ln_launch.forward(x, w, b, 1e-5)
    assert y.dtype == dt and mean.dtype == rstd.dtype == f32
    np.testing.assert_allclose(y, out.data, **_tol(dt, 4))
    dx, dw, db = ln_launch.backward(g, x, w, mean, rstd)
    for got, want, scale in ((dx, X.grad, 4), (dw, W.grad, 20), (db, Bb.grad, 20)):
        assert got.dtype == dt
        np.testing.assert_allclose(got, want, **(dict(rtol=1e-5, atol=2e-5) if dt == f32 else _tol(dt, scale)))
    acc = _randn(rng, N, C).astype(dt)  # with dx given, the gradient is added into it
    into = acc.copy()
    assert ln_launch.backward(g, x, w, mean, rstd, need_dwdb=False, dx=into)[0] is into
    np.testing.assert_allclose(into, acc.astype(f32) + X.grad, **_tol(dt, 4))
    again = ln_launch.backward(g, x, w, mean, rstd)  # the column sums' counters were left at zero
    np.testing.assert_array_equal(again[1], dw)

    for bias in (None, b):
        X, Bb = _t(x), _t(b)
        out = F.gelu(X if bias is None else X + Bb)
        (out * _t(g, False)).sum().backward()
        np.testing.assert_allclose(gelu_launch.forward(x, bias), out.data, **_tol(dt, 4))
        np.testing.assert_allclose(gelu_launch.backward(x, g, bias), X.grad, **_tol(dt, 4))

    r = _randn(rng, N, C).astype(dt)
    np.testing.assert_allclose(br_launch.forward(x, b, r), x.astype(f32) + b.astype(f32) + r.astype(f32),
                               **_tol(dt, 8))
    np.testing.assert_allclose(br_launch.bias_grad(g), g.astype(f32).sum(axis=0), **_tol(dt, 20))
    out = np.empty(C, dt)
    assert br_launch.bias_grad(g, out=out) is out


@DTYPES
@pytest.mark.parametrize("residual", [True, False])
def test_bias_residual_dropout_kernels_emulated(emulated, dt, residual):
    """residual + dropout(x + bias) in one kernel; dx through the dropout and the bias's sums in one:
    the mask is F.dropout's, bit for bit (dropped elements are exactly the residual, and exactly 0
    in dx), and the numbers the composite op's (float16: to its rounding)."""
    rng = np.random.default_rng(4)
    N, P, p = 70, 45, 0.25
    x, r, g = (_randn(rng, N, P).astype(dt) for _ in range(3))
    b = _randn(rng, P).astype(dt)
    drop = _drop(p)
    out = br_launch.forward(x, b, r if residual else None, drop)
    X, Bb = _t(x), _t(b)
    mg.manual_seed(5)
    ref = F.bias_residual(X, Bb, _t(r, False) if residual else None, dropout_p=p)  # NumPy: the composite ops
    (ref * _t(g, False)).sum().backward()
    mg.manual_seed(5)
    keep = backend.dropout_keep(np, (N, P), p)
    assert out.dtype == dt
    np.testing.assert_array_equal(out[~keep], r[~keep] if residual else 0)
    np.testing.assert_allclose(out, ref.data, **_tol(dt, 4))
    dx, db = br_launch.dropout_bias_grad(g, drop)
    assert dx.dtype == db.dtype == dt
    np.testing.assert_array_equal(dx == 0, ~keep)  # g has no zeros
    np.testing.assert_allclose(dx, X.grad, **_tol(dt, 4))
    np.testing.assert_allclose(db, Bb.grad, **_tol(dt, 20))
    into = np.empty(P, dt)
    assert br_launch.dropout_bias_grad(g, drop, out=into)[1] is into


@DTYPES
def test_embedding_backward_kernel_emulated(emulated, dt):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 7, 40)
    rows = _randn(rng, 40, 9).astype(dt)
    ref = np.zeros((10, 9), np.float32)
    np.add.at(ref, ids, rows.astype(f32))
    np.testing.assert_allclose(emb_launch.backward(ids, rows, 10), ref, **_tol(dt, 4))
    before = _randn(rng, 10, 9).astype(dt)  # with out given, added into what it holds
    into = before.copy()
    assert emb_launch.backward(ids, rows, 10, out=into) is into
    np.testing.assert_allclose(into, before.astype(f32) + ref, **_tol(dt, 4))
    # 64-bit keys (for tables and batches too big for 32): the same sums
    keys = np.empty(40, np.int64)
    cuda_emulator.kernel("embedding_backward.cu", "embedding_keys", KEY64=1)((1,), (64,), (ids.astype(np.int64), keys,
                                                                                    np.int32(40)))
    gw = np.zeros((10, 9), dt)
    cuda_emulator.kernel("embedding_backward.cu", "embedding_backward", KEY64=1, **({"FP16": 1} if dt == f16 else {}))(
        (40, 1), (64,), (rows, np.sort(keys), gw, np.int32(40), np.int32(9), np.int32(0)))
    np.testing.assert_allclose(gw, ref, **_tol(dt, 4))


def test_adamw_kernels_emulated(emulated):
    rng = np.random.default_rng(2)
    sizes = [(7, 5), (0,), (300,), (1,)]
    ps = [_randn(rng, *s) for s in sizes]
    ref = [mg.tensor(p.copy(), requires_grad=True) for p in ps]
    opt = mg.optim.AdamW([{"params": ref[:2], "weight_decay": 0.1}, {"params": ref[2:], "weight_decay": 0.0}],
                         lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    n = sum(p.size for p in ps)
    flat = [np.concatenate([p.ravel() for p in ps]), np.zeros(n, np.float32), np.zeros(n, np.float32)]
    single = [ps[2].copy(), np.zeros_like(ps[2]), np.zeros_like(ps[2])]
    ranges = [(0, 35, 0.1), (35, n, 0.0)]  # the two groups, one launch
    for step in range(1, 4):
        gs = [_randn(rng, *s) for s in sizes]
        for t, g in zip(ref, gs):
            t.grad = g
        opt.step()
        g = np.concatenate([g.ravel() for g in gs])
        adamw_launch.adamw_update_ranges(flat[0], g, flat[1], flat[2], ranges, 1e-3, (0.9, 0.95), 1e-8, step)
        adamw_launch.adamw_update(single[0], gs[2], single[1], single[2], 1e-3, (0.9, 0.95), 1e-8, 0.0, step)
    np.testing.assert_allclose(flat[0], np.concatenate([t.data.ravel() for t in ref]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(single[0], ref[2].data, rtol=1e-6, atol=1e-7)


def test_unscale_kernel_emulated(emulated):
    rng = np.random.default_rng(3)
    g16 = (_randn(rng, 1000) * 300).astype(f16)
    g32 = np.empty(1000, np.float32)
    u = unscale_launch.Unscaler()
    u.unscale(g16, g32, 1 / 256)
    np.testing.assert_array_equal(g32, g16.astype(f32) / 256)  # exact: a power of two
    assert u.finite()
    for bad in (np.inf, -np.inf, np.nan):
        g16[rng.integers(1000)] = bad
        u.unscale(g16, g32, 1 / 256)
        u.unscale(np.ones(3, f16), np.empty(3, np.float32), 1.0)  # one flag for every call since the last read
        assert not u.finite()
        g16 = np.nan_to_num(g16, posinf=0, neginf=0).astype(f16)
        u.unscale(g16, g32, 1 / 256)
        assert u.finite()  # a new stamp: the old overflow no longer counts


@pytest.fixture
def fused_on_numpy(emulated, monkeypatch):
    """The ops' dispatch takes the fused path for float32 and float16 NumPy arrays too (emulated kernels)."""
    on_numpy = lambda *a: kernels.enabled() and bool(a) and all(  # noqa: E731
        isinstance(x, np.ndarray) and x.dtype == a[0].dtype and x.dtype in (f32, f16) and x.size > 0 for x in a)
    for mod in (kernels, self_attention):
        monkeypatch.setattr(mod, "use_fused", on_numpy)


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


def _gpt2_step(dtype: str, dropout: float):
    """A tiny GPT-2's loss, every gradient (float32) and the weights after one AdamW step (float16:
    mixed precision), with dropout `dropout` everywhere GPT-2 has it."""
    from gpt2 import GPT2, GPT2Config
    from minigrad.amp import LossScaler, MixedPrecision
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 50, (2, 20)), rng.integers(0, 50, (2, 20))
    y[1, 3] = -100
    mg.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=50, n_ctx=32, n_layer=2, n_head=2, n_embd=32, dropout=dropout))
    # eps well above float32's noise: the key bias's gradient is zero but for rounding, and with a
    # tiny eps Adam would turn that noise into updates of +-lr (the kernel itself is checked exactly
    # in test_adamw_kernels_emulated)
    opt = mg.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-4)
    amp = MixedPrecision(model.parameters(), LossScaler(256.0), flat=opt.flat) if dtype == "float16" else None
    if amp:
        amp.half()
    _, loss = model(x, y)
    (loss * (256.0 if amp else 1.0)).backward()
    assert amp is None or amp.restore()
    grads = [p.grad.copy() for _, p in sorted(model.named_parameters())]
    opt.step()
    return [loss.data] + grads + [p.data.copy() for _, p in sorted(model.named_parameters())]


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpt2_step_fused_emulated(fused_on_numpy, monkeypatch, dtype, dropout):
    """A tiny GPT-2's loss, every gradient and the AdamW update, all fused ops on the emulated
    kernels (attention: float32 on attention.cu, float16 on the tensor-core kernels, both reading
    the QKV projection in place; dropout drawn inside them and inside bias_residual), equal the
    composite ops' with the same dropout masks; float16 mixed precision to float16's rounding."""
    calls = []
    attention = ((fa_launch, "forward"), (fa_launch, "backward")) if dtype == "float16" else \
        ((attn_launch, "forward_qkv"), (attn_launch, "backward_qkv"))
    mods = attention + ((ln_launch, "forward"), (ln_launch, "backward"), (gelu_launch, "forward"),
                        (gelu_launch, "backward"), (ce_launch, "forward"), (ce_launch, "backward"),
                        (emb_launch, "backward"), (br_launch, "forward"), (br_launch, "bias_grad"),
                        (kernels, "adamw_update_ranges"))
    mods += ((unscale_launch.Unscaler, "unscale"),) if dtype == "float16" else ()
    mods += ((br_launch, "dropout_bias_grad"),) if dropout else ()
    for mod, name in mods:
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _n=f"{mod.__name__}.{name}", **k: (calls.append(_n),
                                                                                                 _real(*a, **k))[1])
    fused = _gpt2_step(dtype, dropout)
    assert len(set(calls)) == len(mods), sorted(set(calls))  # every fused kernel ran
    assert mg.get_rng_state()["dropout_calls"] == (1 + 3 * 2 if dropout else 0)  # embeddings, then 3 a layer
    monkeypatch.undo()
    plain = _gpt2_step(dtype, dropout)
    if dtype == "float16":
        # the loss and the (unscaled, float32) gradients, to float16's rounding; not the weights
        # after the step: Adam divides each gradient by its own size, so rounding noise on a
        # gradient near zero can move its weight by up to lr either way
        fused, plain = fused[:len(fused) // 2 + 1], plain[:len(plain) // 2 + 1]
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=2e-2, atol=2e-3)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, **tol)
