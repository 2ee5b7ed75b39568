"""The CUDA kernels: they compile (NVRTC, no GPU needed), a broken source fails the check, the
dispatch leaves NumPy alone, and on a GPU each kernel equals the composite op it replaces.

The GPU tests use the `backend` fixture and run on "cuda" only (`pytest --backend cupy`); on a
machine without one they skip. Tolerances there: float32, expf and summation order differ from
NumPy's, so 1e-5 absolute plus 1e-4 relative.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from minigrad import kernels
from minigrad.kernels import twins
from minigrad.kernels.__main__ import nvrtc_available
from minigrad.kernels._loader import kernel_names, sources

NVRTC_MISSING = nvrtc_available()
REQUIRED = {"layernorm_forward", "layernorm_backward_dx", "gelu_forward", "gelu_backward", "attention_forward",
            "attention_backward_dkdv", "attention_backward_dq", "crossentropy_forward", "crossentropy_backward",
            "embedding_backward", "adamw_flat", "adamw_multi", "bias_residual_forward"}
GPU_TOL = dict(rtol=1e-4, atol=1e-5)


def _check(*paths):
    return subprocess.run([sys.executable, "-m", "minigrad.kernels", *map(str, paths)], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=300)


# ---------------------------------------------------------------- compilation (CPU)
@pytest.mark.skipif(NVRTC_MISSING is not None, reason=f"NVRTC cannot run here: {NVRTC_MISSING}")
def test_every_kernel_compiles():
    names = [n for f in sources() for n in kernel_names(f.read_text())]
    assert REQUIRED <= set(names)
    r = _check()
    assert r.returncode == 0, r.stderr
    for n in names:
        assert f" {n}\n" in r.stdout
    assert f"{len(names)} kernels compiled" in r.stdout


@pytest.mark.skipif(NVRTC_MISSING is not None, reason=f"NVRTC cannot run here: {NVRTC_MISSING}")
def test_a_syntax_error_fails_the_check(tmp_path):
    good = tmp_path / "good.cu"
    good.write_text('extern "C" __global__ void twice(float* x, int n) {\n'
                    '    int i = blockIdx.x * blockDim.x + threadIdx.x;\n    if (i < n) x[i] *= 2.0f;\n}\n')
    r = _check(good)
    assert r.returncode == 0 and "1 kernels compiled" in r.stdout, r.stderr
    bad = tmp_path / "bad.cu"
    bad.write_text(good.read_text().replace("x[i] *= 2.0f;", "x[i] *= 2.0f"))
    r = _check(tmp_path)  # a folder: both files
    assert r.returncode == 1
    assert "bad.cu" in r.stderr and "error" in r.stderr and "good.cu" not in r.stderr
    assert "1 kernels compiled" in r.stdout


def test_a_missing_path_is_one_clear_error(tmp_path):
    r = _check(tmp_path / "nope.cu")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


# ---------------------------------------------------------------- dispatch (CPU)
def test_numpy_never_takes_the_fused_path(monkeypatch):
    x = np.ones((2, 3), np.float32)
    assert not kernels.use_fused(x)
    monkeypatch.setenv("MINIGRAD_FUSED", "0")
    assert not kernels.enabled()
    monkeypatch.setenv("MINIGRAD_FUSED", "1")
    assert kernels.enabled()


# ---------------------------------------------------------------- kernels against references (GPU)
@pytest.fixture
def cuda(backend):
    if backend != "cuda":
        pytest.skip("the CUDA kernels run on the cuda backend only")
    return mg.backend.cupy()


def _fused_and_plain(monkeypatch, fn):
    """fn() run with the kernels and with MINIGRAD_FUSED=0; results as NumPy arrays."""
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv("MINIGRAD_FUSED", flag)
        out.append([mg.backend.to_device(a, "cpu") for a in fn()])
    monkeypatch.delenv("MINIGRAD_FUSED")
    return out


def _grads(fn, arrays, g):
    ts = [mg.tensor(a, requires_grad=True, device="cuda") for a in arrays]
    out = fn(*ts)
    (out * mg.tensor(g, device="cuda")).sum().backward()
    return [out.data] + [t.grad if not isinstance(t.grad, mg.Tensor) else t.grad.data for t in ts]


def _close(fused, plain, tol=GPU_TOL):
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("shape", [(3, 7, 768), (5, 33), (1, 1600)])
def test_layernorm_and_gelu_kernels(cuda, monkeypatch, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32) * 2
    w, b = rng.standard_normal(shape[-1:]).astype(np.float32), rng.standard_normal(shape[-1:]).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    _close(*_fused_and_plain(monkeypatch, lambda: _grads(F.layer_norm, (x, w, b), g)))
    _close(*_fused_and_plain(monkeypatch, lambda: _grads(F.gelu, (x,), g)))


@pytest.mark.parametrize("B,H,T,S,D,causal", [(2, 3, 100, 100, 64, True), (1, 2, 1, 1, 64, True),
                                              (2, 2, 37, 129, 64, True), (1, 3, 65, 65, 16, True),
                                              (2, 1, 70, 90, 64, False), (1, 12, 1024, 1024, 64, True)])
def test_attention_kernels(cuda, monkeypatch, B, H, T, S, D, causal):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((B, H, n, D)).astype(np.float32) for n in (T, S, S))
    g = rng.standard_normal((B, H, T, D)).astype(np.float32)
    assert kernels.attention_fits(cuda.asarray(q), cuda.asarray(k), cuda.asarray(v), causal, None, 0.0)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    fused, plain = _fused_and_plain(monkeypatch, lambda: _grads(fn, (q, k, v), g))
    _close(fused, plain)
    # and the kernel follows its NumPy twin (same tiles)
    o, _ = twins.attention_forward(q.reshape(-1, T, D), k.reshape(-1, S, D), v.reshape(-1, S, D), D ** -0.5, causal)
    np.testing.assert_allclose(fused[0], o.reshape(q.shape), **GPU_TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("N,V", [(37, 50257), (5, 300), (3, 1)])
def test_crossentropy_kernel(cuda, monkeypatch, reduction, N, V):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((N, V)) * 4).astype(np.float32)
    t = rng.integers(0, V, N)
    t[::3] = -100
    t[1] = V - 1
    g = rng.standard_normal(N).astype(np.float32) if reduction == "none" else np.float32(0.7)

    def run():
        L = mg.tensor(x, requires_grad=True, device="cuda")
        loss = F.cross_entropy(L, mg.tensor(t, device="cuda"), reduction=reduction)
        loss.backward(mg.tensor(g, device="cuda"))
        return [loss.data, L.grad]

    _close(*_fused_and_plain(monkeypatch, run))
    monkeypatch.setenv("MINIGRAD_FUSED", "1")
    with pytest.raises(IndexError):
        F.cross_entropy(mg.tensor(x, device="cuda"), mg.tensor(np.full(N, V), device="cuda"))


def test_embedding_backward_kernel_is_exact_and_deterministic(cuda):
    rng = np.random.default_rng(3)
    n, C, N = 1000, 768, 8 * 1024
    ids = rng.integers(0, 50, N)  # many repeats: the case atomics make nondeterministic
    rows = rng.standard_normal((N, C)).astype(np.float32)
    a = kernels.fused.embedding.backward(cuda.asarray(ids), cuda.asarray(rows), n)
    b = kernels.fused.embedding.backward(cuda.asarray(ids), cuda.asarray(rows), n)
    assert bool((a == b).all())
    np.testing.assert_allclose(cuda.asnumpy(a), twins.embedding_backward(ids, rows, n), **GPU_TOL)


def test_adamw_kernels_equal_the_optimizer(cuda):
    rng = np.random.default_rng(4)
    sizes = [(7, 5), (300,), (1,), (64, 33)]
    ps = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    ref = [mg.tensor(p.copy(), requires_grad=True) for p in ps]
    opt = mg.optim.AdamW(ref, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    dev = [cuda.asarray(p) for p in ps]
    ms = [cuda.zeros_like(p) for p in dev]
    vs = [cuda.zeros_like(p) for p in dev]
    flat_p = cuda.asarray(ps[1])
    flat_m, flat_v = cuda.zeros_like(flat_p), cuda.zeros_like(flat_p)
    for step in range(1, 4):
        gs = [rng.standard_normal(s).astype(np.float32) for s in sizes]
        for t, g in zip(ref, gs):
            t.grad = g
        opt.step()
        kernels.adamw_update_multi(dev, [cuda.asarray(g) for g in gs], ms, vs, 1e-3, (0.9, 0.95), 1e-8, 0.1, step)
        kernels.adamw_update(flat_p, cuda.asarray(gs[1]), flat_m, flat_v, 1e-3, (0.9, 0.95), 1e-8, 0.1, step)
    for t, p in zip(ref, dev):
        np.testing.assert_allclose(cuda.asnumpy(p), t.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cuda.asnumpy(flat_p), ref[1].data, rtol=1e-5, atol=1e-6)


def test_bias_residual_kernel(cuda):
    rng = np.random.default_rng(5)
    x, r = (rng.standard_normal((4, 9, 100)).astype(np.float32) for _ in range(2))
    b = rng.standard_normal(100).astype(np.float32)
    g = rng.standard_normal((4, 9, 100)).astype(np.float32)
    X, Bb, R = (mg.tensor(a, requires_grad=True, device="cuda") for a in (x, b, r))
    out = kernels.bias_residual(X, Bb, R)
    (out * mg.tensor(g, device="cuda")).sum().backward()
    np.testing.assert_allclose(cuda.asnumpy(out.data), x + b + r, **GPU_TOL)
    np.testing.assert_allclose(cuda.asnumpy(Bb.grad), g.sum(axis=(0, 1)), **GPU_TOL)
    np.testing.assert_allclose(cuda.asnumpy(X.grad), g, **GPU_TOL)


def test_gpt2_step_fused_equals_composite(cuda, monkeypatch):
    from gpt2 import GPT2, GPT2Config
    rng = np.random.default_rng(6)
    x = rng.integers(0, 300, (2, 70))
    y = rng.integers(0, 300, (2, 70))

    def run():
        mg.manual_seed(0)
        model = GPT2(GPT2Config(vocab_size=300, n_ctx=128, n_layer=2, n_head=2, n_embd=128, dropout=0.0)).to("cuda")
        _, loss = model(cuda.asarray(x), cuda.asarray(y))
        loss.backward()
        return [loss.data] + [p.grad for _, p in sorted(model.named_parameters())]

    _close(*_fused_and_plain(monkeypatch, run), tol=dict(rtol=1e-3, atol=1e-5))
