"""The CUDA kernels: they compile (NVRTC, no GPU needed), a broken source fails the check, the
dispatch leaves NumPy alone, and on a GPU each kernel equals the composite op it replaces, in its
float32 form and in its float16 form (against float32 math on the same float16 values).

The kernel tests use the `backend` fixture and run on "cuda" (`pytest --backend cupy`), and on
the stand-in (`pytest --backend standin`), where NumPy does each kernel's work
(minigrad/kernels/on_standin.py): there they check the launchers and Functions, shapes, dtypes
and the engine's offers, not the CUDA code (tests/test_kernels_emulated.py runs that on the CPU).
Tolerances: float32, expf and summation order differ from NumPy's, so 1e-5 absolute plus 1e-4
relative; float16, the results' rounding to float16.
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
from minigrad.kernels.nvrtc import nvrtc_available
from minigrad.kernels._loader import kernel_names, sources

NVRTC_MISSING = nvrtc_available()
REQUIRED = {"layernorm_forward", "layernorm_backward_dx", "layernorm_backward_dwdb", "gelu_forward", "gelu_backward",
            "attention_forward", "attention_backward_dkdv", "attention_backward_dq", "crossentropy_forward",
            "crossentropy_backward", "embedding_keys", "embedding_backward", "adamw_flat", "adamw_multi",
            "bias_residual_forward", "bias_grad", "unscale_grads"}
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


# ---------------------------------------------------------------- kernels against references (GPU, stand-in)
@pytest.fixture
def dev(backend):
    if backend == "cpu":
        pytest.skip("NumPy never takes the fused path")
    return backend


def _fused_and_plain(monkeypatch, fn):
    """fn() run with the kernels and with MINIGRAD_FUSED=0; results as NumPy arrays."""
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv("MINIGRAD_FUSED", flag)
        out.append([mg.backend.to_device(a, "cpu") for a in fn()])
    monkeypatch.delenv("MINIGRAD_FUSED")
    return out


def _grads(fn, arrays, g, device, dtype=np.float32):
    """fn's output and the gradients of its inputs (as float32 NumPy arrays) for the upstream
    gradient g, on `device` in `dtype`."""
    ts = [mg.tensor(a, requires_grad=True, device=device, dtype=dtype) for a in arrays]
    out = fn(*ts)
    (out * mg.tensor(g, device=device, dtype=out.dtype)).sum().backward()
    return [mg.backend.to_device(a, "cpu").astype(np.float32) for a in [out.data] + [t.grad for t in ts]]


def _close(fused, plain, tol=GPU_TOL):
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, **tol)


def _half(*arrays):
    """float16's values, as float32 arrays: the float32 reference sees exactly what float16 holds."""
    return [a.astype(np.float16).astype(np.float32) for a in arrays]


def _fp16_vs_fp32(fn, arrays, g, device, scale=1.0):
    """The fused float16 form against the float32 one on the same values, to float16's rounding."""
    arrays = _half(*arrays)
    _close(_grads(fn, arrays, g, device, np.float16), _grads(fn, arrays, g, device),
           dict(rtol=1e-2, atol=1e-2 * scale))


@pytest.mark.parametrize("shape", [(3, 7, 768), (5, 33), (1, 1600)])
def test_layernorm_and_gelu_kernels(dev, monkeypatch, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32) * 2
    w, b = rng.standard_normal(shape[-1:]).astype(np.float32), rng.standard_normal(shape[-1:]).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    for fn, arrays in ((F.layer_norm, (x, w, b)), (F.gelu, (x,)), (lambda x, b: F.gelu(x, bias=b), (x, b))):
        _close(*_fused_and_plain(monkeypatch, lambda: _grads(fn, arrays, g, dev)))
        _fp16_vs_fp32(fn, arrays, g, dev, scale=max(1.0, np.prod(shape[:-1]) / 8))


@pytest.mark.parametrize("B,H,T,S,D,causal", [(2, 3, 100, 100, 64, True), (1, 2, 1, 1, 64, True),
                                              (2, 2, 37, 129, 64, True), (1, 3, 65, 65, 16, True),
                                              (2, 1, 70, 90, 64, False), (1, 12, 1024, 1024, 64, True)])
