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
from hypothesis import HealthCheck, example, given, settings, strategies as st

import minigrad as mg
import minigrad.functional as F
from minigrad import backend
from minigrad import kernels
from minigrad.kernels import attention, bias_residual, flash_attention as fa, self_attention, twins_flash

import cuda_emulator
from cuda_emulator import Module, compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="no g++ to build the CPU emulation of the kernels")
PROBE = Path(__file__).parent / "cuda" / "warp_probe.cu"
EXAMPLES = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ULP16 = 2.0 ** -11  # float16's relative rounding step


def grad_tol(tol: float, T: int) -> float:
    """A gradient's tolerance: dQ, dK and dV each sum up to T products of float16-rounded dS or P,
    whose rounding errors add up like a random walk (sqrt(T) steps). Measured over 260 random draws
    (T <= 80): dQ's error reached 4.1 ULP16 of its largest value, at most 0.74 of this bound."""
    return max(tol, ULP16 * T ** 0.5)


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
    """|got - want| <= tol * max(max|want|, 1) everywhere. float16 errors scale with the terms summed,
    and the inputs here are standard normal, so terms are of order 1 even where they cancel: one
    key's softmax has a zero gradient, which float16 (dO . dropout(V) - dO . O, O rounded) leaves
    at ~1e-4 (hypothesis found it: T=1, p=0.1)."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    err, top = float(np.abs(got - want).max(initial=0.0)), float(np.abs(want).max(initial=0.0))
    assert err <= tol * max(top, 1.0), f"max error {err:.3g} vs max value {top:.3g} (tolerance {tol:.3g})"


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
       causal=st.booleans(), p=st.sampled_from([0.0, 0.1, 0.5]), with_bias=st.booleans(), seed=st.integers(0, 99))
@EXAMPLES
@example(B=1, T=1, H=1, D=16, causal=False, p=0.1, with_bias=False, seed=0)  # a zero gradient, in float16
def test_kernels_match_twin_and_composite(emulated, B, T, H, D, causal, p, with_bias, seed):
    """The kernels, given qkv and (or not) a bias they add as they read, against the twin and the
    composite op over qkv + bias (in float16, as the kernels round the sums)."""
    qkv, dout = _inputs(seed, B, T, H, D)
    bias = np.random.default_rng(seed + 1).standard_normal((3, H, D)).astype(np.float16) if with_bias else None
    mg.manual_seed(5)
    drop = fa.Dropout(*backend.next_dropout_key(p), p) if p else None
    scale = D ** -0.5
    o, lse = fa.forward(qkv, scale, causal, drop, bias=bias)
    dqkv = fa.backward(qkv, o, lse, dout, scale, causal, drop, bias=bias)
    if with_bias:
        qkv = qkv + bias  # float16 + float16: the sums rounded to float16, as the kernels round them
    o_twin, lse_twin = twins_flash.forward(qkv, scale, causal, drop)
    _close(o, o_twin, 2 * ULP16)
    np.testing.assert_allclose(lse, lse_twin, rtol=1e-5, atol=1e-5)
    _close(dqkv, twins_flash.backward(qkv, o, lse, dout, scale, causal, drop), 2 * ULP16)
    want_o, want_d = _composite(qkv, dout, causal, p, np.float32)  # the same mask: counter 0 of seed 5
    _close(o, want_o, 4 * ULP16)
    for i in range(3):  # dq, dk, dv
        _close(dqkv[:, :, i], want_d[:, :, i], grad_tol(4 * ULP16, T))


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
        _close(dqkv[:, :, i], want_d[:, :, i], grad_tol(4 * ULP16, 40))


# ---------------------------------------------------------------- the op: F.causal_self_attention
@pytest.fixture
def fused_qkv(emulated, monkeypatch):
    """F.causal_self_attention takes its fused path for NumPy arrays too, on the emulated kernels
    (flash_attention.cu, attention.cu, and bias_residual.cu's column sums for the bias)."""
    for mod in (attention, bias_residual):
        monkeypatch.setattr(mod, "kernel", cuda_emulator.kernel)
    monkeypatch.setattr(self_attention, "use_fused", lambda *a: kernels.enabled() and all(
        isinstance(x, np.ndarray) and x.dtype == a[0].dtype and x.dtype in (np.float16, np.float32) for x in a))
    monkeypatch.setattr(backend, "_tf32", False)  # restored after each test


def _self_attention(qkv, bias, dout, H, p, dtype, seed=5):
    """F.causal_self_attention over qkv (B, T, 3C) (+ bias) in dtype: (y, d qkv, d bias, the Function)."""
    mg.manual_seed(seed)
    X = mg.tensor(qkv.astype(dtype), requires_grad=True)
    Bb = None if bias is None else mg.tensor(bias.astype(dtype), requires_grad=True)
    y = F.causal_self_attention(X, H, dropout_p=p, bias=Bb)
    fn = y._ctx.fn
    (y * mg.tensor(dout.astype(dtype))).sum().backward()
    assert y.dtype == X.grad.dtype == dtype and mg.get_rng_state()["dropout_calls"] == (1 if p else 0)
    return y.data, X.grad, None if Bb is None else Bb.grad, fn


@given(B=st.integers(1, 2), T=st.integers(1, 70), H=st.integers(1, 2), D=st.sampled_from([16, 32, 64]),
       p=st.sampled_from([0.0, 0.1, 0.5]), with_bias=st.booleans(), form=st.sampled_from(["float16", "tf32", "float32"]),
       seed=st.integers(0, 99))
@EXAMPLES
def test_causal_self_attention_fused_equals_composite(fused_qkv, monkeypatch, B, T, H, D, p, with_bias, form, seed):
    """The op's fused path (float16 and TF32: the tensor-core kernels; float32: attention.cu, both
    reading qkv in place, the bias added as they read, dropout inside) against its composite path
    (MINIGRAD_FUSED=0) on the same values and the same dropout mask: forward output, dQ, dK, dV and
    the bias's gradient, to float16 rounding (float32: to float32 rounding)."""
    rng = np.random.default_rng(seed)
    C = H * D
    dtype = np.float16 if form == "float16" else np.float32
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float16)  # float16 values: exact in every form
    bias = rng.standard_normal(3 * C).astype(np.float16) if with_bias else None
    dout = rng.standard_normal((B, T, C)).astype(np.float16)
    backend.set_tf32(form == "tf32", "standin")
    monkeypatch.setenv("MINIGRAD_FUSED", "1")  # (hypothesis runs every example in one fixture)
    *fused, fn = _self_attention(qkv, bias, dout, H, p, dtype)
    assert fn is kernels.FusedSelfAttention
    monkeypatch.setenv("MINIGRAD_FUSED", "0")
    *plain, fn = _self_attention(qkv, bias, dout, H, p, np.float32)  # the composite op, in float32
    assert fn is not kernels.FusedSelfAttention
    tol = 1e-5 if form == "float32" else 6 * ULP16  # tf32 adds qkv and the bias in float32, then rounds
    y, dx, db = fused
    _close(y, plain[0], tol)
    for i in range(3):  # dq, dk, dv
        _close(dx.reshape(B, T, 3, C)[:, :, i], plain[1].reshape(B, T, 3, C)[:, :, i],
               tol if form == "float32" else grad_tol(tol, T))
    if with_bias:
        _close(db, plain[2], tol * 4)  # sums of B T rows


