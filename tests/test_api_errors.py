"""The engine's argument errors (issue 20, item 7): every public function of minigrad that takes an
axis, an index, a mask, a list of tensors, a seed or a hyperparameter refuses a bad one with a
ValueError or TypeError whose message names the function and the argument, instead of failing
deep inside NumPy, wrapping an axis around, or training on NaN.

CASES is the one table: a row per (function, argument), its kind, and how to call it. Hypothesis
draws the bad values of each kind (BAD). test_the_table_covers_the_public_api inspects the
signatures of minigrad's public API and fails when a function with an argument of such a name
(ARG_KINDS) has no row, so a new function cannot slip past. Each row's call is also made once
with a good value, which must pass: a row cannot pass by failing for some other reason.
"""
from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minigrad as mg
import minigrad.functional as F
from minigrad import amp, backend, distributed, nn, ops, optim
from minigrad.flat import FlatParameters
from minigrad.gradcheck import gradcheck
from minigrad.tensor import Function, Tensor

# ---------------------------------------------------------------- the public API, by inspection
# minigrad's documented surface (minigrad/README.md): the package, Tensor, F, the op layer, nn,
# optim (and its flat buffers), the backend's RNG, mixed precision, gradcheck, data parallelism,
# io, viz. Function subclasses are left out: each is applied by the public function in front of
# it, which is what checks. minigrad.kernels is left out too: reached only through the checked ops
# and optimizers, never called with a user's arguments.
PUBLIC_MODULES = ("minigrad", "minigrad.functional", "minigrad.ops", "minigrad.nn", "minigrad.optim",
                  "minigrad.flat", "minigrad.backend", "minigrad.amp", "minigrad.gradcheck",
                  "minigrad.distributed", "minigrad.io", "minigrad.viz")
DUNDERS = ("__init__", "__getitem__", "__pow__")  # the ones that take such an argument

# argument names that mean one of the kinds the issue names, wherever they appear
ARG_KINDS = {
    **dict.fromkeys(("axis", "dims", "axis0", "axis1"), "axis"),
    **dict.fromkeys(("idx", "index", "targets", "ids"), "index"),
    **dict.fromkeys(("mask", "cond", "attn_mask"), "mask"),
    **dict.fromkeys(("tensors", "params"), "tensors"),
    **dict.fromkeys(("size_or_sections", "chunks"), "sections"),
    **dict.fromkeys(("seed", "counter"), "seed"),
    **dict.fromkeys(("lr", "betas", "b1", "b2", "eps", "weight_decay", "momentum", "max_norm", "p", "dropout_p",
                     "scale", "warmup_steps", "total_steps", "min_lr", "warmup_start_lr", "rank", "alpha",
                     "ignore_index", "reduction", "init_scale", "growth_factor", "backoff_factor",
                     "growth_interval", "atol", "rtol", "in_features", "out_features",
                     "num_embeddings", "embedding_dim", "dim"), "hyperparameter"),
}

# arguments whose name matches but which are operands, not settings (each with its reason)
EXEMPT = {
    ("minigrad.ops.elementwise.power", "p"): "the exponent of x ** p is an operand: x ** nan is NaN, as in NumPy",
    ("minigrad.tensor.Tensor.__pow__", "p"): "the exponent of x ** p is an operand (see power)",
    ("minigrad.ops.softmax_family.softmax_backward", "p"): "p is the array of probabilities, an operand",
    ("minigrad.optim.adamw_flat", "p"): "p is the flat parameter array the update writes",
}


def _public_functions() -> dict[str, Callable]:
    """qualified name -> function, for every public function and method (each once)."""
    found: dict[str, Callable] = {}

    def add(f: Callable) -> None:
        if str(getattr(f, "__module__", "")).startswith("minigrad"):
            found[f"{f.__module__}.{f.__qualname__}"] = f

    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
        for name in names:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not str(getattr(obj, "__module__", "")).startswith("minigrad"):
                continue
            if not inspect.isclass(obj):
                if callable(obj):
                    add(obj)
                continue
            if issubclass(obj, (BaseException, Function)):
                continue
            for mname, member in inspect.getmembers(obj):
                static = inspect.getattr_static(obj, mname)
                if isinstance(static, property):
                    if static.fset is not None:  # a setter: `opt.lr = value` is a call too
                        add(static.fset)
                    continue
                if mname.startswith("_") and mname not in DUNDERS:
                    continue
                if callable(member):
                    add(member)
    return found


def checked_arguments() -> set[tuple[str, str]]:
    """(qualified function name, argument) for every public argument whose name is in ARG_KINDS."""
    out = set()
    for qual, f in _public_functions().items():
        for arg in inspect.signature(f).parameters:
            if arg in ARG_KINDS:
                out.add((qual, arg))
    return out


