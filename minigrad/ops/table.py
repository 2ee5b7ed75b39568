"""Every differentiable op, declared once for the tests and the benchmarks.

An entry names the op, the call that runs it (its public function or Tensor method), the
Functions that call reaches, and one input generator. Given a NumPy Generator, sizes and a dtype,
the generator returns the differentiable arrays and the constant keyword arguments (ids, targets,
masks): with SMALL sizes and float64 they are gradcheck's inputs (tests/test_gradcheck_ops.py
checks every entry on every backend), with gpt2_sizes() and float32 they are bench/ops.py's.
A test fails when a Function defined in minigrad has no entry here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from .. import backend, kernels
from ..tensor import Function, Tensor
from . import attention, elementwise as ew, layers, products, reduce, shape, softmax_family as sf


class Sizes(NamedTuple):
    """batch, tokens, width, heads, vocabulary"""

    B: int
    T: int
    C: int
    H: int
    V: int


SMALL = Sizes(B=2, T=3, C=4, H=2, V=5)  # each input a few dozen numbers: central differences stay cheap


def gpt2_sizes(B: int = 2, T: int = 256, C: int = 768, H: int = 12, V: int = 50257) -> Sizes:
    """GPT-2 124M's shapes at batch 2 x 256 tokens, as bench/ops.py times them on the CPU."""
    return Sizes(B, T, C, H, V)


Made = tuple[list[np.ndarray], dict[str, Any]]


@dataclass(frozen=True)
class OpEntry:
    name: str
    call: Callable[..., Tensor]                        # call(*tensors, **consts)
    functions: tuple[type[Function], ...]              # the Functions it reaches (the Fused ones on CuPy float32)
    make: Callable[[np.random.Generator, Sizes, Any], Made]

    def inputs(self, rng: np.random.Generator, device: str, sizes: Sizes = SMALL,
               dtype: Any = np.float64) -> tuple[list[Tensor], dict[str, Any]]:
        """Leaves that require grad on `device`, and the constant keyword arguments."""
        arrays, consts = self.make(rng, sizes, dtype)
        return [Tensor(a, requires_grad=True, device=device, dtype=dtype) for a in arrays], consts


def _normal(rng: np.random.Generator, dtype: Any, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _away_from_zero(rng: np.random.Generator, dtype: Any, *shape: int) -> np.ndarray:
    """|v| in [0.3, 2], either sign: safe denominators, no relu kink within finite differences."""
    return (rng.uniform(0.3, 2.0, shape) * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)


def _positive(rng: np.random.Generator, dtype: Any, *shape: int) -> np.ndarray:
    return rng.uniform(0.3, 2.0, shape).astype(dtype)


def _x(kind: Callable = _normal) -> Callable[[np.random.Generator, Sizes, Any], Made]:
    """One (B, T, C) activation."""
    return lambda rng, s, dt: ([kind(rng, dt, s.B, s.T, s.C)], {})


def _x_and_row(kind: Callable = _normal) -> Callable[[np.random.Generator, Sizes, Any], Made]:
    """A (B, T, C) activation and a (C,) row that broadcasts against it."""
    return lambda rng, s, dt: ([_normal(rng, dt, s.B, s.T, s.C), kind(rng, dt, s.C)], {})


def _fixed_seed_dropout(x: Tensor) -> Tensor:
    backend.manual_seed(0)  # the same mask on every call: forward is a fixed linear map
    return layers.dropout(x, 0.3)


def _fixed_seed_attention_dropout(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    backend.manual_seed(0)
    return attention.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.2)


def _fixed_seed_self_attention_dropout(qkv: Tensor, bias: Tensor, n_head: int) -> Tensor:
    backend.manual_seed(0)
    return attention.causal_self_attention(qkv, n_head, dropout_p=0.2, bias=bias)


def _fixed_seed_bias_residual_dropout(x: Tensor, bias: Tensor, residual: Tensor) -> Tensor:
    backend.manual_seed(0)
    return layers.bias_residual(x, bias, residual, dropout_p=0.3)


def _embeddings_dropout(tokens: Tensor, positions: Tensor) -> Tensor:
    backend.manual_seed(0)
    return layers.bias_residual(tokens, positions, dropout_p=0.3)  # dropout(tokens + positions), GPT-2's


def _qkv(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.H, s.T, s.C // s.H) for _ in range(3)], {}


def _padded_qkv(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    arrays, _ = _qkv(rng, s, dt)
    mask = np.ones((s.B, 1, 1, s.T), dtype=bool)
    mask[0, ..., 0] = False  # the first sequence is left-padded by one token
    return arrays, {"attn_mask": mask}


def _packed_qkv(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.T, 3 * s.C), _normal(rng, dt, 3 * s.C)], {"n_head": s.H}


def _linear(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.T, s.C), _normal(rng, dt, s.C, 3 * s.C, scale=s.C ** -0.5),
            _normal(rng, dt, 3 * s.C)], {}


def _tied_head(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.T, s.C), _normal(rng, dt, s.V, s.C, scale=s.C ** -0.5)], {}


