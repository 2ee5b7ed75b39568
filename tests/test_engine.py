"""The autograd machinery: accumulation, graph lifetime, grad modes, frozen inputs, dtypes, errors."""
from __future__ import annotations

import gc
import sys
import weakref

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
import minigrad.nn as nn
from minigrad import backend as mg_backend
from minigrad.ops import LinearFn


def arr(t) -> np.ndarray:
    """A tensor's or a raw (NumPy or CuPy) gradient array's values on the CPU."""
    assert t is not None
    return t.numpy() if isinstance(t, mg.Tensor) else mg_backend.to_device(t, "cpu")


# ---------------------------------------------------------------- accumulation
def test_grads_accumulate_until_zeroed(backend):
    x = mg.tensor([1.0, 2.0, 3.0], requires_grad=True, device=backend)
    (x * x).sum().backward()
    np.testing.assert_allclose(arr(x.grad), [2, 4, 6])
    (x * 3.0).sum().backward()  # a second graph adds to what is there
    np.testing.assert_allclose(arr(x.grad), [5, 7, 9])
    x.zero_grad()
    assert x.grad is None
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(arr(x.grad), [3, 3, 3])


def test_tensor_used_twice_in_one_graph(backend):
    x = mg.tensor([1.0, -2.0], requires_grad=True, device=backend)
    (x * x * x + x).sum().backward()  # d/dx (x^3 + x) = 3x^2 + 1
    np.testing.assert_allclose(arr(x.grad), [4, 13])


def test_leaf_grads_never_alias(backend):
    """One gradient array reaching two leaves (directly, or as a reshape/transpose view) must be
    copied: accumulation and clip_grad_norm_ update .grad in place."""
    x = mg.ones(3, 4, requires_grad=True, device=backend)
    w = mg.ones(12, requires_grad=True, device=backend)
    v = mg.ones(4, 3, requires_grad=True, device=backend)
    u = mg.ones(3, 4, requires_grad=True, device=backend)
    for _ in range(2):
        (x + w.reshape(3, 4) + v.T + u).sum().backward()
    for t in (x, w, v, u):
        np.testing.assert_array_equal(arr(t.grad), np.full(t.shape, 2.0))
    x.grad *= 10  # in place on one leaf's gradient leaves the others alone
    for t in (w, v, u):
        np.testing.assert_array_equal(arr(t.grad), np.full(t.shape, 2.0))


def test_caller_gradient_is_not_kept_by_reference(backend):
    x = mg.ones(2, 3, requires_grad=True, device=backend)
    g = mg.ones(3, 2, device=backend)
    x.T.backward(g)
    x.grad *= 5
    np.testing.assert_array_equal(arr(g), np.ones((3, 2)))


def test_summing_gradients_in_place_never_writes_shared_memory(backend):
    """A tensor used by several ops gets their gradients summed, in place when the engine may:
    never into an array that another pending gradient, a leaf or the caller also sees."""
    x = mg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True, device=backend)
    y = x * 1.0                          # a non-leaf that three ops use
    a = y + y                            # Add.backward hands the same array to both inputs
    b = y.reshape(4).reshape(2, 2)       # a view of the upstream gradient
    c = y * 2.0                          # a fresh array from Mul.backward
    g = mg.tensor([[1.0, 10.0], [100.0, 1000.0]], device=backend)
    (a + b + c).backward(g)
    # d/dy = 2 (from y + y) + 1 (view) + 2 (y * 2) = 5
    np.testing.assert_array_equal(arr(x.grad), 5 * arr(g))
    np.testing.assert_array_equal(arr(g), [[1.0, 10.0], [100.0, 1000.0]])