# ---------------------------------------------------------------- bad values, by kind
def _not_integers() -> st.SearchStrategy:
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3), st.none(),
                     st.just(True), st.just([0]), st.just(np.zeros(2)), st.just(np.float32(1.0)))


def bad_integers(lo: int | None, hi: int | None) -> st.SearchStrategy:
    """Values an integer argument in [lo, hi) must refuse."""
    parts = [_not_integers()]
    if lo is not None:
        parts.append(st.integers(max_value=lo - 1))
    if hi is not None:
        parts.append(st.integers(min_value=hi))
    return st.one_of(*parts)


def bad_numbers(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False) -> st.SearchStrategy:
    """Values a finite number argument within [lo, hi] (ends open as said) must refuse."""
    parts = [st.sampled_from([math.nan, math.inf, -math.inf, "0.1", None, b"1", [0.1], True, 10 ** 400])]
    if lo is not None:
        parts.append(st.floats(max_value=lo, exclude_max=not lo_open, allow_nan=False, allow_infinity=False))
    if hi is not None:
        parts.append(st.floats(min_value=hi, exclude_min=not hi_open, allow_nan=False, allow_infinity=False))
    return st.one_of(*parts)


def bad_axes(ndim: int, allow_tuple: bool = False) -> st.SearchStrategy:
    """Axes a tensor of ndim axes does not have (plus non-integers, and repeats in a tuple)."""
    out_of_range = st.one_of(st.integers(min_value=ndim), st.integers(max_value=-ndim - 1))
    parts = [out_of_range, _not_integers().filter(lambda v: v is not None and not (allow_tuple and isinstance(v, list)))]
    if allow_tuple:
        parts.append(st.tuples(st.integers(0, ndim - 1), out_of_range))
        parts.append(st.integers(0, ndim - 1).map(lambda a: (a, a - ndim)))  # the same axis twice
    return st.one_of(*parts)


def bad_dims(ndim: int) -> st.SearchStrategy:
    """Not a permutation of range(ndim): wrong length, out of range, or an axis twice."""
    return st.one_of(
        st.lists(st.integers(-ndim, ndim - 1), min_size=0, max_size=ndim - 1).map(tuple),
        st.lists(st.integers(-ndim, ndim - 1), min_size=ndim + 1, max_size=ndim + 2).map(tuple),
        st.permutations(range(ndim)).flatmap(
            lambda p: st.integers(0, ndim - 1).flatmap(
                lambda i: st.sampled_from([ndim, -ndim - 1, 99]).map(lambda v: tuple(p[:i]) + (v,) + tuple(p[i + 1:])))),
        st.just(tuple([0] * ndim)),
        st.just((0.0,) + tuple(range(1, ndim))),
    )


FLOAT_DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.complex64])


def bad_index_arrays() -> st.SearchStrategy:
    """(dtype, wrap): a float-typed index, as an ndarray, a Tensor or a list of floats."""
    return st.tuples(FLOAT_DTYPES, st.sampled_from(["array", "tensor", "list"]))


def _as(kind: str, a: np.ndarray) -> Any:
    return {"array": a, "tensor": Tensor(a), "list": a.tolist()}[kind]


