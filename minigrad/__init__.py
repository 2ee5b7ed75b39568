"""minigrad: a small reverse-mode autograd engine on NumPy (CPU) and CuPy (NVIDIA GPU).

    import minigrad as mg
    import minigrad.functional as F
    x = mg.randn(4, 3, requires_grad=True)
    loss = F.gelu(x @ mg.randn(3, 2)).sum()
    loss.backward()          # x.grad now holds d loss / d x
"""
from . import backend
from . import functional, nn, ops, optim
from .backend import BackendError, get_rng_state, gpu_available, manual_seed, set_rng_state
from .gradcheck import GradcheckError, gradcheck
from .io import load, save
from .ops import cat, chunk, split, stack, where
from .creation import arange, full, ones, rand, randn, tensor, zeros
from .tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad

__all__ = [
    "Tensor", "Function", "tensor", "zeros", "ones", "full", "randn", "rand", "arange",
    "no_grad", "enable_grad", "is_grad_enabled", "cat", "stack", "split", "chunk", "where",
    "manual_seed", "get_rng_state", "set_rng_state", "gpu_available", "BackendError",
    "gradcheck", "GradcheckError", "save", "load", "functional", "nn", "ops", "optim", "backend",
]