def test_attention_kernels(dev, monkeypatch, B, H, T, S, D, causal):
    rng = np.random.default_rng(1)
    xp = mg.backend.xp_for(dev)
    q, k, v = (rng.standard_normal((B, H, n, D)).astype(np.float32) for n in (T, S, S))
    g = rng.standard_normal((B, H, T, D)).astype(np.float32)
    assert kernels.attention_fits(xp.asarray(q), xp.asarray(k), xp.asarray(v), causal, None)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    fused, plain = _fused_and_plain(monkeypatch, lambda: _grads(fn, (q, k, v), g, dev))
    _close(fused, plain)
    if T * S <= 100 * 100:  # with dropout: the mask drawn inside the kernels is the composite op's
        drop = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=0.3)  # noqa: E731
        _close(*_fused_and_plain(monkeypatch, lambda: _seeded(7, lambda: _grads(drop, (q, k, v), g, dev))))
    # and the kernel follows its NumPy twin (same tiles)
    o, _ = twins.attention_forward(q.reshape(-1, T, D), k.reshape(-1, S, D), v.reshape(-1, S, D), D ** -0.5, causal)
    np.testing.assert_allclose(fused[0], o.reshape(q.shape), **GPU_TOL)
    _fp16_vs_fp32(fn, (q, k, v), g, dev)  # float16: cast around the float32 kernels


def _seeded(seed, fn):
    """fn() after manual_seed(seed): the same dropout masks on every call."""
    mg.manual_seed(seed)
    return fn()


@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("B,T,H,D", [(2, 70, 3, 64), (1, 1, 2, 16), (2, 129, 12, 64), (1, 40, 2, 48)])
def test_self_attention_from_the_packed_projection(dev, monkeypatch, B, T, H, D, p):
    """float32 on the CUDA-core kernels, float16 on the tensor cores (head size 48: the CUDA-core
    kernels' float16 has no form, so the composite op), each against the composite op in float32
    on the same values, with the same dropout mask; the kernels read qkv in place."""
    rng = np.random.default_rng(7)
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(np.float32)
    bias = rng.standard_normal(3 * H * D).astype(np.float32)
    g = rng.standard_normal((B, T, H * D)).astype(np.float32)
    fn = lambda qkv, bias: F.causal_self_attention(qkv, H, dropout_p=p, bias=bias)  # noqa: E731
    xp = mg.backend.xp_for(dev)
    for dtype, fused_fits in ((np.float32, True), (np.float16, D in (16, 32, 64, 128))):
        assert kernels.self_attention_fits(xp.asarray(qkv, dtype=dtype), H, xp.asarray(bias, dtype=dtype)) == fused_fits
    fused, plain = _fused_and_plain(monkeypatch, lambda: _seeded(3, lambda: _grads(fn, (qkv, bias), g, dev)))
    _close(fused, plain, dict(rtol=1e-4, atol=1e-4))  # the bias's gradient sums B * T rows
    qkv, bias = _half(qkv, bias)
    half = _seeded(3, lambda: _grads(fn, (qkv, bias), g, dev, np.float16))
    full = _seeded(3, lambda: _grads(fn, (qkv, bias), g, dev))
    _close(half, full, dict(rtol=2e-2, atol=2e-2 * max(1.0, B * T / 8)))


def test_self_attention_under_tf32_runs_the_tensor_core_kernels(dev, monkeypatch):
    """float32 under TF32: the float16 kernels, qkv + bias cast in one pass, the results cast back."""
    rng = np.random.default_rng(8)
    B, T, H, D = 2, 50, 2, 64
    qkv = rng.standard_normal((B, T, 3 * H * D)).astype(np.float32)
    bias = rng.standard_normal(3 * H * D).astype(np.float32)
    g = rng.standard_normal((B, T, H * D)).astype(np.float32)

    def run():
        X, Bb = (mg.tensor(a, requires_grad=True, device=dev) for a in (qkv, bias))
        mg.manual_seed(3)
        y = F.causal_self_attention(X, H, dropout_p=0.1, bias=Bb)
        assert y._ctx.fn is kernels.FusedSelfAttention
        flash = y._ctx.flash  # which kernels ran (the graph is cut after the backward)
        (y * mg.tensor(g, device=dev)).sum().backward()
        assert y.dtype == X.grad.dtype == Bb.grad.dtype == np.float32
        return flash, [mg.backend.to_device(a, "cpu") for a in (y.data, X.grad, Bb.grad)]
    monkeypatch.setattr(mg.backend, "_tf32", False)  # restored after the test, whatever happens
    mg.backend.set_tf32(True, dev)
    flash, tf32 = run()
    assert flash
    mg.backend.set_tf32(False, dev)
    flash, full = run()
    assert not flash
    _close(tf32, full, dict(rtol=2e-2, atol=2e-2 * B * T / 8))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("N,V", [(37, 50257), (5, 300), (3, 1)])
