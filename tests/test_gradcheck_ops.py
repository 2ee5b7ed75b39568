"""Finite-difference checks of every differentiable op's backward (float64, central differences).

Shapes, axes, exponents and the like are drawn by hypothesis; the values come from a NumPy
generator seeded by a hypothesis-drawn seed, so they are continuous (no ties for max, nothing
exactly on relu's kink) and reproducible from the failing example hypothesis prints.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minigrad as mg
import minigrad.functional as F

# the `backend` fixture only returns a device name, so reusing it across examples is safe
CHECK = settings(max_examples=20, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
seeds = st.integers(0, 2**32 - 1)
small_shape = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)


def leaf(values, device: str, noncontig: bool = False) -> mg.Tensor:
    """A float64 leaf requiring grad; with `noncontig`, its array is a transposed (strided) view."""
    values = np.asarray(values, dtype=np.float64)
    if not noncontig or values.ndim < 2:
        return mg.tensor(values, device=device, dtype=np.float64, requires_grad=True)
    stored = mg.tensor(np.ascontiguousarray(values.T), device=device, dtype=np.float64)
    return mg.Tensor(stored.data.T, requires_grad=True)


def normal(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def away_from_zero(rng, shape, low=0.3, high=2.0):
    """Values with |v| in [low, high] and random sign (safe denominators, no relu kink)."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], size=shape)


def check(fn, *inputs):
    assert mg.gradcheck(fn, list(inputs))


@st.composite
def broadcast_pair(draw, max_dims=3):
    """Two shapes that broadcast together: size-1 axes and missing leading axes on either side."""
    full = draw(st.lists(st.integers(1, 3), min_size=0, max_size=max_dims))

    def side():
        shape = [n if draw(st.booleans()) else 1 for n in full]
        drop = draw(st.integers(0, len(shape)))
        return tuple(shape[drop:])

    return side(), side()


def axis_choice(ndim):
    """None, one axis (maybe negative) or a tuple of distinct axes."""
    return st.one_of(
        st.none(),
        st.integers(-ndim, ndim - 1),
        st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple),
    )


# ---------------------------------------------------------------- elementwise arithmetic
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@CHECK
@given(shapes=broadcast_pair(), seed=seeds)
def test_binary_broadcast(backend, op, shapes, seed):
    rng = np.random.default_rng(seed)
    a = leaf(normal(rng, shapes[0]), backend)
    b_values = away_from_zero(rng, shapes[1]) if op == "div" else normal(rng, shapes[1])
    b = leaf(b_values, backend)
    fn = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
          "mul": lambda a, b: a * b, "div": lambda a, b: a / b}[op]
    check(fn, a, b)


@pytest.mark.parametrize("op", ["radd", "rsub", "rmul", "rtruediv"])
@CHECK
@given(shape=small_shape, seed=seeds, c=st.floats(-3, 3, allow_nan=False))
def test_scalar_on_the_left(backend, op, shape, seed, c):
    x = leaf(away_from_zero(np.random.default_rng(seed), shape), backend)
    fn = {"radd": lambda x: c + x, "rsub": lambda x: c - x,
          "rmul": lambda x: c * x, "rtruediv": lambda x: c / x}[op]
    check(fn, x)


@CHECK
@given(shape=small_shape, seed=seeds, noncontig=st.booleans())
def test_neg(backend, shape, seed, noncontig):
    check(lambda x: -x, leaf(normal(np.random.default_rng(seed), shape), backend, noncontig))


@CHECK
@given(shape=small_shape, seed=seeds, p=st.sampled_from([2, 3, 0.5, -1.0, -1.5, 1.7]))
def test_pow(backend, shape, seed, p):
    rng = np.random.default_rng(seed)
    # integer exponents are defined for negative bases too; the others only for positive ones
    values = away_from_zero(rng, shape) if float(p).is_integer() else rng.uniform(0.3, 2.0, shape)
    check(lambda x: x ** p, leaf(values, backend))


