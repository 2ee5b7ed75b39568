"""The tensor-core attention (minigrad/kernels/flash_attention.cu), run on the CPU down to the
instruction: tests/cuda_emulator.py compiles the real source with its own bodies for mma.sync,
ldmatrix and the shuffles, written from the PTX ISA's fragment tables.

- The emulated instructions themselves against a NumPy reading of those tables (so one layout
  mistake in both the kernels and the emulator cannot cancel out).
- The kernels against their NumPy twin (twins_flash.py: the same tiles and float16 roundings; to a
  few float16 units in the last place) and against minigrad's composite attention (to float16
  rounding), in float16 and float32, causal and not, with and without dropout, at ragged lengths.
- Dropout: the masks the kernels draw are the bits of backend.dropout_keep's, read back out of
  the forward output, dV and dQ.
Skips where there is no g++. Shapes stay small: the emulator runs a std::thread per CUDA thread.
"""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import minigrad as mg
import minigrad.functional as F
from minigrad import backend
from minigrad.kernels import flash_attention as fa, twins_flash
from minigrad.kernels import qkv_attention
from minigrad.kernels.qkv_attention import FlashAttentionQKV, attention_qkv, flash_attention_qkv

import cuda_emulator
from cuda_emulator import Module, compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="no g++ to build the CPU emulation of the kernels")
PROBE = Path(__file__).parent / "cuda" / "warp_probe.cu"
EXAMPLES = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ULP16 = 2.0 ** -11  # float16's relative rounding step


@pytest.fixture
def emulated(monkeypatch):
    """flash_attention's launchers run the emulated kernels on NumPy arrays."""
    monkeypatch.setattr(backend, "cupy", lambda: np)
    monkeypatch.setattr(fa, "kernel", cuda_emulator.kernel)


def _inputs(seed, B, T, H, D):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3, H, D)).astype(np.float16)
    dout = rng.standard_normal((B, T, H, D)).astype(np.float16)
    return qkv, dout