def _logits(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    targets = rng.integers(0, s.V, (s.B, s.T))
    targets[0, 0] = -100  # one ignored position
    return [_normal(rng, dt, s.B, s.T, s.V)], {"targets": targets}


def _table(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.V, s.C)], {"idx": rng.integers(0, s.V, (s.B, s.T))}


def _ln(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.T, s.C), 1 + _normal(rng, dt, s.C, scale=0.1), _normal(rng, dt, s.C)], {}


def _where(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.T, s.C), _normal(rng, dt, s.C)], {"cond": rng.random((s.T, s.C)) < 0.5}


def _rows(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.T, s.C)], {"index": rng.integers(0, s.T, 2 * s.T)}


def _three(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.T, s.C) for _ in range(3)], {}


def _bias_residual(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.T, s.C), _normal(rng, dt, s.C), _normal(rng, dt, s.B, s.T, s.C)], {}


def _tokens_positions(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.T, s.C), _normal(rng, dt, s.T, s.C)], {}


def _square(rng: np.random.Generator, s: Sizes, dt: Any) -> Made:
    return [_normal(rng, dt, s.B, s.T, s.C), _normal(rng, dt, s.C, s.C, scale=s.C ** -0.5)], {}


OPS: tuple[OpEntry, ...] = (
    # elementwise.py
    OpEntry("add", ew.add, (ew.AddFn,), _x_and_row()),
    OpEntry("sub", ew.sub, (ew.SubFn,), _x_and_row()),
    OpEntry("mul", ew.mul, (ew.MulFn,), _x_and_row()),
    OpEntry("div", ew.div, (ew.DivFn,), _x_and_row(_away_from_zero)),
    OpEntry("neg", lambda x: -x, (ew.NegFn,), _x()),
    OpEntry("pow", lambda x: x ** 1.5, (ew.PowFn,), _x(_positive)),
    OpEntry("exp", Tensor.exp, (ew.ExpFn,), _x()),
    OpEntry("log", Tensor.log, (ew.LogFn,), _x(_positive)),
    OpEntry("tanh", Tensor.tanh, (ew.TanhFn,), _x()),
    OpEntry("sqrt", Tensor.sqrt, (ew.SqrtFn,), _x(_positive)),
    OpEntry("relu", ew.relu, (ew.ReluFn,), _x(_away_from_zero)),
    OpEntry("cast", lambda x: ew.cast(x, x.dtype), (ew.CastFn,), _x()),
    OpEntry("where", lambda a, b, cond: ew.where(cond, a, b), (ew.WhereFn,), _where),
    OpEntry("masked_fill", lambda x, cond: ew.masked_fill(x, cond, -1.0), (ew.WhereFn,),
            lambda rng, s, dt: ([_normal(rng, dt, s.B, s.T, s.C)], {"cond": rng.random((s.T, s.C)) < 0.5})),
    # reduce.py
    OpEntry("sum", lambda x: reduce.sum_(x, axis=-1), (reduce.SumFn,), _x()),
    OpEntry("mean", lambda x: reduce.mean(x, axis=(0, 1)), (reduce.MeanFn,), _x()),
    OpEntry("max", lambda x: reduce.max_(x, axis=-1, keepdims=True), (reduce.MaxFn,), _x()),
    # shape.py
    OpEntry("reshape", lambda x: shape.reshape(x, x.shape[0], -1), (shape.ReshapeFn,), _x()),
    OpEntry("transpose", lambda x: shape.transpose(x, 0, 2), (shape.PermuteFn,), _x()),
    OpEntry("getitem slice", lambda x: x[:, 1:, ::2], (shape.GetItemFn,), _x()),
    OpEntry("getitem rows", lambda x, index: x[:, index], (shape.GetItemFn,), _rows),
    OpEntry("cat", lambda a, b, c: shape.cat([a, b, c], axis=-1), (shape.ConcatFn,), _three),
    # products.py
    OpEntry("matmul", products.matmul, (products.MatMulFn,), _square),
    OpEntry("linear", products.linear, (products.LinearFn,), _linear),
    OpEntry("linear tied head", lambda x, w: products.linear(x, w, transposed=True), (products.LinearFn,), _tied_head),
    # layers.py
    OpEntry("embedding", lambda w, idx: layers.embedding(idx, w), (layers.EmbeddingFn,), _table),
    OpEntry("layer_norm", layers.layer_norm, (layers.LayerNormFn, kernels.FusedLayerNorm), _ln),
    OpEntry("gelu", layers.gelu, (layers.GeluFn, kernels.FusedGelu), _x()),
    OpEntry("gelu with bias", layers.gelu, (layers.GeluFn, ew.AddFn, kernels.FusedGelu), _x_and_row()),
    OpEntry("dropout", _fixed_seed_dropout, (layers.DropoutFn,), _x()),
    OpEntry("bias_residual", layers.bias_residual, (ew.AddFn, kernels.FusedBiasResidual), _bias_residual),
    OpEntry("bias_residual dropout", _fixed_seed_bias_residual_dropout,
            (ew.AddFn, layers.DropoutFn, kernels.FusedBiasResidual), _bias_residual),
    OpEntry("bias_residual embeddings", _embeddings_dropout, (ew.AddFn, layers.DropoutFn, kernels.FusedBiasResidual),
            _tokens_positions),
    # softmax_family.py
    OpEntry("softmax", sf.softmax, (sf.SoftmaxFn,), _x()),
    OpEntry("log_softmax", sf.log_softmax, (sf.LogSoftmaxFn,), _x()),
    OpEntry("cross_entropy", sf.cross_entropy, (sf.CrossEntropyFn, kernels.FusedCrossEntropy), _logits),
    # attention.py
    OpEntry("attention", lambda q, k, v: attention.scaled_dot_product_attention(q, k, v, is_causal=True),
            (attention.AttentionFn, kernels.FusedAttention), _qkv),
    OpEntry("attention padded", attention.scaled_dot_product_attention, (attention.AttentionFn,), _padded_qkv),
    OpEntry("attention dropout", _fixed_seed_attention_dropout, (attention.AttentionFn,), _qkv),
    OpEntry("causal_self_attention", lambda qkv, bias, n_head: attention.causal_self_attention(qkv, n_head, bias=bias),
            (ew.AddFn, shape.ReshapeFn, shape.PermuteFn, shape.GetItemFn, attention.AttentionFn,
             kernels.FusedSelfAttention), _packed_qkv),
    OpEntry("causal_self_attention dropout", _fixed_seed_self_attention_dropout,
            (ew.AddFn, shape.ReshapeFn, shape.PermuteFn, shape.GetItemFn, attention.AttentionFn,
             kernels.FusedSelfAttention), _packed_qkv),
)


def by_name(name: str) -> OpEntry:
    for entry in OPS:
        if entry.name == name:
            return entry
    raise KeyError(f"no op named {name!r} in minigrad.ops.table")
