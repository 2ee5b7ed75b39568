"""The tensor-core attention on a GPU (`pytest --backend cupy`; skips elsewhere): the compiled
kernels against their NumPy twin and the composite op, and the autograd Function over a
(B, T, 3, H, D) CuPy tensor. The CPU runs the same source in test_flash_attention_emulated.py."""
import numpy as np
import pytest

import minigrad as mg
from minigrad import backend as mg_backend
from minigrad.kernels import flash_attention as fa, twins_flash
from minigrad.kernels.qkv_attention import FlashAttentionQKV, attention_qkv, flash_attention_qkv, flash_fits

from test_flash_attention_emulated import ULP16, _close, _composite, _inputs


@pytest.fixture
def cuda(backend):
    if backend != "cuda":
        pytest.skip("the CUDA kernels run on the cuda backend only")
    return mg_backend.cupy()


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
        _close(dqkv[:, :, i], want_d[:, :, i], 4 * ULP16)


def test_flash_attention_qkv_function_on_the_gpu(cuda):
    qkv, dout = _inputs(1, 2, 100, 2, 64)
    mg.manual_seed(5)
    X = mg.tensor(qkv, requires_grad=True, device="cuda")
    y = flash_attention_qkv(X, is_causal=True, dropout_p=0.1)
    (y * mg.tensor(dout, device="cuda")).sum().backward()
    want_o, want_d = _composite(qkv, dout, True, 0.1, np.float16)
    _close(cuda.asnumpy(y.data), want_o, 8 * ULP16)
    for i in range(3):
        _close(cuda.asnumpy(X.grad)[:, :, i], want_d[:, :, i], 8 * ULP16)


def test_attention_qkv_dispatch_on_the_gpu(cuda, monkeypatch):
    for shape, dtype, fits in (((2, 8, 3, 2, 64), np.float16, True), ((2, 8, 3, 2, 64), np.float32, True),
                               ((2, 8, 3, 2, 64), np.float64, False), ((2, 8, 3, 2, 24), np.float16, False)):
        X = mg.tensor(np.zeros(shape, dtype), requires_grad=True, device="cuda")
        assert flash_fits(X.data) == fits
        assert (attention_qkv(X)._ctx.fn is FlashAttentionQKV) == fits
    monkeypatch.setenv("MINIGRAD_FUSED", "0")
    assert not flash_fits(mg.tensor(np.zeros((2, 8, 3, 2, 64), np.float16), device="cuda").data)