def test_gradients_added_into_the_sum_so_far_equal_separate_adds(backend):
    """An op offered its input's gradient so far adds its own into it (autograd.GradLedger's
    grad_sum): a slice's backward into the sum of the other branches, and on a device a fused
    LayerNorm's into the residual stream's. The total equals the branches' gradients added apart."""
    rng = np.random.default_rng(0)
    xv, wv, bv = (rng.standard_normal(s).astype(np.float32) for s in ((3, 8), (8,), (8,)))
    gv = rng.standard_normal((3, 8)).astype(np.float32)
    # a branch with a fresh gradient (h * 1.5) gives the later ones a sum they may add into
    branches = [lambda h, w, b: h * 1.5, lambda h, w, b: F.layer_norm(h, w, b), lambda h, w, b: h[:, ::-1] * 3.0,
                lambda h, w, b: F.layer_norm(h[::-1], w, b), lambda h, w, b: h]

    def grad(chosen):
        x = mg.tensor(xv, requires_grad=True, device=backend)
        w, b = (mg.tensor(a, device=backend) for a in (wv, bv))
        h = x * 2.0  # a non-leaf: its gradient is a fresh array the engine may add into
        out = chosen[0](h, w, b)
        for branch in chosen[1:]:
            out = out + branch(h, w, b)
        (out * mg.tensor(gv, device=backend)).sum().backward()
        return arr(x.grad)

    apart = sum(grad([br]) for br in branches)
    np.testing.assert_allclose(grad(branches), apart, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad(branches[::-1]), apart, rtol=1e-5, atol=1e-5)


def test_caller_gradient_arriving_first_is_never_summed_into(backend):
    """A residual connection hands the caller's gradient straight to y; the branch's gradient
    arrives later and must be added into a new array, not into the caller's."""
    x = mg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True, device=backend)
    y = x * 1.0
    out = y + y * 2.0                    # Add.backward passes the caller's array to y as it is
    g = mg.tensor([[1.0, 10.0], [100.0, 1000.0]], device=backend)
    out.backward(g)
    np.testing.assert_array_equal(arr(g), [[1.0, 10.0], [100.0, 1000.0]])
    np.testing.assert_array_equal(arr(x.grad), 3 * arr(g))


def test_tied_weight_gets_both_gradients(backend):
    """An embedding table read again as the output head (GPT-2's weight tying): its gradient is
    the sum of the lookup's and the head's, added in place into the head's matmul output."""
    w = mg.randn(5, 3, requires_grad=True, device=backend, dtype=np.float64)
    idx = mg_backend.to_device(np.array([[1, 4, 1]]), backend)
    logits = F.linear(F.embedding(idx, w), w, transposed=True)       # (1, 3, 5)
    (logits * logits).sum().backward()
    w_np = arr(w)
    h = w_np[[1, 4, 1]]                                                # (3, 3)
    dlogits = 2 * h @ w_np.T                                           # (3, 5)
    expect = dlogits.T @ h                                             # the head's part
    np.add.at(expect, [1, 4, 1], dlogits @ w_np)                      # the lookup's part
    np.testing.assert_allclose(arr(w.grad), expect, rtol=1e-12)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 3), (3,)), ((2, 3), (1, 3)), ((2, 1), (1, 3)),
                                             ((4, 2, 3), (2, 1)), ((), (2, 2)), ((1, 1, 3), (2, 1, 3))])
def test_broadcasting_is_undone(backend, a_shape, b_shape):
    a = mg.ones(*a_shape, requires_grad=True, device=backend)
    b = mg.ones(*b_shape, requires_grad=True, device=backend)
    out = a * b
    out.sum().backward()
    assert a.grad.shape == a_shape and b.grad.shape == b_shape
    # each element's gradient counts how many output elements it was stretched over
    np.testing.assert_array_equal(arr(a.grad), np.full(a_shape, out.size / max(a.size, 1)))
    np.testing.assert_array_equal(arr(b.grad), np.full(b_shape, out.size / max(b.size, 1)))


def test_max_shares_gradient_among_ties(backend):
    x = mg.tensor([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]], requires_grad=True, device=backend)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(arr(x.grad), [[0, 0.5, 0.5], [1, 0, 0]])