def _close(got, want, tol):
    """|got - want| <= tol * max|want| everywhere (float16 errors scale with the largest value)."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    err, top = float(np.abs(got - want).max(initial=0.0)), float(np.abs(want).max(initial=0.0))
    assert err <= tol * max(top, 1e-3), f"max error {err:.3g} vs max value {top:.3g} (tolerance {tol:.3g})"


# ---------------------------------------------------------------- the instructions, from the PTX tables
# PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type", read directly:
# groupID = lane >> 2, threadID_in_group = lane % 4; register r of a lane holds elements 2r, 2r + 1.
def _a_table():
    """(lane, register, half) -> (row, col) of the 16x16 A operand."""
    out = {}
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for i in range(8):
            row = g if (0 <= i < 2 or 4 <= i < 6) else g + 8
            col = t * 2 + (i & 1) + (8 if i >= 4 else 0)
            out[lane, i // 2, i % 2] = (row, col)
    return out


def _b_table():
    """(lane, register, half) -> (row k, col n) of the 16x8 B operand."""
    return {(lane, i // 2, i % 2): ((lane % 4) * 2 + (i & 1) + (8 if i >= 2 else 0), lane >> 2)
            for lane in range(32) for i in range(4)}


def _c_table():
    """(lane, i) -> (row, col) of the 16x8 float32 accumulator."""
    return {(lane, i): ((lane >> 2) + (8 if i >= 2 else 0), (lane % 4) * 2 + (i & 1)) for lane in range(32) for i in range(4)}


def _pack(table, m16, regs):
    """Per-lane uint32 registers holding the float16 matrix m16 laid out by `table`."""
    bits = m16.view(np.uint16)
    out = np.zeros((32, regs), np.uint32)
    for (lane, r, half), (row, col) in table.items():
        out[lane, r] |= np.uint32(bits[row, col]) << np.uint32(16 * half)
    return out


def test_the_fragment_tables_hold_the_figures_entries():
    # spot checks against the PTX ISA's figures for m16n8k16 (f16 A, B; f32 C/D)
    a, b, c = _a_table(), _b_table(), _c_table()
    assert [a[0, r, h] for r in range(4) for h in range(2)] == [(0, 0), (0, 1), (8, 0), (8, 1), (0, 8), (0, 9),
                                                                  (8, 8), (8, 9)]
    assert a[31, 3, 1] == (15, 15) and a[5, 0, 0] == (1, 2)
    assert [b[6, r, h] for r in range(2) for h in range(2)] == [(4, 1), (5, 1), (12, 1), (13, 1)]
    assert [c[9, i] for i in range(4)] == [(2, 2), (2, 3), (10, 2), (10, 3)]
    for table, n in ((a, 256), (b, 128), (c, 128)):
        assert len(set(table.values())) == n  # every element held exactly once


def test_emulated_mma_follows_the_ptx_layout():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((16, 16)).astype(np.float16)
    B = rng.standard_normal((16, 8)).astype(np.float16)
    C = rng.standard_normal((16, 8)).astype(np.float32)
    c_regs = np.zeros((32, 4), np.float32)
    for (lane, i), (row, col) in _c_table().items():
        c_regs[lane, i] = C[row, col]
    d_regs = np.zeros((32, 4), np.float32)
    Module(PROBE).probe_mma(1, 32, _pack(_a_table(), A, 4), _pack(_b_table(), B, 2), c_regs, d_regs)
    want = A.astype(np.float64) @ B.astype(np.float64) + C
    got = np.zeros((16, 8))
    for (lane, i), (row, col) in _c_table().items():
        got[row, col] = d_regs[lane, i]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_emulated_ldmatrix_follows_the_ptx_layout(count, trans):
    # PTX ISA, ldmatrix: lanes 8m .. 8m + 7 give the addresses of rows 0..7 of matrix m; lane l
    # receives, in register m, row l / 4's elements 2 (l % 4) and 2 (l % 4) + 1 of matrix m (the
    # first in the low half), or with .trans the same of the transposed matrix
    rng = np.random.default_rng(count + 4 * trans)
    rows = rng.permutation(32 * 8).astype(np.float16).reshape(32, 8)  # distinct values
    rows_of = rng.permutation(32).astype(np.int32)  # lane l points at shared row rows_of[l]
    out = np.zeros((32, 4), np.uint32)
    Module(PROBE).probe_ldmatrix(1, 32, rows, rows_of, out, np.int32(count), np.int32(trans))
    for lane in range(32):
        for m in range(count):
            mat = rows[rows_of[8 * m:8 * m + 8]]  # matrix m, as its rows were addressed
            if trans:
                mat = mat.T
            lo, hi = mat[lane // 4, 2 * (lane % 4)], mat[lane // 4, 2 * (lane % 4) + 1]
            got = out[lane, m]
            assert np.uint16(got & 0xFFFF).view(np.float16) == lo and np.uint16(got >> 16).view(np.float16) == hi
        assert (out[lane, count:] == 0).all()


def test_emulated_float16_conversions_round_as_numpy():
    # cvt.rn.f16.f32: to nearest, ties to even (NumPy's astype(float16)); subnormals, overflow, signs
    rng = np.random.default_rng(1)
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)].astype(np.float32)
    ties = (finite[:-1] + finite[1:]) / 2  # exactly between neighbours (in float32) where they are close
    x = np.concatenate([finite, ties, rng.standard_normal(4000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 4000),
                        [65519.0, 65520.0, 1e6, -1e6, np.inf, -np.inf, 2.0 ** -25, 2.0 ** -25 * 3, -0.0]])
    x = x.astype(np.float32)
    h, back = np.zeros(x.size, np.uint16), np.zeros(x.size, np.float32)
    Module(PROBE).probe_half((x.size + 255) // 256, 256, x, h, back, np.int32(x.size))
    with np.errstate(over="ignore"):  # the values past float16's range are there on purpose
        want = x.astype(np.float16)
    np.testing.assert_array_equal(h, want.view(np.uint16))
    np.testing.assert_array_equal(back, want.astype(np.float32))


# ---------------------------------------------------------------- dropout: the backend's bits
@pytest.mark.parametrize("start", [0, 1000, 2 ** 32 - 300])  # the last crosses 2**32, where the key changes
def test_kernel_hash_is_the_backend_stream(emulated, start):
    seed, counter, n = 1234, 7, 600
    got = fa.dropout_bits(backend.dropout_hash_key(seed, counter), start, n)
    np.testing.assert_array_equal(got, backend.hash_uniform_bits(np, n, seed, counter, start))


def _one_hot_qkv(B, T, H, D, seed):
    """Small q, k (every probability well above float16's smallest) and v[t] = e_t."""
    rng = np.random.default_rng(seed)
    qkv = (0.1 * rng.standard_normal((B, T, 3, H, D))).astype(np.float16)
    qkv[:, :, 2] = 0
    qkv[:, np.arange(T), 2, :, np.arange(T)] = 1
    return qkv


@pytest.mark.parametrize("causal", [True, False])
def test_attention_masks_are_the_composite_ops_bits(emulated, causal):
    """With v[t] = e_t, out[i, t] = P[i, t] keep[i, t] / (1 - p): the forward's mask read back;
    dv[t] = sum_i (P keep)[i, t] dout[i] / (1 - p) with dout[i] = e_i: dk/dv's mask; dq[i, j] =
    scale dS[i, j] with k[j] = e_j, where dS = P (dP keep / (1 - p) - delta): dq's mask."""
    B, T, H, D, p = 2, 37, 2, 64, 0.3
    qkv = _one_hot_qkv(B, T, H, D, 0)
    mg.manual_seed(11)
    ref_keep = backend.dropout_keep(np, (B, H, T, T), p)  # what the composite op would draw first
    vis = np.tril(np.ones((T, T), bool)) if causal else np.ones((T, T), bool)
    mg.manual_seed(11)
    drop = fa.Dropout(*backend.next_dropout_key(p), p)
    o, lse = fa.forward(qkv, D ** -0.5, causal, drop)
    np.testing.assert_array_equal(o.transpose(0, 2, 1, 3)[..., :T] != 0, ref_keep & vis)
    dout = np.zeros((B, T, H, D), np.float16)
    dout[:, np.arange(T), :, np.arange(T)] = 1
    dqkv = fa.backward(qkv, o, lse, dout, D ** -0.5, causal, drop)
    dv = dqkv[:, :, 2].transpose(0, 2, 1, 3)[..., :T]                   # (B, H, key t, query i)
    np.testing.assert_array_equal(dv.swapaxes(-1, -2) != 0, ref_keep & vis)
    # dq: k[j] = e_j and dout[i] = 1 everywhere, so dP[i, j] = v_j . 1 = 1 and dq[i, j] = scale
    # P (keep / (1 - p) - delta): kept and dropped differ by scale P / (1 - p), far above rounding
    qkv[:, :, 1] = 0
    qkv[:, np.arange(T), 1, :, np.arange(T)] = 1
    dout = np.ones((B, T, H, D), np.float16)
    o, lse = fa.forward(qkv, D ** -0.5, causal, drop)
    dq = fa.backward(qkv, o, lse, dout, D ** -0.5, causal, drop)[:, :, 0].transpose(0, 2, 1, 3)[..., :T]
    P = np.exp(D ** -0.5 * qkv[:, :, 0].transpose(0, 2, 1, 3)[..., :T].astype(np.float32) - lse[..., None])  # q_i.k_j = q_i[j]
    delta = (o.astype(np.float32)).sum(-1).transpose(0, 2, 1)[..., None]  # dout . o
    ratio = dq.astype(np.float32) / (D ** -0.5 * np.where(vis, P, 1)) + delta  # keep / (1 - p) or 0
    np.testing.assert_array_equal(ratio[..., vis] > 0.5 / (1 - p), (ref_keep & vis)[..., vis])


# ---------------------------------------------------------------- the kernels: twin and composite
def _composite(qkv, dout, causal, p, dtype, seed=5):
    """minigrad's composite attention over the same values: (out (B, T, H, D), dqkv)."""
    mg.manual_seed(seed)
    X = mg.tensor(qkv.astype(dtype), requires_grad=True)
    heads = X.permute(2, 0, 3, 1, 4)  # (3, B, H, T, D), as gpt2's attention splits its projection
    q, k, v = heads[0], heads[1], heads[2]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p).transpose(1, 2)
    (y * mg.tensor(dout.astype(dtype))).sum().backward()
    return y.data, X.grad