@pytest.mark.parametrize("form", ["float16", "float32"])
def test_causal_self_attention_masks_are_f_dropouts_bits(fused_qkv, form):
    """With v[t] = e_t the output's column t of row i is P[i, t] keep[i, t] / (1 - p): the mask the
    fused op drew, read back, is backend.dropout_keep's for the (B, H, T, T) probabilities."""
    B, T, H, D, p = 2, 37, 2, 64, 0.3
    qkv = _one_hot_qkv(B, T, H, D, 1).reshape(B, T, 3 * H * D)
    backend.set_tf32(False, "standin")
    mg.manual_seed(11)
    y = F.causal_self_attention(mg.tensor(qkv.astype(form)), H, dropout_p=p)
    mg.manual_seed(11)
    keep = backend.dropout_keep(np, (B, H, T, T), p)
    got = y.data.reshape(B, T, H, D).transpose(0, 2, 1, 3)[..., :T] != 0
    np.testing.assert_array_equal(got, keep & np.tril(np.ones((T, T), bool)))


def test_the_tensor_core_kernels_take_a_view_off_16_bytes(fused_qkv):
    B, T, H, D = 1, 20, 1, 16
    qkv = np.random.default_rng(9).standard_normal((B, T, 3 * H * D)).astype(np.float16)
    buf = np.zeros(qkv.size + 1, np.float16)
    view = buf[1:].reshape(qkv.shape)  # contiguous, 2 bytes past an aligned start
    view[...] = qkv
    got = F.causal_self_attention(mg.tensor(view), H)
    want = _composite(qkv.reshape(B, T, 3, H, D), np.zeros((B, T, H, D), np.float16), True, 0.0, np.float32)[0]
    _close(got.data.reshape(B, T, H, D), want, 4 * ULP16)


def test_which_kernels_take_self_attention(fused_qkv):
    """float16: the tensor cores (head sizes 16..128); float32: attention.cu (head size <= 64), or
    the tensor cores under TF32; anything else: the composite op."""
    fits = lambda shape, dtype: kernels.self_attention_fits(np.zeros(shape, dtype), 2)  # noqa: E731
    assert self_attention.tensor_cores(np.float16, 64) and not self_attention.tensor_cores(np.float32, 64)
    assert fits((1, 4, 3 * 2 * 64), np.float16) and fits((1, 4, 3 * 2 * 64), np.float32)
    assert not fits((1, 4, 3 * 2 * 24), np.float16) and fits((1, 4, 3 * 2 * 24), np.float32)  # 24: not a tile size
    assert not fits((1, 4, 3 * 2 * 128), np.float32) and fits((1, 4, 3 * 2 * 128), np.float16)
    assert not fits((1, 4, 3 * 2 * 64), np.float64) and not fits((1, 4, 7), np.float16)
    backend.set_tf32(True, "standin")
    assert self_attention.tensor_cores(np.float32, 64) and fits((1, 4, 3 * 2 * 128), np.float32)
    assert not self_attention.tensor_cores(np.float32, 24) and fits((1, 4, 3 * 2 * 24), np.float32)