def test_causal_attention_with_a_cache_matches_the_full_sequence(backend):
    """Causal with T < S: the T queries are the last T positions, so their outputs equal the
    last T rows of full causal attention over all S positions (what KV-cache decoding relies on)."""
    q, k, v = (mg.randn(2, 3, 5, 4, device=backend) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True).numpy()
    cached = F.scaled_dot_product_attention(q[:, :, 3:], k, v, is_causal=True).numpy()
    np.testing.assert_allclose(cached, full[:, :, 3:], rtol=1e-5, atol=1e-6)
    # and the first query of full causal attention sees only the first key
    np.testing.assert_allclose(full[:, :, 0], v.numpy()[:, :, 0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- backward entry and graph lifetime
def test_backward_on_non_scalar_needs_a_gradient(backend):
    y = mg.ones(2, 3, requires_grad=True, device=backend) * 2.0
    with pytest.raises(RuntimeError, match=r"gradient argument.*\(2, 3\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"gradient of shape \(3,\)"):
        y.backward(mg.ones(3, device=backend))


def test_backward_without_graph_raises(backend):
    with pytest.raises(RuntimeError, match="does not require grad"):
        mg.ones(3, device=backend).sum().backward()


def test_long_chain_does_not_recurse(backend):
    x = mg.tensor([1.0], requires_grad=True, device=backend, dtype=np.float64)
    y = x
    for _ in range(2000):
        y = y * 1.0001
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # a recursive walk of 2,000 ops would need more than this
    try:
        y.sum().backward()
    finally:
        sys.setrecursionlimit(old)
    np.testing.assert_allclose(arr(x.grad), [1.0001 ** 2000], rtol=1e-10)


def test_saved_arrays_are_freed_after_backward(backend):
    x = mg.randn(50, 50, requires_grad=True, device=backend)
    h = x.tanh()  # saves its output for backward
    ref = weakref.ref(h.data)
    ctx = h._ctx  # held on purpose: backward must empty it, not just drop it
    loss = (h * 2.0).sum()
    del h
    gc.collect()
    assert ref() is not None, "the recorded graph should keep tanh's output alive until backward"
    loss.backward()
    gc.collect()
    assert ref() is None, "backward should release what the forward saved"
    assert ctx.saved == () and ctx.parents == ()


def test_retain_graph_keeps_it_and_second_backward_through_freed_graph_raises(backend):
    x = mg.tensor([1.0, 2.0], requires_grad=True, device=backend)
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(arr(x.grad), [4, 8])
    with pytest.raises(RuntimeError, match="already freed"):
        loss.backward()  # silently doing nothing here would lose the parameters' gradients
    np.testing.assert_allclose(arr(x.grad), [4, 8])


def test_no_grad_records_no_graph(backend):
    w = mg.randn(3, 3, requires_grad=True, device=backend)
    with mg.no_grad():
        assert not mg.is_grad_enabled()
        y = F.gelu(w @ w).sum()
        with mg.enable_grad():
            z = (w * 2.0).sum()
    assert mg.is_grad_enabled()
    assert not y.requires_grad and y._ctx is None
    assert z.requires_grad

    @mg.no_grad()
    def f(t):
        return t * 2.0

    assert not f(w).requires_grad and not f(w).requires_grad  # the decorator is reusable
    assert mg.is_grad_enabled()


def test_detach(backend):
    x = mg.randn(3, requires_grad=True, device=backend)
    d = (x * 2.0).detach()
    assert not d.requires_grad and d._ctx is None
    y = (x * d).sum()  # d is a constant here
    y.backward()
    np.testing.assert_allclose(arr(x.grad), arr(d), rtol=1e-6)


def test_requires_grad_(backend):
    x = mg.randn(3, device=backend)
    assert not (x * 2.0).requires_grad
    assert x.requires_grad_() is x and x.requires_grad
    (x * 2.0).sum().backward()
    np.testing.assert_allclose(arr(x.grad), [2, 2, 2])
    x.requires_grad_(False)
    assert not (x * 2.0).requires_grad
    with pytest.raises(TypeError, match="floating point"):
        mg.arange(3, device=backend).requires_grad_()


# ---------------------------------------------------------------- frozen inputs skip work
class CountingArray(np.ndarray):
    """An ndarray view that counts the matrix multiplies it takes part in."""
    count = 0

    def __matmul__(self, other):
        CountingArray.count += 1
        return np.matmul(np.asarray(self), np.asarray(other))

    def __rmatmul__(self, other):
        CountingArray.count += 1
        return np.matmul(np.asarray(other), np.asarray(self))


def test_frozen_weights_skip_their_gradient_matmuls(backend, monkeypatch):
    """Stack trainable -> frozen -> frozen -> trainable Linear layers, input without grad. Each
    layer's backward should do only the matmuls someone needs: no input-gradient matmul for the
    first layer, no weight-gradient matmul for the frozen ones."""
    layers = [nn.Linear(4, 4, device=backend) for _ in range(4)]
    layers[1].requires_grad_(False)
    layers[2].requires_grad_(False)
    calls = []  # (layer index, matmuls, which gradients came back)
    original = LinearFn.backward

    def counting_backward(ctx, g):
        CountingArray.count = 0
        if backend == "cpu":  # on CuPy only the returned gradients are checked
            ctx.saved = tuple(None if a is None else a.view(CountingArray) for a in ctx.saved)
            g = g.view(CountingArray)
        grads = original(ctx, g)
        calls.append((ctx.layer, CountingArray.count, tuple(x is not None for x in grads)))
        return tuple(None if x is None else np.asarray(x) if backend == "cpu" else x for x in grads)

    monkeypatch.setattr(LinearFn, "backward", staticmethod(counting_backward))
    h = mg.randn(2, 3, 4, device=backend)
    for i, layer in enumerate(layers):
        h = layer(h)
        h._ctx.layer = i
        if i in (1, 2):  # frozen weight: forward did not even keep the input for a weight grad
            assert h._ctx.saved[0] is None
    h.sum().backward()

    by_layer = {i: (n, got) for i, n, got in calls}
    assert sorted(by_layer) == [0, 1, 2, 3]
    assert by_layer[3][1] == (True, True, True)
    assert by_layer[2][1] == (True, False, False) and by_layer[1][1] == (True, False, False)
    assert by_layer[0][1] == (False, True, True)
    if backend == "cpu":
        assert [by_layer[i][0] for i in range(4)] == [1, 1, 1, 2]
    for i in (1, 2):
        assert layers[i].weight.grad is None and layers[i].bias.grad is None
    assert layers[0].weight.grad is not None and layers[3].weight.grad is not None


def test_all_frozen_below_records_nothing(backend, monkeypatch):
    """With all but the last layer frozen (and no grad on the input), the frozen part of the
    stack records no graph at all: only the last layer's backward runs."""
    layers = [nn.Linear(3, 3, device=backend) for _ in range(3)]
    for layer in layers[:-1]:
        layer.requires_grad_(False)
    calls = []
    original = LinearFn.backward
    monkeypatch.setattr(LinearFn, "backward",
                        staticmethod(lambda ctx, g: calls.append(ctx.needs_input_grad) or original(ctx, g)))
    h = mg.randn(2, 3, device=backend)
    for layer in layers:
        h = layer(h)
    h.sum().backward()
    assert calls == [(False, True, True)]


# ---------------------------------------------------------------- dtypes
def _f32(*shape, positive=False, backend="cpu"):
    t = mg.randn(*shape, device=backend)
    if positive:
        t = mg.Tensor(abs(t.data) + 0.5)
    return t.requires_grad_()


MASK = np.array([[True, False, True], [False, True, True]])
IDS = np.array([[0, 2, 2], [1, 0, 3]])

# name -> (builder of the float32 inputs, op)
OPS = {
    "add": (lambda b: [_f32(2, 3, backend=b), _f32(3, backend=b)], lambda a, c: a + c),
    "sub": (lambda b: [_f32(2, 3, backend=b), _f32(2, 1, backend=b)], lambda a, c: a - c),
    "mul": (lambda b: [_f32(2, 3, backend=b), _f32(3, backend=b)], lambda a, c: a * c),
    "div": (lambda b: [_f32(2, 3, backend=b), _f32(3, positive=True, backend=b)], lambda a, c: a / c),
    "neg": (lambda b: [_f32(2, 3, backend=b)], lambda a: -a),
    "pow": (lambda b: [_f32(2, 3, positive=True, backend=b)], lambda a: a ** 1.5),
    "exp": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.exp()),
    "log": (lambda b: [_f32(2, 3, positive=True, backend=b)], lambda a: a.log()),
    "tanh": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.tanh()),
    "sqrt": (lambda b: [_f32(2, 3, positive=True, backend=b)], lambda a: a.sqrt()),
    "relu": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.relu()),
    "where": (lambda b: [_f32(2, 3, backend=b), _f32(3, backend=b)], lambda a, c: mg.where(MASK, a, c)),
    "where_scalar": (lambda b: [_f32(2, 3, backend=b)], lambda a: mg.where(MASK, a, 0.5)),
    "masked_fill": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.masked_fill(MASK, -1e9)),
    "sum": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.sum(axis=1)),
    "mean": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.mean(axis=0, keepdims=True)),
    "max": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.max(axis=-1)),
    "matmul": (lambda b: [_f32(2, 2, 3, backend=b), _f32(3, 4, backend=b)], lambda a, c: a @ c),
    "matmul_vec": (lambda b: [_f32(3, backend=b), _f32(3, backend=b)], lambda a, c: a @ c),
    "reshape": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.reshape(3, 2)),
    "transpose": (lambda b: [_f32(2, 3, 4, backend=b)], lambda a: a.transpose(0, 2)),
    "permute": (lambda b: [_f32(2, 3, 4, backend=b)], lambda a: a.permute(2, 0, 1)),
    "T": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.T),
    "getitem_basic": (lambda b: [_f32(4, 3, backend=b)], lambda a: a[1:3, ::-1]),
    "getitem_ints": (lambda b: [_f32(4, 3, backend=b)], lambda a: a[np.array([0, 0, 3])]),
    "cat": (lambda b: [_f32(2, 3, backend=b), _f32(1, 3, backend=b)], lambda a, c: mg.cat([a, c])),
    "split": (lambda b: [_f32(5, 3, backend=b)], lambda a: mg.split(a, 2)[2]),
    "chunk": (lambda b: [_f32(5, 3, backend=b)], lambda a: mg.chunk(a, 2, axis=0)[0]),
    "stack": (lambda b: [_f32(2, 3, backend=b), _f32(2, 3, backend=b)], lambda a, c: mg.stack([a, c], 1)),
    "unsqueeze_squeeze": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.unsqueeze(0).squeeze(0)),
    "flatten": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.flatten()),
    "astype_roundtrip": (lambda b: [_f32(2, 3, backend=b)], lambda a: a.double().float()),
    "linear": (lambda b: [_f32(2, 3, 4, backend=b), _f32(4, 5, backend=b), _f32(5, backend=b)],
               lambda x, w, c: F.linear(x, w, c)),
    "linear_transposed": (lambda b: [_f32(2, 3, 4, backend=b), _f32(5, 4, backend=b), _f32(5, backend=b)],
                          lambda x, w, c: F.linear(x, w, c, transposed=True)),
    "linear_no_bias": (lambda b: [_f32(2, 4, backend=b), _f32(4, 5, backend=b)], lambda x, w: F.linear(x, w)),
    "embedding": (lambda b: [_f32(4, 3, backend=b)], lambda w: F.embedding(IDS, w)),
    "layer_norm": (lambda b: [_f32(2, 3, 4, backend=b), _f32(4, backend=b), _f32(4, backend=b)],
                   lambda x, w, c: F.layer_norm(x, w, c)),
    "gelu": (lambda b: [_f32(2, 3, backend=b)], lambda a: F.gelu(a)),
    "softmax": (lambda b: [_f32(2, 3, backend=b)], lambda a: F.softmax(a, axis=0)),
    "log_softmax": (lambda b: [_f32(2, 3, backend=b)], lambda a: F.log_softmax(a)),
    "cross_entropy_mean": (lambda b: [_f32(2, 3, backend=b)],
                           lambda a: F.cross_entropy(a, np.array([2, -100]))),
    "cross_entropy_sum": (lambda b: [_f32(2, 3, backend=b)],
                          lambda a: F.cross_entropy(a, np.array([2, 0]), reduction="sum")),
    "cross_entropy_none": (lambda b: [_f32(2, 3, backend=b)],
                           lambda a: F.cross_entropy(a, np.array([2, -100]), reduction="none")),
    "attention": (lambda b: [_f32(1, 2, 3, 4, backend=b), _f32(1, 2, 5, 4, backend=b), _f32(1, 2, 5, 4, backend=b)],
                  lambda q, k, v: F.scaled_dot_product_attention(
                      q, k, v, attn_mask=np.array([False, True, True, True, True]), scale=0.3)),
    "attention_dropout": (lambda b: [_f32(1, 2, 3, 4, backend=b)] * 3,
                          lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)),
    "dropout": (lambda b: [_f32(2, 3, backend=b)], lambda a: F.dropout(a, 0.3)),
    "python_scalars": (lambda b: [_f32(2, 3, backend=b)],
                       lambda a: (2.5 * a + 1) / 3.0 - 0.5 + (1.0 / (a * a + 1.0)) + a ** 2 - np.float64(2.0) * a),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_float32_in_float32_out_and_grads(backend, name):
    build, op = OPS[name]
    inputs = build(backend)
    out = op(*inputs)
    assert out.dtype == np.float32, f"{name}: output is {out.dtype}"
    out.backward(mg.ones(*out.shape, device=backend))
    for i, x in enumerate(inputs):
        assert x.grad is not None, f"{name}: no gradient for input {i}"
        assert x.grad.dtype == np.float32, f"{name}: gradient of input {i} is {x.grad.dtype}"