@pytest.mark.parametrize("op", ["exp", "log", "tanh", "sqrt", "relu"])
@CHECK
@given(shape=small_shape, seed=seeds, noncontig=st.booleans())
def test_unary(backend, op, shape, seed, noncontig):
    rng = np.random.default_rng(seed)
    if op in ("log", "sqrt"):
        values = rng.uniform(0.2, 3.0, shape)
    elif op == "relu":
        values = away_from_zero(rng, shape, low=0.05)
    else:
        values = normal(rng, shape)
    check(lambda x: getattr(x, op)(), leaf(values, backend, noncontig))


@CHECK
@given(shapes=broadcast_pair(), seed=seeds, cond_side=st.booleans())
def test_where(backend, shapes, seed, cond_side):
    rng = np.random.default_rng(seed)
    a, b = leaf(normal(rng, shapes[0]), backend), leaf(normal(rng, shapes[1]), backend)
    cond_shape = shapes[0] if cond_side else shapes[1]
    cond = mg.tensor(rng.random(cond_shape) < 0.5, device=backend)
    check(lambda a, b: mg.where(cond, a, b), a, b)


@CHECK
@given(shapes=broadcast_pair(), seed=seeds, value=st.floats(-1e4, 1e4))
def test_masked_fill(backend, shapes, seed, value):
    rng = np.random.default_rng(seed)
    x = leaf(normal(rng, shapes[0]), backend)
    mask = mg.tensor(rng.random(shapes[1]) < 0.5, device=backend)  # may broadcast x up
    check(lambda x: x.masked_fill(mask, value), x)


# ---------------------------------------------------------------- reductions
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@CHECK
@given(data=st.data(), shape=small_shape, seed=seeds, keepdims=st.booleans(), noncontig=st.booleans())
def test_reductions(backend, op, data, shape, seed, keepdims, noncontig):
    axis = data.draw(axis_choice(len(shape)), label="axis")
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    # distinct values at least 0.1 apart: no ties, and a 1e-6 step never changes the argmax
    values = (rng.permutation(n) * 0.1 + rng.uniform(0, 0.01, n)).reshape(shape)
    x = leaf(values, backend, noncontig)
    check(lambda x: getattr(x, op)(axis=axis, keepdims=keepdims), x)


# ---------------------------------------------------------------- matmul
@st.composite
def matmul_shapes(draw):
    k, n, m = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    batch = draw(st.lists(st.integers(1, 3), max_size=2))

    def batch_side():
        shape = [b if draw(st.booleans()) else 1 for b in batch]
        return tuple(shape[draw(st.integers(0, len(shape))):])

    a = (n,) if draw(st.booleans()) else batch_side() + (k, n)
    b = (n,) if draw(st.booleans()) else batch_side() + (n, m)
    return a, b


@CHECK
@given(shapes=matmul_shapes(), seed=seeds, noncontig=st.booleans())
def test_matmul(backend, shapes, seed, noncontig):
    rng = np.random.default_rng(seed)
    a = leaf(normal(rng, shapes[0]), backend, noncontig)
    b = leaf(normal(rng, shapes[1]), backend, noncontig)
    check(lambda a, b: a @ b, a, b)


def test_matmul_vector_cases(backend):
    """The 1-D cases explicitly, so they are checked whatever hypothesis draws."""
    rng = np.random.default_rng(0)
    for sa, sb in [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((4, 2, 3), (3,)), ((3,), (4, 3, 2))]:
        check(lambda a, b: a @ b, leaf(normal(rng, sa), backend), leaf(normal(rng, sb), backend))


# ---------------------------------------------------------------- shapes
@CHECK
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple), seed=seeds,
       kind=st.sampled_from(["flat", "reversed", "minus_one", "leading_one"]), noncontig=st.booleans())
def test_reshape(backend, shape, seed, kind, noncontig):
    n = int(np.prod(shape))
    target = {"flat": (n,), "reversed": tuple(reversed(shape)), "minus_one": (shape[0], -1),
              "leading_one": (1,) + shape}[kind]
    x = leaf(normal(np.random.default_rng(seed), shape), backend, noncontig)
    check(lambda x: x.reshape(target), x)


