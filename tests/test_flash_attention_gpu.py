"""The tensor-core attention on a GPU (`pytest --backend cupy`): the compiled kernels against their
NumPy twin and the composite op, and F.causal_self_attention from a (B, T, 3C) device projection in
each precision (float16, TF32, float32), which also runs on the stand-in (`--backend standin`: the
launchers and the op's wiring, NumPy doing the kernels' work). The CPU runs the CUDA sources
themselves in test_flash_attention_emulated.py and test_kernels_emulated.py."""
import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from minigrad import backend as mg_backend, kernels
from minigrad.kernels import flash_attention as fa, twins_flash

from test_flash_attention_emulated import ULP16, _close, _composite, _inputs, grad_tol


@pytest.fixture
def cuda(backend):
    if backend != "cuda":
        pytest.skip("the CUDA kernels run on the cuda backend only")
    return mg_backend.cupy()


@pytest.fixture
def dev(backend):
    """cuda, or the stand-in (NumPy doing the kernels' work: the launchers and the op's wiring run)."""
    if backend == "cpu":
        pytest.skip("NumPy never takes the fused path")
    return backend


@pytest.mark.parametrize("B,T,H,D,causal,p", [(2, 200, 3, 64, True, 0.1), (1, 77, 2, 64, False, 0.0),
                                               (2, 130, 2, 128, True, 0.2), (3, 33, 4, 16, True, 0.5),
                                               (1, 64, 1, 32, False, 0.1)])
def test_flash_kernels_on_the_gpu(cuda, B, T, H, D, causal, p):
    qkv, dout = _inputs(B * T + D, B, T, H, D)
    mg.manual_seed(5)
    drop = fa.Dropout(*mg_backend.next_dropout_key(p), p) if p else None
    scale = D ** -0.5
    o, lse = fa.forward(cuda.asarray(qkv), scale, causal, drop)
    dqkv = fa.backward(cuda.asarray(qkv), o, lse, cuda.asarray(dout), scale, causal, drop)
    o, lse, dqkv = cuda.asnumpy(o), cuda.asnumpy(lse), cuda.asnumpy(dqkv)
    o_twin, lse_twin = twins_flash.forward(qkv, scale, causal, drop)
    _close(o, o_twin, 4 * ULP16)  # the GPU's exp2f and fused multiply-adds differ from NumPy's in the last bits
    np.testing.assert_allclose(lse, lse_twin, rtol=1e-4, atol=1e-4)
    _close(dqkv, twins_flash.backward(qkv, o, lse, dout, scale, causal, drop), 4 * ULP16)
    want_o, want_d = _composite(qkv, dout, causal, p, np.float32)
    _close(o, want_o, 4 * ULP16)
    for i in range(3):
        _close(dqkv[:, :, i], want_d[:, :, i], grad_tol(4 * ULP16, T))


@pytest.mark.parametrize("form", ["float16", "tf32", "float32"])
def test_causal_self_attention_on_the_gpu(dev, monkeypatch, form):
    """The op GPT-2 trains with, from a (B, T, 3C) CuPy projection and its bias, dropout 0.1:
    float16 and TF32 on the tensor-core kernels, float32 on attention.cu, against the composite op
    on NumPy in float32 (the same values, the same dropout mask)."""
    B, T, H, D = 2, 100, 2, 64
    qkv, dout = _inputs(1, B, T, H, D)
    qkv, dout = qkv.reshape(B, T, 3 * H * D), dout.reshape(B, T, H * D)
    bias = np.random.default_rng(2).standard_normal(3 * H * D).astype(np.float16)
    dtype = np.float16 if form == "float16" else np.float32
    monkeypatch.setattr(mg_backend, "_tf32", False)
    mg_backend.set_tf32(form == "tf32", dev)
    try:
        got = _run(qkv, bias, dout, H, dtype, dev)
    finally:
        mg_backend.set_tf32(False, dev)
    want = _run(qkv, bias, dout, H, np.float32, "cpu")
    tol = 1e-4 if form == "float32" else 8 * ULP16
    for g, w in zip(got[:2], want[:2]):
        _close(g, w, tol)
    _close(got[2], want[2], 4 * tol)


def _run(qkv, bias, dout, H, dtype, device):
    mg.manual_seed(5)
    X, Bb = (mg.tensor(a, requires_grad=True, device=device, dtype=dtype) for a in (qkv, bias))
    y = F.causal_self_attention(X, H, dropout_p=0.1, bias=Bb)
    assert (y._ctx.fn is kernels.FusedSelfAttention) == (device != "cpu")
    (y * mg.tensor(dout, device=device, dtype=dtype)).sum().backward()
    return [mg_backend.to_device(a, "cpu").astype(np.float32) for a in (y.data, X.grad, Bb.grad)]


def test_which_kernels_take_causal_self_attention(dev, monkeypatch):
    for shape, dtype, fits in (((2, 8, 3 * 2 * 64), np.float16, True), ((2, 8, 3 * 2 * 64), np.float32, True),
                               ((2, 8, 3 * 2 * 64), np.float64, False), ((2, 8, 3 * 2 * 24), np.float16, False)):
        X = mg.tensor(np.zeros(shape, dtype), requires_grad=True, device=dev)
        assert kernels.self_attention_fits(X.data, 2) == fits
        assert (F.causal_self_attention(X, 2)._ctx.fn is kernels.FusedSelfAttention) == fits
    monkeypatch.setenv("MINIGRAD_FUSED", "0")
    assert not kernels.self_attention_fits(mg_backend.xp_for(dev).zeros((2, 8, 3 * 2 * 64), np.float16), 2)