def test_python_scalars_do_not_upcast(backend):
    x = mg.randn(3, device=backend)
    for y in (x + 1, 1 + x, x * 2.5, 2.5 * x, x / 3, 3 / x, x - 0.1, 0.1 - x, x ** 2, -x,
              x * np.float64(2.0), mg.where(x > 0, x, 0.0)):
        assert y.dtype == np.float32
    assert mg.tensor([1.0, 2.0], device=backend).dtype == np.float32
    assert mg.tensor(3.0, device=backend).dtype == np.float32
    # float64 asked for stays float64, and a Python scalar does not demote it
    d = mg.tensor([1.0], dtype=np.float64, device=backend)
    assert (d * 2.5).dtype == np.float64


# ---------------------------------------------------------------- errors
def test_matmul_shape_mismatch_names_both_shapes(backend):
    a, b = mg.ones(2, 3, device=backend), mg.ones(4, 5, device=backend)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        a @ b
    with pytest.raises(ValueError, match=r"\(3,\).*\(4, 5\)"):
        mg.ones(3, device=backend) @ b


def test_linear_shape_mismatch_names_both_shapes(backend):
    x = mg.ones(2, 7, 3, device=backend)
    with pytest.raises(ValueError, match=r"\(2, 7, 3\).*\(4, 5\)"):
        F.linear(x, mg.ones(4, 5, device=backend))
    with pytest.raises(ValueError, match=r"\(2, 7, 3\).*\(4, 5\)"):
        nn.Linear(4, 5, device=backend)(x)