def bad_tensor_lists(extra: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Empty, a tensor instead of a list, not iterable, or a list holding something else."""
    junk = st.sampled_from([None, 1.0, "x", np.zeros(3, np.float32), [1.0, 2.0]])
    with_junk = st.tuples(st.integers(0, 2), junk).map(
        lambda ij: [mg.ones(2, 3)] * ij[0] + [ij[1]] + [mg.ones(2, 3)] * (2 - ij[0]))
    parts = [st.just([]), st.just(()), st.just(mg.ones(2, 3)), st.sampled_from([None, 3, 2.5]), with_junk]
    return st.one_of(*parts, *([extra] if extra is not None else []))


def bad_seeds() -> st.SearchStrategy:
    return bad_integers(0, 1 << 64)


# ---------------------------------------------------------------- the table
@dataclass
class Case:
    """One (function, argument): call(value) makes the call with `value` there and valid
    arguments elsewhere; `bad` draws values it must refuse; `good` is one it must accept."""

    target: str                 # qualified name, as _public_functions() keys it
    arg: str                    # the argument as the message must name it
    fn: str                     # the function as the message must name it
    call: Callable[[Any], Any]
    bad: st.SearchStrategy
    good: Any

    @property
    def id(self) -> str:
        return f"{self.target.removeprefix('minigrad.')}:{self.arg}"


def x23() -> Tensor:
    return mg.randn(2, 3, requires_grad=True)


def x234() -> Tensor:
    return mg.randn(2, 3, 4, requires_grad=True)


def _params() -> list:
    return list(nn.Linear(3, 2).parameters())


def _adamw_state(key: str, value: Any) -> None:
    state = optim.AdamW(_params(), lr=0.1).state_dict()
    state["meta"]["groups"][0][key] = value
    optim.AdamW(_params(), lr=0.1).load_state_dict(state)


def _schedule(**kw: Any) -> optim.CosineWithWarmup:
    args = dict(warmup_steps=2, total_steps=10, min_lr=0.01, warmup_start_lr=0.0)
    return optim.CosineWithWarmup(optim.AdamW(_params(), lr=0.1), **{**args, **kw})


def _schedule_state(key: str, value: Any) -> None:
    sched = _schedule()
    state = dict(sched.state_dict(), **{key: value})
    sched.load_state_dict(state)


def _rng_state(corrupt: Callable[[dict], Any]) -> None:
    mg.backend.set_rng_state(corrupt(mg.get_rng_state()))


def _scaler_state(key: str, value: Any) -> None:
    scaler = amp.LossScaler()
    scaler.load_state_dict(dict(scaler.state_dict(), **{key: value}))


def _index_case(target: str, arg: str, fn: str, call: Callable[[Any], Any], shape: tuple, high: int,
                arrays_only: bool = False) -> Case:
    """An argument of integer ids of `shape`, each < high: float dtypes are refused (as an
    array, a Tensor or a list; only arrays for the array-level helpers)."""
    good = np.arange(int(np.prod(shape))).reshape(shape) % high
    bad = bad_index_arrays().filter(lambda v: v[1] == "array") if arrays_only else bad_index_arrays()
    return Case(target, arg, fn, lambda v: call(_as(v[1], good.astype(v[0])) if isinstance(v, tuple) else v),
                bad, good)


def _mask_case(target: str, arg: str, fn: str, call: Callable[[Any], Any], shape: tuple) -> Case:
    """A boolean mask of `shape`: float dtypes are refused (ints and bools pass)."""
    good = np.ones(shape, dtype=bool)
    return Case(target, arg, fn, lambda v: call(_as(v[1], good.astype(v[0])) if isinstance(v, tuple) else v),
                bad_index_arrays().filter(lambda v: v[1] != "list"), good)


def _number(target: str, arg: str, fn: str, call: Callable[[Any], Any], good: float, lo: float | None = None,
            hi: float | None = None, lo_open: bool = False, hi_open: bool = False, none_ok: bool = False) -> Case:
    bad = bad_numbers(lo, hi, lo_open, hi_open)
    return Case(target, arg, fn, call, bad.filter(lambda v: v is not None) if none_ok else bad, good)


def _integer(target: str, arg: str, fn: str, call: Callable[[Any], Any], good: int, lo: int | None = None,
             hi: int | None = None) -> Case:
    return Case(target, arg, fn, call, bad_integers(lo, hi), good)


T, O, S, L, A, E, R, N, OP, B, AM = ("minigrad.tensor.Tensor.", "minigrad.ops.", "minigrad.ops.shape.",
                                     "minigrad.ops.layers.", "minigrad.ops.attention.",
                                     "minigrad.ops.elementwise.", "minigrad.ops.reduce.", "minigrad.nn.",
                                     "minigrad.optim.", "minigrad.backend.", "minigrad.amp.")
SF = "minigrad.ops.softmax_family."
_x2 = mg.randn(2, 3)

CASES: list[Case] = [
    # ---- axes: -ndim <= axis < ndim (one more for a new axis), integers, each named once
    *[Case(T + m, "axis", m, lambda v, m=m: getattr(x234(), m)(axis=v), bad_axes(3, allow_tuple=True), -1)
      for m in ("sum", "mean", "max")],
    Case(R + "sum_", "axis", "sum", lambda v: ops.sum_(x234(), v), bad_axes(3, allow_tuple=True), (0, 2)),
    Case(R + "mean", "axis", "mean", lambda v: ops.mean(x234(), v), bad_axes(3, allow_tuple=True), (0, -1)),
    Case(R + "max_", "axis", "max", lambda v: ops.max_(x234(), v), bad_axes(3, allow_tuple=True), 1),
    Case(T + "argmax", "axis", "argmax", lambda v: x234().argmax(v), bad_axes(3), -3),
    Case(T + "softmax", "axis", "softmax", lambda v: x234().softmax(v), bad_axes(3), 0),
    Case(T + "log_softmax", "axis", "log_softmax", lambda v: x234().log_softmax(v), bad_axes(3), 2),
    Case(SF + "softmax", "axis", "softmax", lambda v: F.softmax(x234(), v), bad_axes(3), -1),
    Case(SF + "log_softmax", "axis", "log_softmax", lambda v: F.log_softmax(x234(), v), bad_axes(3), 1),
    Case(SF + "softmax_into", "axis", "softmax_into", lambda v: ops.softmax_into(np.ones((2, 3)), v),
         bad_axes(2), 1),
    Case(SF + "logsumexp", "axis", "logsumexp", lambda v: ops.logsumexp(np.ones((2, 3)), v), bad_axes(2), 0),
    Case(SF + "softmax_backward", "axis", "softmax_backward",
         lambda v: ops.softmax_backward(np.full((2, 3), 1 / 3), np.ones((2, 3)), v), bad_axes(2), -1),
    Case(T + "unsqueeze", "axis", "unsqueeze", lambda v: x234().unsqueeze(v), bad_axes(4), -4),
    Case(S + "unsqueeze", "axis", "unsqueeze", lambda v: ops.unsqueeze(x234(), v), bad_axes(4), 3),
    Case(T + "squeeze", "axis", "squeeze", lambda v: x234().squeeze(v), bad_axes(3), 1),
    Case(S + "squeeze", "axis", "squeeze", lambda v: ops.squeeze(x234(), v), bad_axes(3), -3),
    Case(T + "permute", "dims", "permute", lambda v: x234().permute(*v), bad_dims(3), (2, 0, 1)),
    Case(S + "permute", "dims", "permute", lambda v: ops.permute(x234(), v), bad_dims(3), (-1, 0, 1)),
    Case(T + "transpose", "axis0", "transpose", lambda v: x234().transpose(v, 0), bad_axes(3), -1),
    Case(T + "transpose", "axis1", "transpose", lambda v: x234().transpose(1, v), bad_axes(3), 2),
    Case(S + "transpose", "axis0", "transpose", lambda v: ops.transpose(x234(), v, 2), bad_axes(3), 0),
    Case(S + "transpose", "axis1", "transpose", lambda v: ops.transpose(x234(), 0, v), bad_axes(3), -2),
    Case(S + "cat", "axis", "cat", lambda v: mg.cat([x234(), x234()], v), bad_axes(3), 1),
    Case(S + "stack", "axis", "stack", lambda v: mg.stack([x234(), x234()], v), bad_axes(4), 3),
    Case(S + "split", "axis", "split", lambda v: mg.split(x234(), 1, v), bad_axes(3), -1),
    Case(S + "chunk", "axis", "chunk", lambda v: mg.chunk(x234(), 2, v), bad_axes(3), 2),
    # ---- indices and masks: integer (or boolean) dtypes, checked by dtype, never by value
    _index_case(L + "embedding", "idx", "embedding", lambda v: F.embedding(v, mg.randn(5, 4)), (2, 3), 5),
    _index_case(N + "Embedding.forward", "idx", "embedding", lambda v: nn.Embedding(5, 4)(v), (3,), 5),
    _index_case(SF + "cross_entropy", "targets", "cross_entropy",
                lambda v: F.cross_entropy(mg.randn(2, 3, 5), v), (2, 3), 5),
    _index_case(S + "getitem", "index", "getitem", lambda v: ops.getitem(x234(), v), (2,), 2),
    _index_case(T + "__getitem__", "index", "getitem", lambda v: x234()[v], (3,), 2),
    _index_case(T + "__getitem__", "index", "getitem", lambda v: x234()[:, v], (2,), 3),
    _index_case(O + "common.scatter_add", "index", "scatter_add",
                lambda v: ops.scatter_add(np, np.zeros(4), v, np.ones(3)), (3,), 4, arrays_only=True),
    _index_case(O + "common.segment_sum", "ids", "segment_sum",
                lambda v: ops.segment_sum(np, np.ones((3, 2)), v), (3,), 4, arrays_only=True),
    _mask_case(E + "where", "cond", "where", lambda v: mg.where(v, x23(), 0.0), (2, 3)),
    _mask_case(E + "masked_fill", "mask", "masked_fill", lambda v: ops.masked_fill(x23(), v, 0.0), (2, 3)),
    _mask_case(T + "masked_fill", "mask", "masked_fill", lambda v: x23().masked_fill(v, 0.0), (2, 3)),
    _mask_case(A + "scaled_dot_product_attention", "attn_mask", "scaled_dot_product_attention",
               lambda v: F.scaled_dot_product_attention(x234()[None], x234()[None], x234()[None], attn_mask=v),
               (3, 3)),
    _mask_case(A + "keep_mask", "attn_mask", "keep_mask", lambda v: F.keep_mask(np, 3, 3, True, v), (3, 3)),
    # ---- lists of tensors
    Case(S + "cat", "tensors", "cat", lambda v: mg.cat(v),
         bad_tensor_lists(st.sampled_from([[mg.ones(2, 3), mg.ones(2, 4)], [mg.ones(2, 3), mg.ones(2)],
                                           [mg.ones(2, 3), mg.ones(2, 3, dtype=np.float64)], [mg.ones(())]])),
         [mg.ones(2, 3), mg.ones(1, 3)]),
    Case(S + "stack", "tensors", "stack", lambda v: mg.stack(v),
         bad_tensor_lists(st.sampled_from([[mg.ones(2, 3), mg.ones(1, 3)], [mg.ones(2, 3), mg.ones(3, 2)]])),
         [mg.ones(2, 3), mg.ones(2, 3)]),
    Case(OP + "AdamW.__init__", "params", "AdamW", lambda v: optim.AdamW(v), bad_tensor_lists(), _params()),
    Case(OP + "SGD.__init__", "params", "SGD", lambda v: optim.SGD(v), bad_tensor_lists(), _params()),
    Case(OP + "Optimizer.__init__", "params", "Optimizer", lambda v: optim.Optimizer(v, {}), bad_tensor_lists(),
         _params()),
    Case(OP + "clip_grad_norm_", "params", "clip_grad_norm_", lambda v: optim.clip_grad_norm_(v, 1.0),
         bad_tensor_lists().filter(lambda v: not isinstance(v, Tensor) and not (isinstance(v, (list, tuple)) and not v)),
         _params()),
    Case("minigrad.flat.FlatParameters.__init__", "params", "FlatParameters", lambda v: FlatParameters(v),
         bad_tensor_lists(), _params()),
    Case(AM + "MixedPrecision.__init__", "params", "MixedPrecision", lambda v: amp.MixedPrecision(v),
         bad_tensor_lists(), _params()),
    Case("minigrad.distributed.broadcast_parameters", "params", "broadcast_parameters",
         lambda v: distributed.broadcast_parameters(v), bad_tensor_lists(), _params()),
    # ---- split sizes and chunk counts
    Case(S + "split", "size_or_sections", "split", lambda v: mg.split(x234(), v, 1),
         st.one_of(bad_integers(1, None).filter(lambda v: not isinstance(v, list)),
                   st.lists(st.integers(0, 3), max_size=4).filter(lambda s: sum(s) != 3),
                   st.lists(st.integers(-3, -1), min_size=1, max_size=3), st.just([1.5, 1.5])), [1, 2]),
    _integer(S + "chunk", "chunks", "chunk", lambda v: mg.chunk(x234(), v), 2, lo=1),
    # ---- seeds and RNG states
    Case(B + "manual_seed", "seed", "manual_seed", lambda v: mg.manual_seed(v), bad_seeds(), 2 ** 64 - 1),
    Case(B + "hash_uniform_bits", "seed", "hash_uniform_bits", lambda v: backend.hash_uniform_bits(np, 4, v, 0),
         bad_seeds(), 7),
    Case(B + "hash_uniform_bits", "counter", "hash_uniform_bits",
         lambda v: backend.hash_uniform_bits(np, 4, 0, v), bad_seeds(), 3),
    Case(B + "dropout_hash_key", "seed", "dropout_hash_key", lambda v: backend.dropout_hash_key(v, 0),
         bad_seeds(), 7),
    Case(B + "dropout_hash_key", "counter", "dropout_hash_key", lambda v: backend.dropout_hash_key(0, v),
         bad_seeds(), 3),
    Case("minigrad.gradcheck.gradcheck", "seed", "gradcheck",
         lambda v: gradcheck(lambda t: t * 2, [mg.randn(2, dtype=np.float64, requires_grad=True)], seed=v),
         bad_seeds(), 1),
    Case(B + "set_rng_state", "state", "set_rng_state", lambda v: _rng_state(v), st.sampled_from([
        lambda s: None, lambda s: [s], lambda s: "state", lambda s: {},
        lambda s: {k: v for k, v in s.items() if k != "seed"}, lambda s: {k: v for k, v in s.items() if k != "cpu"},
        lambda s: dict(s, seed=-1), lambda s: dict(s, seed=1.5), lambda s: dict(s, seed="0"),
        lambda s: dict(s, seed=2 ** 64), lambda s: dict(s, dropout_calls=-1), lambda s: dict(s, dropout_calls=None),
        lambda s: dict(s, cpu={}), lambda s: dict(s, cpu=None), lambda s: dict(s, cpu=dict(s["cpu"], bit_generator="MT19937")),
        lambda s: dict(s, cpu=dict(s["cpu"], state={"state": "x", "inc": 1})),
        lambda s: dict(s, cpu=dict(s["cpu"], state={"state": -1, "inc": 1}))]), lambda s: s),
    # ---- hyperparameters: finite, in range
    _number(OP + "AdamW.__init__", "lr", "AdamW", lambda v: optim.AdamW(_params(), lr=v), 0.0, lo=0),
    _number(OP + "AdamW.__init__", "eps", "AdamW", lambda v: optim.AdamW(_params(), eps=v), 1e-8, lo=0),
    _number(OP + "AdamW.__init__", "weight_decay", "AdamW", lambda v: optim.AdamW(_params(), weight_decay=v),
            0.1, lo=0),
    Case(OP + "AdamW.__init__", "betas", "AdamW", lambda v: optim.AdamW(_params(), betas=v), st.one_of(
        bad_numbers(0, 1, hi_open=True).map(lambda b: (0.9, b)), bad_numbers(0, 1, hi_open=True).map(lambda b: (b, 0.9)),
        st.sampled_from([(0.9,), (0.9, 0.99, 0.999), 0.9, None, "0.9"])), (0.0, 0.5)),
    _number(OP + "AdamW.__init__", "lr", "AdamW",  # a parameter group's own value
            lambda v: optim.AdamW([{"params": _params()}, {"params": _params(), "lr": v}]), 0.5, lo=0),
    _number(OP + "SGD.__init__", "lr", "SGD", lambda v: optim.SGD(_params(), lr=v), 0.1, lo=0),
    _number(OP + "SGD.__init__", "momentum", "SGD", lambda v: optim.SGD(_params(), momentum=v), 0.9, lo=0),
    _number(OP + "SGD.__init__", "weight_decay", "SGD", lambda v: optim.SGD(_params(), weight_decay=v), 0.0, lo=0),
    _number(OP + "Optimizer.lr", "lr", "AdamW", lambda v: setattr(optim.AdamW(_params()), "lr", v), 0.2, lo=0),
    _number(OP + "Optimizer.load_state_dict", "lr", "AdamW", lambda v: _adamw_state("lr", v), 0.01, lo=0),
    _number(OP + "Optimizer.load_state_dict", "eps", "AdamW", lambda v: _adamw_state("eps", v), 1e-6, lo=0),
    _number(OP + "Optimizer.load_state_dict", "betas", "AdamW", lambda v: _adamw_state("betas", [0.9, v]), 0.9,
            0, 1, hi_open=True),
    _number(OP + "clip_grad_norm_", "max_norm", "clip_grad_norm_",
            lambda v: optim.clip_grad_norm_(_params(), v), 1.0, lo=0, lo_open=True),
    _integer(OP + "CosineWithWarmup.__init__", "warmup_steps", "CosineWithWarmup",
             lambda v: _schedule(warmup_steps=v), 0, lo=0),
    _integer(OP + "CosineWithWarmup.__init__", "total_steps", "CosineWithWarmup",
             lambda v: _schedule(total_steps=v), 1, lo=0),
    _number(OP + "CosineWithWarmup.__init__", "min_lr", "CosineWithWarmup", lambda v: _schedule(min_lr=v),
            0.1, lo=0, hi=0.1),
    _number(OP + "CosineWithWarmup.__init__", "warmup_start_lr", "CosineWithWarmup",
            lambda v: _schedule(warmup_start_lr=v), 0.05, lo=0),
    _number(OP + "CosineWithWarmup.load_state_dict", "min_lr", "CosineWithWarmup",
            lambda v: _schedule_state("min_lr", v), 0.0, lo=0, hi=0.1),
    _integer(OP + "CosineWithWarmup.load_state_dict", "last_step", "CosineWithWarmup",
             lambda v: _schedule_state("last_step", v), 3, lo=0),
    *[_number(OP + "adamw_flat", k, "adamw_flat",
              lambda v, k=k: optim.adamw_flat(*[np.zeros(4, np.float32) for _ in range(5)],
                                              **dict(dict(lr=0.1, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, step=1),
                                                     **{k: v})), 0.5, lo=0, hi=hi, hi_open=True)
      for k, hi in (("lr", None), ("b1", 1), ("b2", 1), ("eps", None), ("weight_decay", None))],
    _number(L + "dropout", "p", "dropout", lambda v: F.dropout(x23(), v), 0.5, 0, 1, hi_open=True),
    _number(N + "Dropout.__init__", "p", "Dropout", lambda v: nn.Dropout(v), 0.0, 0, 1, hi_open=True),
    _number(B + "dropout_keep", "p", "dropout_keep", lambda v: backend.dropout_keep(np, (2, 3), v), 0.9,
            0, 1, hi_open=True),
    _number(B + "next_dropout_key", "p", "dropout_keep", lambda v: backend.next_dropout_key(v), 0.9,
            0, 1, hi_open=True),
    _number(A + "scaled_dot_product_attention", "dropout_p", "scaled_dot_product_attention",
            lambda v: F.scaled_dot_product_attention(x234()[None], x234()[None], x234()[None], dropout_p=v),
            0.25, 0, 1, hi_open=True),
    _number(A + "causal_self_attention", "dropout_p", "causal_self_attention",
            lambda v: F.causal_self_attention(mg.randn(2, 3, 12), 2, dropout_p=v), 0.25, 0, 1, hi_open=True),
    _number(L + "bias_residual", "dropout_p", "bias_residual",
            lambda v: F.bias_residual(x234(), mg.randn(4), x234(), dropout_p=v), 0.1, 0, 1, hi_open=True),
    _number(A + "scaled_dot_product_attention", "scale", "scaled_dot_product_attention",
            lambda v: F.scaled_dot_product_attention(x234()[None], x234()[None], x234()[None], scale=v), -0.5,
            none_ok=True),  # None: 1/sqrt(D)
    _number(L + "layer_norm", "eps", "layer_norm",
            lambda v: F.layer_norm(x234(), mg.ones(4), mg.zeros(4), v), 0.0, lo=0),
    _number(N + "LayerNorm.__init__", "eps", "LayerNorm", lambda v: nn.LayerNorm(4, eps=v), 1e-3, lo=0),
    _integer(N + "LayerNorm.__init__", "dim", "LayerNorm", lambda v: nn.LayerNorm(v), 1, lo=1),
    _integer(N + "Linear.__init__", "in_features", "Linear", lambda v: nn.Linear(v, 2), 3, lo=1),
    _integer(N + "Linear.__init__", "out_features", "Linear", lambda v: nn.Linear(2, v), 1, lo=1),
    _integer(N + "Embedding.__init__", "num_embeddings", "Embedding", lambda v: nn.Embedding(v, 2), 7, lo=1),
    _integer(N + "Embedding.__init__", "embedding_dim", "Embedding", lambda v: nn.Embedding(3, v), 2, lo=1),
    _integer(N + "LoRALinear.__init__", "rank", "LoRALinear", lambda v: nn.LoRALinear(nn.Linear(3, 2), v), 2, lo=1),
    _number(N + "LoRALinear.__init__", "alpha", "LoRALinear", lambda v: nn.LoRALinear(nn.Linear(3, 2), alpha=v), 1.0),
    _integer(N + "apply_lora", "rank", "apply_lora", lambda v: nn.apply_lora(nn.Sequential(nn.Linear(3, 2)), v),
             1, lo=1),
    _number(N + "apply_lora", "alpha", "apply_lora",
            lambda v: nn.apply_lora(nn.Sequential(nn.Linear(3, 2)), alpha=v), 32.0),
    _integer(SF + "cross_entropy", "ignore_index", "cross_entropy",
             lambda v: F.cross_entropy(mg.randn(2, 5), np.array([1, 2]), ignore_index=v), 1),
    Case(SF + "cross_entropy", "reduction", "cross_entropy",
         lambda v: F.cross_entropy(mg.randn(2, 5), np.array([1, 2]), reduction=v),
         st.one_of(st.text(max_size=5).filter(lambda s: s not in ("mean", "sum", "none")), st.none(),
                   st.just("MEAN")), "none"),
    _number(AM + "LossScaler.__init__", "init_scale", "LossScaler", lambda v: amp.LossScaler(init_scale=v),
            1.0, lo=0, lo_open=True),
    _number(AM + "LossScaler.__init__", "growth_factor", "LossScaler", lambda v: amp.LossScaler(growth_factor=v),
            1.5, lo=1, lo_open=True),
    _number(AM + "LossScaler.__init__", "backoff_factor", "LossScaler", lambda v: amp.LossScaler(backoff_factor=v),
            0.25, 0, 1, True, True),
    _integer(AM + "LossScaler.__init__", "growth_interval", "LossScaler",
             lambda v: amp.LossScaler(growth_interval=v), 1, lo=1),
    _number(AM + "LossScaler.load_state_dict", "scale", "LossScaler", lambda v: _scaler_state("scale", v), 8.0,
            lo=0, lo_open=True),
    _integer(AM + "LossScaler.load_state_dict", "growth_interval", "LossScaler",
             lambda v: _scaler_state("growth_interval", v), 10, lo=1),
    _number(AM + "loss_for_backward", "scale", "loss_for_backward",
            lambda v: amp.loss_for_backward(mg.ones(()), v), 1024.0, lo=0, lo_open=True),
    _number("minigrad.gradcheck.gradcheck", "eps", "gradcheck",
            lambda v: gradcheck(lambda t: t * 2, [mg.randn(2, dtype=np.float64, requires_grad=True)], eps=v),
            1e-5, lo=0, lo_open=True),
    *[_number("minigrad.gradcheck.gradcheck", k, "gradcheck",
              lambda v, k=k: gradcheck(lambda t: t * 2, [mg.randn(2, dtype=np.float64, requires_grad=True)],
                                       **{k: v}), 1e-4, lo=0) for k in ("atol", "rtol")],
    # a root rank is none of the kinds above (so no name rule asks for it), but is checked alike
    _integer("minigrad.distributed.broadcast_parameters", "root", "broadcast_parameters",
             lambda v: distributed.broadcast_parameters(_params(), v), 0, lo=0, hi=1),
    _integer("minigrad.distributed.broadcast_", "root", "broadcast_",
             lambda v: distributed.broadcast_(np.zeros(3), v), 0, lo=0, hi=1),
]

# a layer given the wrong width says so, and cat refuses mismatched shapes (named in the issue)
WIDTH_CASES = [
    (lambda: nn.LayerNorm(4)(mg.randn(2, 5)), "LayerNorm", "x"),
    (lambda: F.layer_norm(mg.randn(2, 5), mg.ones(4), mg.zeros(4)), "layer_norm", "w"),
    (lambda: F.layer_norm(mg.randn(2, 4), mg.ones(4), mg.zeros(5)), "layer_norm", "b"),
]


def _message_names(err: BaseException, case: Case) -> None:
    text = str(err)
    assert text.startswith(case.fn) or f"{case.fn}:" in text or f"{case.fn}(" in text, (
        f"{case.id}: the message does not name {case.fn!r}: {text}")
    assert case.arg in text, f"{case.id}: the message does not name the argument {case.arg!r}: {text}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_good_value_passes(case: Case):
    """The row's call is right: with a good value in place of the bad one, it works."""
    state = mg.get_rng_state()
    try:
        case.call(case.good)
    finally:
        mg.backend.set_rng_state(state)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_a_bad_value_is_refused_naming_the_function_and_argument(case: Case, data):
    value = data.draw(case.bad, label=case.arg)
    state = mg.get_rng_state()  # a row may seed: leave the process as it was
    try:
        with pytest.raises((ValueError, TypeError)) as err:
            case.call(value)
    finally:
        mg.backend.set_rng_state(state)
    assert not isinstance(err.value, (IndexError, KeyError)), f"{case.id}: {type(err.value).__name__}: {err.value}"
    _message_names(err.value, case)


@pytest.mark.parametrize("call, fn, arg", WIDTH_CASES, ids=[f"{c[1]}-{c[2]}" for c in WIDTH_CASES])
def test_a_width_that_does_not_fit_names_the_layer(call, fn, arg):
    with pytest.raises(ValueError) as err:
        call()
    assert f"{fn}" in str(err.value) and f"{arg} of shape" in str(err.value)


def test_the_table_covers_the_public_api():
    """Every public function whose arguments include an axis, an index, a mask, a list of tensors,
    a seed or a hyperparameter (by name, ARG_KINDS) has a row in CASES, or an EXEMPT reason."""
    public = _public_functions()
    assert len(public) > 100, f"found only {len(public)} public functions: the inspection is broken"
    covered = {(c.target, c.arg) for c in CASES}
    missing = sorted(checked_arguments() - covered - set(EXEMPT))
    assert not missing, ("public functions with an argument of a checked kind but no row in CASES: "
                         + ", ".join(f"{q}({a})" for q, a in missing))
    stale = sorted(t for t, _ in covered | set(EXEMPT) if t not in public)
    assert not stale, f"rows for functions that are not public (renamed?): {stale}"


def test_the_issues_examples():
    """The cases issue 20 names, one by one."""
    x = mg.randn(2, 3)
    for call, fn, arg in [
        (lambda: x.sum(axis=4), "sum", "axis"), (lambda: x.unsqueeze(7), "unsqueeze", "axis"),
        (lambda: x.max(axis=-3), "max", "axis"), (lambda: optim.AdamW(_params(), lr=math.nan), "AdamW", "lr"),
        (lambda: F.cross_entropy(mg.randn(2, 5), np.array([1.0, 2.0])), "cross_entropy", "targets"),
        (lambda: nn.LayerNorm(4)(mg.randn(2, 5)), "LayerNorm", "x"), (lambda: mg.cat([]), "cat", "tensors"),
        (lambda: mg.split(x, 1, axis=5), "split", "axis"), (lambda: mg.set_rng_state({"a": 1}), "set_rng_state", "state"),
        (lambda: mg.manual_seed(-1), "manual_seed", "seed"),
    ]:
        with pytest.raises((ValueError, TypeError), match=f"{fn}.*{arg}"):
            call()


def test_a_refused_state_changes_nothing():
    """set_rng_state checks everything before it changes anything."""
    mg.manual_seed(5)
    before = mg.get_rng_state()
    bad = dict(before, cpu=dict(before["cpu"], state={"state": "x", "inc": 1}))
    with pytest.raises(ValueError, match=r"set_rng_state: state\['cpu'\]"):
        mg.set_rng_state(dict(bad, seed=9))
    assert mg.get_rng_state() == before
