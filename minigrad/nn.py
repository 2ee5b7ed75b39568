"""Modules: parameters registered by attribute assignment, as in PyTorch."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from . import backend, checks
from . import functional as F
from .tensor import Tensor


class Parameter(Tensor):
    """A tensor that a Module owns and an optimizer updates (requires grad by default).

    Once an optimizer has gathered it into a FlatParameters (minigrad/flat.py), `data` is a view
    into the flat parameter array and `_grad_buf` the matching view into the flat gradient
    array, which backward() fills (so `grad` is that view after a backward).
    """

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data.data
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device!r})"


class StateDictError(KeyError):
    """load_state_dict found missing or unexpected keys, or shapes that do not match."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Module:
    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_param_names", [])
        object.__setattr__(self, "_module_names", [])
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_param_names" not in self.__dict__:
            Module.__init__(self)  # a subclass forgot super().__init__(); forgive it
        for registry in (self._param_names, self._module_names):
            if name in registry:
                registry.remove(name)
        if isinstance(value, Parameter):
            self._param_names.append(name)
        elif isinstance(value, Module):
            self._module_names.append(name)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        for registry in (self._param_names, self._module_names):
            if name in registry:
                registry.remove(name)
        object.__delattr__(self, name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ traversal
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name in self._module_names:
            yield name, getattr(self, name)

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        stack = [(prefix, self)]
        seen = set()
        while stack:
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            kids = [(f"{name}.{n}" if name else n, m) for n, m in mod.named_children()]
            stack.extend(reversed(kids))

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every parameter once (a tied weight is listed under its first name)."""
        seen = set()
        for mname, mod in self.named_modules(prefix):
            for pname in mod._param_names:
                p = getattr(mod, pname)
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, Any]":
        """name -> array (the parameters' own arrays, not copies)."""
        return OrderedDict((n, p.data) for n, p in self.named_parameters())

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays into the parameters in place; returns (missing, unexpected) keys.

        With strict (the default) any missing or unexpected key, and always any shape mismatch,
        raises StateDictError listing all of them at once.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {own[k].shape}"
                      for k in own if k in state and tuple(state[k].shape) != own[k].shape]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {'; '.join(mismatched)}")
        if problems:
            raise StateDictError(f"cannot load state dict into {type(self).__name__}: " + " | ".join(problems))
        for k, p in own.items():
            if k in state:
                value = state[k].data if isinstance(state[k], Tensor) else state[k]
                p.data[...] = backend.to_device(value, p.device).astype(p.dtype, copy=False)
        return missing, unexpected

    # ------------------------------------------------------------ modes, devices, dtypes
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def apply(self, fn: Callable[[Module], None]) -> Module:
        for m in self.modules():
            fn(m)
        return self

    def _map_params(self, fn: Callable[[Any], Any]) -> Module:
        for p in self.parameters():
            p.data = fn(p.data)
            p._grad_buf = None  # no longer a view of a flat buffer (an optimizer built before says so)
            if p.grad is not None:
                p.grad = fn(p.grad)
        return self

    def to(self, device: str) -> Module:
        """Move every parameter to "cpu" or "cuda" (in place, like PyTorch)."""
        device = backend.normalize_device(device)
        return self._map_params(lambda a: backend.to_device(a, device))

    def astype(self, dtype) -> Module:
        return self._map_params(lambda a: a.astype(dtype))

    def double(self) -> Module:
        return self.astype(np.float64)

    def float(self) -> Module:
        return self.astype(np.float32)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self.named_children():
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


def _uniform(shape, bound: float, device=None) -> np.ndarray:
    g = backend.rng(device)
    return (g.random(shape, dtype=np.float32) * (2 * bound) - bound).astype(np.float32)


class Linear(Module):
    """y = x @ weight + bias, with weight of shape (in_features, out_features) as GPT-2's Conv1D."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: str | None = None):
        super().__init__()
        in_features = checks.integer("Linear", "in_features", in_features, 1)
        out_features = checks.integer("Linear", "out_features", out_features, 1)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)  # PyTorch's default: U(-1/sqrt(in), 1/sqrt(in))
        self.weight = Parameter(_uniform((in_features, out_features), bound, device))
        self.bias = Parameter(_uniform((out_features,), bound, device)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, device: str | None = None):
        super().__init__()
        num_embeddings = checks.integer("Embedding", "num_embeddings", num_embeddings, 1)
        embedding_dim = checks.integer("Embedding", "embedding_dim", embedding_dim, 1)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        g = backend.rng(device)
        self.weight = Parameter(g.standard_normal((num_embeddings, embedding_dim), dtype=np.float32))

    def forward(self, idx) -> Tensor:
        return F.embedding(idx, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5, device: str | None = None):
        super().__init__()
        self.dim = checks.integer("LayerNorm", "dim", dim, 1)
        self.eps = checks.number("LayerNorm", "eps", eps, lo=0)
        xp = backend.xp_for(device)
        self.weight = Parameter(xp.ones(dim, dtype=np.float32))
        self.bias = Parameter(xp.zeros(dim, dtype=np.float32))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.dim,):
            raise ValueError(f"LayerNorm({self.dim}): x of shape {x.shape} does not end in {self.dim}")
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = checks.number("Dropout", "p", p, 0.0, 1.0, hi_open=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ModuleList(Module):
    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        self._items: list[Module] = []
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        setattr(self, str(len(self._items)), module)
        self._items.append(module)
        return self

    def __getitem__(self, i):
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items)


class Sequential(ModuleList):
    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


class LoRALinear(Module):
    """A frozen Linear plus a trainable low-rank update: x @ W + b + (alpha / r) * x @ A @ B.

    B starts at zero, so the wrapped layer first computes exactly what the base did. The base's
    parameters keep their names (`weight`, `bias`), so checkpoints of the base still load.
    """

    def __init__(self, base: Linear, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        if not isinstance(base, Linear):
            raise TypeError(f"LoRALinear: base must be an nn.Linear, got {type(base).__name__}")
        rank = checks.integer("LoRALinear", "rank", rank, 1)
        alpha = checks.number("LoRALinear", "alpha", alpha)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight.requires_grad_(False)
        self.bias = base.bias.requires_grad_(False) if base.bias is not None else None
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        xp = backend.array_module(base.weight.data)
        device = base.weight.device
        bound = 1.0 / math.sqrt(self.in_features)
        self.lora_A = Parameter(backend.to_device(_uniform((self.in_features, rank), bound), device))
        self.lora_B = Parameter(xp.zeros((rank, self.out_features), dtype=base.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        base = F.linear(x, self.weight, self.bias)
        return base + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def merged_weight(self):
        """The single weight matrix W + (alpha / r) A B that this layer computes."""
        return self.weight.data + self.scaling * (self.lora_A.data @ self.lora_B.data)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha}"


def apply_lora(model: Module, rank: int = 8, alpha: float = 16.0,
               select: Callable[[str, Linear], bool] | None = None) -> int:
    """Replace the model's Linear layers (those `select(name, layer)` accepts) by LoRALinear.

    Freezes every other parameter too, so only the adapters train. Returns how many were wrapped.
    """
    if not isinstance(model, Module):
        raise TypeError(f"apply_lora: model must be an nn.Module, got {type(model).__name__}")
    rank = checks.integer("apply_lora", "rank", rank, 1)  # before anything is frozen or wrapped
    alpha = checks.number("apply_lora", "alpha", alpha)
    model.requires_grad_(False)
    count = 0
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, Linear) and (select is None or select(full, child)):
                setattr(mod, child_name, LoRALinear(child, rank, alpha))
                if isinstance(mod, ModuleList):
                    mod._items[int(child_name)] = getattr(mod, child_name)
                count += 1
    return count
