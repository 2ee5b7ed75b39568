"""Every op of minigrad: one module per family, each Function's backward right under its forward,
then the public function that calls it. Read them in this order:

    common.py          unbroadcast, scatter_add, segment_sum: what the backwards share
    elementwise.py     + - * / neg pow exp log tanh sqrt relu cast where masked_fill
    reduce.py          sum mean max
    shape.py           reshape permute transpose getitem cat stack split chunk
    products.py        matmul, linear
    layers.py          embedding layer_norm gelu dropout bias_residual
    softmax_family.py  softmax log_softmax cross_entropy (the softmax arithmetic, once)
    attention.py       scaled_dot_product_attention, causal_self_attention
    table.py           every op with its gradcheck and benchmark inputs (tests and bench read it)

Tensor's operators and methods (tensor.py) and minigrad.functional (the `F` namespace) call the
functions here. A Function's name ends in Fn (LinearFn), so it is never confused with the
function (F.linear) or the nn module (nn.Linear).
"""
from .attention import AttentionFn, causal_self_attention, keep_mask, scaled_dot_product_attention
from .common import lift, on_device_of, raw, scatter_add, segment_sum, unbroadcast
from .elementwise import (AddFn, CastFn, DivFn, ExpFn, LogFn, MulFn, NegFn, PowFn, ReluFn, SqrtFn, SubFn,
                          TanhFn, WhereFn, add, cast, div, masked_fill, mul, power, relu, sub, where)
from .layers import DropoutFn, EmbeddingFn, GeluFn, LayerNormFn, bias_residual, dropout, embedding, gelu, layer_norm
from .products import LinearFn, MatMulFn, linear, matmul
from .reduce import MaxFn, MeanFn, SumFn, max_, mean, sum_
from .shape import (ConcatFn, GetItemFn, PermuteFn, ReshapeFn, cat, chunk, getitem, permute, reshape, split,
                    squeeze, stack, transpose, unsqueeze)
from .softmax_family import (CrossEntropyFn, LogSoftmaxFn, SoftmaxFn, cross_entropy, log_softmax,
                             logsumexp, softmax, softmax_backward, softmax_into)

__all__ = [
    "AddFn", "SubFn", "MulFn", "DivFn", "NegFn", "PowFn", "ExpFn", "LogFn", "TanhFn", "SqrtFn", "ReluFn",
    "CastFn", "WhereFn", "SumFn", "MeanFn", "MaxFn", "MatMulFn", "LinearFn", "ReshapeFn", "PermuteFn",
    "GetItemFn", "ConcatFn", "EmbeddingFn", "LayerNormFn", "GeluFn", "DropoutFn", "SoftmaxFn",
    "LogSoftmaxFn", "CrossEntropyFn", "AttentionFn",
    "add", "sub", "mul", "div", "power", "relu", "cast", "where", "masked_fill", "sum_", "mean", "max_",
    "matmul", "linear", "reshape", "permute", "transpose", "getitem", "unsqueeze", "squeeze", "cat", "stack",
    "split", "chunk", "embedding", "layer_norm", "gelu", "dropout", "bias_residual", "softmax", "log_softmax",
    "cross_entropy", "scaled_dot_product_attention", "causal_self_attention", "keep_mask", "softmax_into", "softmax_backward",
    "logsumexp", "unbroadcast", "scatter_add", "segment_sum", "lift", "raw", "on_device_of",
]
