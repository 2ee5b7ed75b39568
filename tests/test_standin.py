"""The strict CuPy stand-in (minigrad/standin.py) and the CuPy defects it caught.

These run on the stand-in whatever `--backend` says: they are about the stand-in itself and about
code that used to mix NumPy into CuPy work (where, masked_fill, comparisons), or was not
deterministic there (the embedding's backward through atomics)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from minigrad import backend, standin
from minigrad.ops import segment_sum

ROOT = Path(__file__).resolve().parents[1]
S = "standin"


# ---------------------------------------------------------------- the stand-in behaves as CuPy
def test_implicit_conversion_to_numpy_is_refused():
    a = standin.arange(6, dtype=np.float32).reshape(2, 3)
    host = np.ones((2, 3), dtype=np.float32)
    for implicit in (lambda: np.asarray(a), lambda: np.array(a), lambda: a.__array__(),
                     lambda: a + host, lambda: host + a, lambda: a * host, lambda: standin.where(host > 0, a, a),
                     lambda: standin.exp(host), lambda: np.exp(host) + a, lambda: float(a),
                     lambda: int(a[0]), lambda: standin.concatenate([a, host])):
        with pytest.raises(TypeError):
            implicit()


def test_explicit_transfers_and_scalars_work():
    a = standin.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))  # host to "device"
    assert isinstance(a, standin.ndarray)
    np.testing.assert_array_equal(a.get(), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(standin.asnumpy(a), a.get())
    s = a.sum()
    assert isinstance(s, standin.ndarray) and s.ndim == 0  # CuPy's reductions stay on the device
    assert float(s) == 15.0 and a.max().item() == 5.0 and int(a[1, 2]) == 5
    assert isinstance(np.exp(a), standin.ndarray)  # NumPy's ufuncs dispatch to the device (NEP 13)
    assert isinstance(np.concatenate([a, a]), standin.ndarray)  # and functions (NEP 18)
    a[:] = np.zeros((2, 3), dtype=np.float32)  # CuPy's one implicit copy in
    assert a.sum().item() == 0.0
    assert a[np.array([1, 0])].shape == (2, 3)  # NumPy index arrays are copied in, as CuPy does


def test_views_share_one_base_object():
    # the autograd engine tells memory apart by the identity of `.base`, as with NumPy and CuPy
    a = standin.zeros((4, 3), dtype=np.float32)
    v1, v2 = a.reshape(12), a.T
    assert a.base is None and v1.base is a and v2.base is a
    assert v1.reshape(3, 4).base is a


def test_tensors_on_the_standin():
    x = mg.tensor([[1.0, 2.0], [3.0, 4.0]], device=S, requires_grad=True)
    assert x.device == S and isinstance(x.data, standin.ndarray)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.get(), [[2.0, 4.0], [6.0, 8.0]])
    np.testing.assert_array_equal(x.to("cpu").data, x.numpy())
    assert mg.randn(2, 3, device=S).data.dtype == np.float32


@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="CuPy is not installed")
def test_every_name_of_the_namespace_is_one_cupy_has():
    import cupy
    import cupyx
    missing = [n for n in standin.UFUNCS + standin.FUNCTIONS + standin.CREATION + standin.DTYPES
               + ("ndarray", "asarray", "array", "ascontiguousarray", "asnumpy", "get_array_module", "argsort")
               if not hasattr(cupy, n)]
    assert not missing, f"the stand-in offers what CuPy does not: {missing}"
    assert hasattr(cupyx, "scatter_add") and hasattr(cupy.linalg, "norm")
    gen = cupy.random.Generator
    assert all(hasattr(gen, m) for m in ("random", "standard_normal", "uniform", "integers"))


# ---------------------------------------------------------------- defects the stand-in caught
MASK = np.array([[True, False, True], [False, True, True]])


@pytest.mark.parametrize("op", ["where", "where_scalar", "masked_fill", "compare"])
def test_a_numpy_condition_on_a_device_tensor(op):
    """where/masked_fill/comparisons used to hand CuPy a NumPy condition: a TypeError on a GPU."""
    def run(device):
        mg.manual_seed(0)
        a = mg.randn(2, 3, device=device, requires_grad=True)
        b = mg.randn(3, device=device, requires_grad=True)
        if op == "where":
            y = mg.where(MASK, a, b)
        elif op == "where_scalar":
            y = mg.where(MASK, a, 0.5)
        elif op == "masked_fill":
            y = a.masked_fill(MASK, -1e9)
        else:
            y = mg.where(a > np.zeros((2, 3), np.float32), a, b)
        y.sum().backward()
        return y.numpy(), a.grad if a.grad is None else backend.to_device(a.grad, "cpu")

    (y_cpu, g_cpu), (y_dev, g_dev) = run("cpu"), run(S)
    np.testing.assert_array_equal(y_dev, y_cpu)
    np.testing.assert_array_equal(g_dev, g_cpu)


def test_embedding_backward_is_deterministic_and_right_on_the_standin():
    """The gradient of a table lookup used cupyx.scatter_add: atomics add repeated ids in no fixed
    order (the stand-in's scatter_add shuffles them likewise). The segment sum fixes the order."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, size=(8, 64))  # 512 lookups of 5 rows: many repeats
    g = (rng.standard_normal((8, 64, 16)) * np.exp(rng.uniform(-8, 8, (8, 64, 1)))).astype(np.float32)

    def grad(device):
        w = mg.zeros(7, 16, device=device, requires_grad=True)
        F.embedding(backend.to_device(ids, device), w).backward(backend.to_device(g, device))
        return backend.to_device(w.grad, "cpu")

    first, second = grad(S), grad(S)
    np.testing.assert_array_equal(first, second)  # bit for bit
    ref = np.zeros((7, 16), np.float64)
    np.add.at(ref, ids.reshape(-1), g.reshape(-1, 16).astype(np.float64))
    np.testing.assert_allclose(first, ref, rtol=1e-5, atol=1e-5 * np.abs(g).max())
    np.testing.assert_allclose(grad("cpu"), ref, rtol=1e-5, atol=1e-5 * np.abs(g).max())


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000])
def test_segment_sum_scan_equals_reduceat(n):
    rng = np.random.default_rng(n)
    ids = rng.integers(0, max(n // 3, 1), size=n)
    rows = rng.standard_normal((n, 3))
    u_np, s_np = segment_sum(np, rows, ids)
    u_st, s_st = segment_sum(standin, standin.asarray(rows), standin.asarray(ids))
    np.testing.assert_array_equal(u_st.get(), u_np)
    np.testing.assert_allclose(s_st.get(), s_np, rtol=1e-12, atol=1e-12)


def test_dropout_resumes_exactly_on_the_standin():
    """Only the CPU generator's state was saved, so on a device the masks after a resume were
    those of a fresh seed. Dropout now depends on (seed, counter) alone, both saved."""
    x = mg.ones(4, 256, device=S)
    mg.manual_seed(3)
    F.dropout(x, 0.5)
    state = mg.get_rng_state()
    expected = [F.dropout(x, 0.5).numpy() for _ in range(3)]
    mg.manual_seed(99)
    F.dropout(x, 0.5)
    mg.set_rng_state(state)
    got = [F.dropout(x, 0.5).numpy() for _ in range(3)]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)
    assert not np.array_equal(expected[0], expected[1])


def test_pretrain_runs_on_the_standin(tmp_path):
    from files.hub import cache_dir
    if not (cache_dir() / "the-verdict.txt").is_file():
        pytest.skip("the-verdict.txt is not in the data cache")
    r = subprocess.run([sys.executable, "-m", "tasks.pretrain", "--backend", "standin", "--n-layer", "2",
                        "--n-head", "2", "--n-embd", "32", "--context", "32", "--max-steps", "3",
                        "--no-progress", "--out", str(tmp_path / "run")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on standin" in r.stdout and "Traceback" not in r.stderr


# ---------------------------------------------------------------- counting what CuPy would launch
def test_out_arrays_come_back_as_themselves():
    a, b = standin.ones((4, 3), dtype=np.float32), standin.ones((3, 5), dtype=np.float32)
    buf = standin.zeros((8, 5), dtype=np.float32)[2:6]  # a view, as the flat gradient buffer's are
    assert standin.matmul(a, b, out=buf) is buf and float(buf.sum()) == 60.0
    assert standin.exp(a, out=a) is a
    assert a.sum(axis=0, out=standin.empty(3, dtype=np.float32)).shape == (3,)


def test_counts_follow_cupy():
    from minigrad import launchcount
    host = np.arange(12, dtype=np.float32).reshape(4, 3)
    with launchcount.counting() as c:
        a = standin.asarray(host)                 # a copy in
        b = a + 1                                 # one elementwise kernel
        b *= a                                    # one, in place
        s = b.sum(axis=0)                         # one reduction
        t = a.T.reshape(12)                       # a transpose is a view; this reshape must copy
        _ = a @ b.T                               # one cuBLAS call (a transposed operand is fine)
        _ = standin.matmul(a[:, :2], b[:2])       # a column slice is not: a copy first
        z = standin.zeros((3,), dtype=np.float32)  # a memset
        picked = a[np.array([0, 2])]              # a NumPy index array copied in, then a gather
        total = float(s.sum())                    # a reduction, then the host reads it: a sync
        _ = a[1:3]                                # a view: nothing
    assert (c.by_kind["elementwise"], c.by_kind["reduction"], c.by_kind["blas"], c.by_kind["memset"]) == (5, 2, 2, 1)
    assert (c.launches, c.syncs, c.h2d) == (10, 1, 2)
    assert total == float(((host + 1) * host).sum()) and picked.shape == (2, 3) and t.shape == (12,)
    with launchcount.counting() as nothing:
        pass
    assert nothing.launches == 0 and z.shape == (3,)


def test_kernels_run_and_count_on_the_standin():
    """The fused kernels take stand-in arrays: NumPy does the work, and each launch counts."""
    from minigrad import kernels, launchcount
    x = standin.asarray(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32))
    with launchcount.counting() as c:
        y = kernels.fused.gelu.forward(x)
    assert c.by_name["gelu_forward"] == 1 and c.launches == 1 and c.syncs == 0
    assert isinstance(y, standin.ndarray) and y.dtype == np.float32
    with pytest.raises(ValueError, match="not contiguous"):
        kernels.fused.gelu.forward(x.T)