def test_other_clear_errors(backend):
    x = mg.ones(2, 3, device=backend)
    with pytest.raises(ValueError, match=r"reshape.*\(2, 3\).*\(4,\)"):
        x.reshape(4)
    with pytest.raises(ValueError, match="targets of shape"):
        F.cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        F.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        F.embedding(np.array([2]), x)
    with pytest.raises(TypeError, match="tensor \\*\\* tensor"):
        x ** x


@pytest.mark.skipif(mg.gpu_available(), reason="a GPU with CuPy is present: .to('cuda') works here")
def test_to_cuda_without_gpu_names_the_cuda_extra():
    import importlib.util
    x = mg.ones(3)
    # without CuPy the message names the extra to install; with CuPy but no GPU, what CUDA said
    expected = r"needs an NVIDIA GPU" if importlib.util.find_spec("cupy") else r"\[cuda\]"
    with pytest.raises(mg.BackendError, match=expected):
        x.to("cuda")
    with pytest.raises(mg.BackendError):
        mg.zeros(3, device="cuda")
    with pytest.raises(mg.BackendError):
        nn.Linear(2, 2).to("cuda")


def test_missing_cupy_names_the_cuda_extra(monkeypatch):
    """Whatever this machine has: with CuPy not importable, the error says how to install it."""
    monkeypatch.setattr(mg_backend, "_cupy", None)
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(mg.BackendError, match=r"pip install.*\[cuda\]"):
        mg.ones(2).to("cuda")
    assert not mg.gpu_available()


def test_unknown_device():
    with pytest.raises(mg.BackendError, match="unknown device 'tpu'"):
        mg.ones(2).to("tpu")
