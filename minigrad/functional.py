"""The functional namespace, as torch.nn.functional: `import minigrad.functional as F`.

Each function here is defined in minigrad/ops/, next to the Function (forward and backward) that
it applies: linear in products.py; embedding, layer_norm, gelu, dropout, bias_residual in layers.py;
softmax, log_softmax, cross_entropy in softmax_family.py; scaled_dot_product_attention,
causal_self_attention (and keep_mask) in attention.py; relu in elementwise.py.
"""
from .ops.attention import causal_self_attention, keep_mask, scaled_dot_product_attention
from .ops.elementwise import relu
from .ops.layers import bias_residual, dropout, embedding, gelu, layer_norm
from .ops.products import linear
from .ops.softmax_family import cross_entropy, log_softmax, softmax

__all__ = ["linear", "embedding", "layer_norm", "gelu", "softmax", "log_softmax", "cross_entropy",
           "scaled_dot_product_attention", "causal_self_attention", "keep_mask", "dropout", "relu",
           "bias_residual"]