def test_crossentropy_kernel(dev, monkeypatch, reduction, N, V):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((N, V)) * 4).astype(np.float32)
    t = rng.integers(0, V, N)
    t[::3] = -100
    t[1] = V - 1
    g = rng.standard_normal(N).astype(np.float32) if reduction == "none" else np.float32(0.7)

    def run(targets, dtype=np.float32):
        L = mg.tensor(x, requires_grad=True, device=dev, dtype=dtype)
        loss = F.cross_entropy(L, targets, reduction=reduction)
        assert loss.dtype == np.float32  # float16 logits too: float32 math, a float32 loss
        loss.backward(mg.tensor(g, device=dev))
        return [loss.data, L.grad]

    _close(*_fused_and_plain(monkeypatch, lambda: run(t)))  # targets from the host
    _close(*_fused_and_plain(monkeypatch, lambda: run(mg.tensor(t, device=dev))))  # already on the device
    x = _half(x)[0]
    half = [mg.backend.to_device(a, "cpu").astype(np.float32) for a in run(t, np.float16)]
    _close(half, [mg.backend.to_device(a, "cpu") for a in run(t)], dict(rtol=1e-2, atol=1e-3))
    bad = np.full(N, V)
    with pytest.raises(IndexError):  # from the host: checked there
        F.cross_entropy(mg.tensor(x, device=dev), bad)
    # already on the device: not read back (no host sync), the loss says so instead
    loss = F.cross_entropy(mg.tensor(x, device=dev), mg.tensor(bad, device=dev), reduction=reduction)
    assert np.isnan(mg.backend.to_device(loss.data, "cpu")).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_embedding_backward_kernel_is_exact_and_deterministic(dev, dtype):
    rng = np.random.default_rng(3)
    xp = mg.backend.xp_for(dev)
    n, C, N = 1000, 768, 8 * 1024
    ids = rng.integers(0, 50, N)  # many repeats: the case atomics make nondeterministic
    rows = rng.standard_normal((N, C)).astype(dtype)
    a = kernels.fused.embedding.backward(xp.asarray(ids), xp.asarray(rows), n)
    b = kernels.fused.embedding.backward(xp.asarray(ids), xp.asarray(rows), n)
    assert a.dtype == dtype and bool((a == b).all())
    want = twins.embedding_backward(ids, rows.astype(np.float32), n)
    np.testing.assert_allclose(mg.backend.to_device(a, "cpu").astype(np.float32), want,
                               **(GPU_TOL if dtype == np.float32 else dict(rtol=1e-2, atol=0.05)))