@CHECK
@given(data=st.data(), shape=st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple), seed=seeds)
def test_permute_transpose_T(backend, data, shape, seed):
    ndim = len(shape)
    dims = data.draw(st.permutations(range(ndim)), label="dims")
    a, b = data.draw(st.integers(-ndim, ndim - 1)), data.draw(st.integers(-ndim, ndim - 1))
    x = leaf(normal(np.random.default_rng(seed), shape), backend)
    check(lambda x: x.permute(*dims), x)
    check(lambda x: x.transpose(a, b), x)
    check(lambda x: x.T, x)


@st.composite
def basic_index(draw, shape):
    """A tuple of ints (maybe negative), slices (maybe with negative steps) and None."""
    items = []
    for n in shape[:draw(st.integers(1, len(shape)))]:
        kind = draw(st.sampled_from(["int", "slice", "none_then_slice"]))
        if kind == "int":
            items.append(draw(st.integers(-n, n - 1)))
            continue
        if kind == "none_then_slice":
            items.append(None)
        start = draw(st.one_of(st.none(), st.integers(-n, n - 1)))
        stop = draw(st.one_of(st.none(), st.integers(-n, n)))
        step = draw(st.sampled_from([None, 1, 2, -1, -2]))
        items.append(slice(start, stop, step))
    if draw(st.booleans()):
        items.append(Ellipsis)
    return tuple(items)


@CHECK
@given(data=st.data(), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       seed=seeds, noncontig=st.booleans())
def test_getitem_basic(backend, data, shape, seed, noncontig):
    index = data.draw(basic_index(shape), label="index")
    x = leaf(normal(np.random.default_rng(seed), shape), backend, noncontig)
    if x[index].size == 0:
        return  # an empty slice has nothing to check
    check(lambda x: x[index], x)


@CHECK
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple), seed=seeds,
       n_ids=st.integers(1, 6), with_slice=st.booleans())
def test_getitem_integer_array(backend, shape, seed, n_ids, with_slice):
    rng = np.random.default_rng(seed)
    ids = rng.integers(-shape[0], shape[0], n_ids)
    ids[-1] = ids[0]  # at least one repeat: its gradients must add up, not overwrite
    ids_dev = mg.tensor(ids, device=backend)
    x = leaf(normal(rng, shape), backend)
    if with_slice and len(shape) > 1:
        check(lambda x: x[ids_dev, 1:], x)
    else:
        check(lambda x: x[ids_dev], x)


# ---------------------------------------------------------------- cat, split, chunk, stack
@CHECK
@given(data=st.data(), shape=small_shape, seed=seeds, n=st.integers(1, 3))
def test_cat(backend, data, shape, seed, n):
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n):
        s = list(shape)
        s[axis] = data.draw(st.integers(1, 3))
        parts.append(leaf(normal(rng, tuple(s)), backend))
    check(lambda *xs: mg.cat(list(xs), axis=axis), *parts)


@CHECK
@given(data=st.data(), shape=small_shape, seed=seeds)
def test_split_chunk(backend, data, shape, seed):
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    size = data.draw(st.integers(1, 3), label="size")
    chunks = data.draw(st.integers(1, 3), label="chunks")
    x = leaf(normal(np.random.default_rng(seed), shape), backend)
    # each piece weighted differently, so a piece routed to the wrong place shows up
    weigh = lambda pieces: mg.cat([p * float(i + 1) for i, p in enumerate(pieces)], axis=axis)
    check(lambda x: weigh(mg.split(x, size, axis=axis)), x)
    check(lambda x: weigh(mg.chunk(x, chunks, axis=axis)), x)
    n = shape[axis]
    cut = data.draw(st.integers(0, n), label="cut")
    check(lambda x: weigh(mg.split(x, [cut, n - cut], axis=axis)), x)


@CHECK
@given(data=st.data(), shape=small_shape, seed=seeds, n=st.integers(1, 3))
def test_stack(backend, data, shape, seed, n):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)), label="axis")
    rng = np.random.default_rng(seed)
    parts = [leaf(normal(rng, shape), backend) for _ in range(n)]
    check(lambda *xs: mg.stack(list(xs), axis=axis), *parts)