@given(B=st.integers(1, 2), T=st.integers(1, 80), H=st.integers(1, 2), D=st.sampled_from([16, 32, 64]),
       causal=st.booleans(), p=st.sampled_from([0.0, 0.1, 0.5]), seed=st.integers(0, 99))
@EXAMPLES
def test_kernels_match_twin_and_composite(emulated, B, T, H, D, causal, p, seed):
    qkv, dout = _inputs(seed, B, T, H, D)
    mg.manual_seed(5)
    drop = fa.Dropout(*backend.next_dropout_key(p), p) if p else None
    scale = D ** -0.5
    o, lse = fa.forward(qkv, scale, causal, drop)
    dqkv = fa.backward(qkv, o, lse, dout, scale, causal, drop)
    o_twin, lse_twin = twins_flash.forward(qkv, scale, causal, drop)
    _close(o, o_twin, 2 * ULP16)
    np.testing.assert_allclose(lse, lse_twin, rtol=1e-5, atol=1e-5)
    _close(dqkv, twins_flash.backward(qkv, o, lse, dout, scale, causal, drop), 2 * ULP16)
    want_o, want_d = _composite(qkv, dout, causal, p, np.float32)  # the same mask: counter 0 of seed 5
    _close(o, want_o, 4 * ULP16)
    for i in range(3):  # dq, dk, dv
        _close(dqkv[:, :, i], want_d[:, :, i], 4 * ULP16)