def test_adamw_kernels_equal_the_optimizer(dev, monkeypatch):
    rng = np.random.default_rng(4)
    xp = mg.backend.xp_for(dev)
    sizes = [(7, 5), (300,), (1,), (64, 33)]
    ps = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    ref = [mg.tensor(p.copy(), requires_grad=True) for p in ps]
    groups = lambda ts: [{"params": ts[:2], "weight_decay": 0.1}, {"params": ts[2:], "weight_decay": 0.0}]  # noqa: E731
    opt = mg.optim.AdamW(groups(ref), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    dev_ts = [mg.tensor(p.copy(), requires_grad=True, device=dev) for p in ps]
    dev_opt = mg.optim.AdamW(groups(dev_ts), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)  # one launch a step
    flat_p = xp.asarray(ps[1])
    flat_m, flat_v = xp.zeros_like(flat_p), xp.zeros_like(flat_p)
    for step in range(1, 4):
        gs = [rng.standard_normal(s).astype(np.float32) for s in sizes]
        for t, d, g in zip(ref, dev_ts, gs):
            t.grad, d.grad = g, xp.asarray(g)
        opt.step()
        dev_opt.step()
        kernels.adamw_update(flat_p, xp.asarray(gs[1]), flat_m, flat_v, 1e-3, (0.9, 0.95), 1e-8, 0.1, step)
    for t, d in zip(ref, dev_ts):
        np.testing.assert_allclose(mg.backend.to_device(d.data, "cpu"), t.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mg.backend.to_device(flat_p, "cpu"), ref[1].data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("bias_shape", [(100,), (9, 100)])  # a Linear's bias; positions (T, C)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bias_residual_kernel(dev, monkeypatch, dtype, bias_shape, residual, p):
    """residual + dropout(x + bias) in one kernel each way, against the composite ops (F.dropout's
    mask: the same bits) on the same values."""
    rng = np.random.default_rng(5)
    x, r, g = (rng.standard_normal((4, 9, 100)).astype(dtype) for _ in range(3))
    b = rng.standard_normal(bias_shape).astype(dtype)

    def run():
        X, Bb, R = (mg.tensor(a, requires_grad=True, device=dev) for a in (x, b, r))
        mg.manual_seed(2)
        out = F.bias_residual(X, Bb, R if residual else None, dropout_p=p)
        assert (out._ctx.fn is kernels.FusedBiasResidual) == kernels.enabled()
        assert mg.get_rng_state()["dropout_calls"] == (p > 0)
        (out * mg.tensor(g, device=dev)).sum().backward()
        return [mg.backend.to_device(a, "cpu").astype(np.float32) for a in
                (out.data, X.grad, Bb.grad) + ((R.grad,) if residual else ())]
    fused, plain = _fused_and_plain(monkeypatch, run)
    tol = GPU_TOL if dtype == np.float32 else dict(rtol=1e-2, atol=0.05)
    _close(fused, plain, tol)
    if p:  # the dropped elements: exactly zero in both, and where F.dropout drops them
        mg.manual_seed(2)
        keep = mg.backend.dropout_keep(np, x.shape, p)
        assert ((fused[1] == 0) == ~keep).all() and ((plain[1] == 0) == ~keep).all()


def _gpt2_step(dev, dtype="float32", dropout=0.0):
    """A small GPT-2's loss, its gradients (float32) and its weights after one step of tasks.training's
    Trainer on `dev` (float16: mixed precision, the loss scale 1024)."""
    from gpt2 import GPT2, GPT2Config
    from minigrad.amp import LossScaler, MixedPrecision
    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 300, (2, 70)), rng.integers(0, 300, (2, 70))
    y[0, 5] = -100
    mg.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=300, n_ctx=128, n_layer=2, n_head=2, n_embd=128, dropout=dropout)).to(dev)
    opt = mg.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-4)
    amp = MixedPrecision(model.parameters(), LossScaler(1024.0), flat=opt.flat) if dtype == "float16" else None
    if amp:
        amp.half()
    _, loss = model(x, y)
    (loss * (1024.0 if amp else 1.0)).backward()
    assert amp is None or amp.restore()
    grads = [p.grad.copy() for _, p in sorted(model.named_parameters())]
    opt.step()
    return [loss.data] + grads + [p.data for _, p in sorted(model.named_parameters())]


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gpt2_step_fused_equals_composite(dev, monkeypatch, dropout):
    """With dropout too: every mask drawn inside a kernel is the composite op's."""
    _close(*_fused_and_plain(monkeypatch, lambda: _gpt2_step(dev, dropout=dropout)), tol=dict(rtol=1e-3, atol=1e-5))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gpt2_float16_step_follows_float32(dev, dropout):
    """Mixed precision through every float16 kernel (attention on the tensor-core kernels), the
    flat float16 weights and the unscaling kernel: the loss and the gradients are float32's to
    float16's rounding, with the same dropout masks."""
    half, full = _gpt2_step(dev, "float16", dropout), _gpt2_step(dev, dropout=dropout)
    n = (len(full) - 1) // 2 + 1  # the loss and the gradients; not the weights after Adam's step
    for a, b in zip(half[:n], full[:n]):
        a, b = mg.backend.to_device(a, "cpu"), mg.backend.to_device(b, "cpu")
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.02 * np.abs(b).max() + 1e-6)