# ---------------------------------------------------------------- fused ops
@CHECK
@given(B=st.integers(1, 2), T=st.integers(1, 3), n_in=st.integers(1, 3), n_out=st.integers(1, 3),
       bias=st.booleans(), transposed=st.booleans(), noncontig=st.booleans(), seed=seeds)
def test_linear(backend, B, T, n_in, n_out, bias, transposed, noncontig, seed):
    rng = np.random.default_rng(seed)
    x = leaf(normal(rng, (B, T, n_in)), backend, noncontig)
    w = leaf(normal(rng, (n_out, n_in) if transposed else (n_in, n_out)), backend, noncontig)
    if bias:
        b = leaf(normal(rng, (n_out,)), backend)
        check(lambda x, w, b: F.linear(x, w, b, transposed=transposed), x, w, b)
    else:
        check(lambda x, w: F.linear(x, w, transposed=transposed), x, w)


@CHECK
@given(V=st.integers(1, 5), D=st.integers(1, 3), ids_shape=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       seed=seeds)
def test_embedding(backend, V, D, ids_shape, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, ids_shape)
    ids.reshape(-1)[-1] = ids.reshape(-1)[0]  # a repeated id
    w = leaf(normal(rng, (V, D)), backend)
    ids_dev = mg.tensor(ids, device=backend)
    check(lambda w: F.embedding(ids_dev, w), w)


@CHECK
@given(lead=st.lists(st.integers(1, 3), max_size=2).map(tuple), D=st.integers(2, 5), seed=seeds,
       noncontig=st.booleans())
def test_layer_norm(backend, lead, D, seed, noncontig):
    rng = np.random.default_rng(seed)
    x = leaf(normal(rng, lead + (D,), 2.0) + 1.0, backend, noncontig)
    w, b = leaf(normal(rng, (D,)), backend), leaf(normal(rng, (D,)), backend)
    check(lambda x, w, b: F.layer_norm(x, w, b), x, w, b)


@CHECK
@given(shape=small_shape, seed=seeds, noncontig=st.booleans())
def test_gelu(backend, shape, seed, noncontig):
    check(F.gelu, leaf(normal(np.random.default_rng(seed), shape, 2.0), backend, noncontig))


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax], ids=["softmax", "log_softmax"])
@CHECK
@given(data=st.data(), shape=small_shape, seed=seeds, noncontig=st.booleans())
def test_softmax_family(backend, fn, data, shape, seed, noncontig):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = leaf(normal(np.random.default_rng(seed), shape, 2.0), backend, noncontig)
    check(lambda x: fn(x, axis=axis), x)


@CHECK
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple), V=st.integers(1, 4),
       reduction=st.sampled_from(["mean", "sum", "none"]), ignore_index=st.sampled_from([-100, -1, 2]),
       seed=seeds, noncontig=st.booleans())
def test_cross_entropy(backend, lead, V, reduction, ignore_index, seed, noncontig):
    rng = np.random.default_rng(seed)
    logits = leaf(normal(rng, lead + (V,), 2.0), backend, noncontig)
    targets = rng.integers(0, V, lead)
    targets[rng.random(lead) < 0.4] = ignore_index
    targets.reshape(-1)[0] = 0  # at least one row counts (0 is never the ignore_index here)
    targets_dev = mg.tensor(targets, device=backend)
    check(lambda x: F.cross_entropy(x, targets_dev, ignore_index=ignore_index, reduction=reduction), logits)


@CHECK
@given(B=st.integers(1, 2), H=st.integers(1, 2), T=st.integers(1, 3), extra=st.integers(0, 2),
       D=st.integers(1, 3), causal=st.booleans(), mask_kind=st.sampled_from(["none", "padding", "row"]),
       scale=st.one_of(st.none(), st.floats(0.1, 2.0)), seed=seeds, noncontig=st.booleans())