def test_head_size_128_runs_the_backward_in_two_parts(emulated):
    qkv, dout = _inputs(3, 1, 40, 1, 128)
    assert fa.parts(128) == (1, 2)
    mg.manual_seed(5)
    drop = fa.Dropout(*backend.next_dropout_key(0.2), 0.2)
    o, lse = fa.forward(qkv, 128 ** -0.5, True, drop)
    dqkv = fa.backward(qkv, o, lse, dout, 128 ** -0.5, True, drop)
    want_o, want_d = _composite(qkv, dout, True, 0.2, np.float32)
    _close(o, want_o, 4 * ULP16)
    for i in range(3):
        _close(dqkv[:, :, i], want_d[:, :, i], 4 * ULP16)


# ---------------------------------------------------------------- the autograd Function
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_flash_attention_qkv_function(emulated, dtype, p):
    """Forward and backward through the engine from a (B, T, 3, H, D) tensor, against the composite
    op in the same precision (float32 inputs are cast to float16 and back); one dropout draw."""
    B, T, H, D = 2, 50, 2, 16
    qkv, dout = _inputs(7, B, T, H, D)
    mg.manual_seed(5)
    X = mg.tensor(qkv.astype(dtype), requires_grad=True)
    y = flash_attention_qkv(X, is_causal=True, dropout_p=p)
    assert y.shape == (B, T, H, D) and y.dtype == dtype
    (y * mg.tensor(dout.astype(dtype))).sum().backward()
    assert X.grad.shape == qkv.shape and X.grad.dtype == dtype
    assert mg.get_rng_state()["dropout_calls"] == (1 if p else 0)
    want_o, want_d = _composite(qkv, dout, True, p, dtype)
    tol = 4 * ULP16 if dtype == np.float32 else 8 * ULP16  # the float16 composite rounds at every op
    _close(y.data, want_o, tol)
    for i in range(3):
        _close(X.grad[:, :, i], want_d[:, :, i], tol)


def test_flash_attention_qkv_takes_a_view_off_16_bytes(emulated):
    qkv, dout = _inputs(9, 1, 20, 1, 16)
    buf = np.zeros(qkv.size + 1, np.float16)
    view = buf[1:].reshape(qkv.shape)  # contiguous, 2 bytes past an aligned start
    view[...] = qkv
    mg.manual_seed(5)
    got = flash_attention_qkv(mg.tensor(view))
    _close(got.data, _composite(qkv, dout, True, 0.0, np.float32)[0], 4 * ULP16)


def test_flash_attention_qkv_refuses_what_the_kernels_do_not_take(emulated):
    with pytest.raises(ValueError, match="head sizes"):
        flash_attention_qkv(mg.zeros(1, 4, 3, 1, 24))
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, D\)"):
        flash_attention_qkv(mg.zeros(1, 4, 2, 1, 16))
    with pytest.raises(ValueError, match="dropout"):
        flash_attention_qkv(mg.zeros(1, 4, 3, 1, 16), dropout_p=1.0)


def test_attention_qkv_takes_the_kernels_where_they_fit(emulated, monkeypatch):
    qkv, dout = _inputs(8, 1, 30, 2, 16)
    X = mg.tensor(qkv.astype(np.float32), requires_grad=True)
    assert not qkv_attention.flash_fits(X.data)  # NumPy: the composite op
    composite = attention_qkv(X, dropout_p=0.0)
    assert composite._ctx.fn is not FlashAttentionQKV and composite.shape == (1, 30, 2, 16)
    monkeypatch.setattr(qkv_attention, "flash_fits", lambda a: a.dtype in (np.float16, np.float32))
    fused = attention_qkv(X, dropout_p=0.0)
    assert fused._ctx.fn is FlashAttentionQKV
    _close(fused.data, composite.data, 4 * ULP16)