def test_scaled_dot_product_attention(backend, B, H, T, extra, D, causal, mask_kind, scale, seed, noncontig):
    rng = np.random.default_rng(seed)
    S = T + extra  # S > T: a KV cache holding earlier positions
    q = leaf(normal(rng, (B, H, T, D)), backend, noncontig)
    k = leaf(normal(rng, (B, H, S, D)), backend, noncontig)
    v = leaf(normal(rng, (B, H, S, D)), backend, noncontig)
    mask = None
    if mask_kind == "padding":
        # left padding on the first sequence: with causal, query 0 can see only masked keys
        keep = np.ones((B, 1, 1, S), dtype=bool)
        keep[0, 0, 0, :rng.integers(1, S + 1)] = False
        mask = mg.tensor(keep, device=backend)
    elif mask_kind == "row":
        keep = rng.random((B, 1, T, S)) < 0.6
        keep[0, 0, 0, :] = False  # a fully masked query row
        mask = mg.tensor(keep, device=backend)
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, attn_mask=mask,
                                                         scale=scale), q, k, v)


def test_attention_fully_masked_row_outputs_mean_of_values(backend):
    """The finite differences of a fully masked row are zero for q and k; its output is mean(v)."""
    rng = np.random.default_rng(1)
    q, k, v = (leaf(normal(rng, (1, 1, 2, 3)), backend) for _ in range(3))
    keep = mg.tensor(np.array([[False, False], [True, True]]), device=backend)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=False, attn_mask=keep)
    np.testing.assert_allclose(out.numpy()[0, 0, 0], v.numpy()[0, 0].mean(axis=0), rtol=1e-12)
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=False, attn_mask=keep), q, k, v)


def test_attention_more_queries_than_keys(backend):
    """Causal with T > S: the first T - S queries see no key at all (bottom-right alignment)."""
    rng = np.random.default_rng(2)
    q = leaf(normal(rng, (1, 2, 4, 3)), backend)
    k, v = leaf(normal(rng, (1, 2, 2, 3)), backend), leaf(normal(rng, (1, 2, 2, 3)), backend)
    check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v)


@CHECK
@given(shape=small_shape, p=st.floats(0.1, 0.9), seed=seeds, noncontig=st.booleans())
def test_dropout(backend, shape, p, seed, noncontig):
    x = leaf(normal(np.random.default_rng(seed), shape), backend, noncontig)

    def fixed_mask_dropout(x):
        mg.manual_seed(seed)  # the same mask on every call, so forward is a fixed linear map
        return F.dropout(x, p)

    out = fixed_mask_dropout(x).numpy()
    kept = out != 0
    np.testing.assert_allclose(out[kept], x.numpy()[kept] / (1 - p), rtol=1e-12)
    check(fixed_mask_dropout, x)


@CHECK
@given(T=st.integers(1, 3), D=st.integers(1, 3), p=st.floats(0.1, 0.7), seed=seeds)
def test_attention_dropout(backend, T, D, p, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (leaf(normal(rng, (1, 2, T, D)), backend) for _ in range(3))

    def fixed_mask_attention(q, k, v):
        mg.manual_seed(seed)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)

    check(fixed_mask_attention, q, k, v)


# ---------------------------------------------------------------- every op of the table
from minigrad.ops.table import OPS  # noqa: E402


@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
def test_every_op_in_the_table(backend, entry):
    """Each op of minigrad.ops.table, through its public call, on its own gradcheck inputs."""
    tensors, consts = entry.inputs(np.random.default_rng(0), backend)
    check(lambda *t: entry.call(*t, **consts), *tensors)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_function_in_minigrad_has_a_table_entry():
    """Test-only Functions (defined in tests/) do not count; the fused CUDA kernels' count, listed
    by the entries whose call runs them on float32 CuPy arrays."""
    import minigrad.kernels  # noqa: F401  (its Functions too)
    defined = {f for f in _subclasses(mg.Function) if f.__module__.startswith("minigrad.")}
    covered = {f for e in OPS for f in e.functions}
    missing = sorted(f.__qualname__ for f in defined - covered)
    assert not missing, f"Functions with no entry in minigrad/ops/table.py: {missing}"
