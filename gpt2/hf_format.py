"""Hugging Face's GPT-2 checkpoint format, both ways: tensor names and shapes, reading a file
into a model and a model's weights out, config.json to and from our GPT2Config.

A checkpoint is a `model.safetensors` file whose tensor names are those of `GPT2Model`
(`wte.weight`, `h.0.attn.c_attn.weight`, ...), the names our model uses too, optionally next to
a `config.json` holding Hugging Face's config keys. `gpt2.weights` finds checkpoints (the
official ones by name) and saves them, through this module.

Loading reads one tensor at a time from the file and copies it straight into the model's
parameter, so even the 1558M model (6.2 GB in float32) is never held twice in memory.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from minigrad import backend, nn

from .config import PRESETS, GPT2Config
from .model import GPT2

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_PREFIX = "transformer."             # GPT2LMHeadModel saves its GPT2Model under this prefix
_HEAD = "lm_head.weight"             # the output head: tied to wte.weight in GPT-2, unless untied
# The causal mask that older transformers versions saved as buffers: not weights, so skipped.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# Hugging Face activations that are the tanh approximation of GELU our model computes.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


class HFCheckpointError(ValueError):
    """A checkpoint file or its config cannot be used (unreadable, inconsistent, incomplete)."""


# ------------------------------------------------------------------ finding the file and its config
def resolve_path(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """For a local checkpoint file or folder: (the .safetensors file, the parsed config.json
    next to it or None)."""
    if path.is_dir():
        folder, file = path, path / WEIGHTS_FILE
        if not file.is_file():
            hint = ""
            if (path / f"{WEIGHTS_FILE}.index.json").is_file():
                hint = " (it holds a sharded checkpoint, which is not supported: GPT-2 fits one file)"
            elif (path / "pytorch_model.bin").is_file():
                hint = " (it holds only pytorch_model.bin: re-save it with safe_serialization=True)"
            raise FileNotFoundError(f"folder {path} holds no {WEIGHTS_FILE}{hint}")
    elif path.is_file():
        folder, file = path.parent, path
    else:
        raise FileNotFoundError(f"no such checkpoint file or folder: {path}")
    cfg_path = folder / CONFIG_FILE
    # A config.json belongs to the file only if the file is the folder's model.safetensors.
    if file.name != WEIGHTS_FILE or not cfg_path.is_file():
        return file, None
    try:
        hf_config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFCheckpointError(f"{cfg_path} is not a readable JSON config: {e}") from e
    if not isinstance(hf_config, dict):
        raise HFCheckpointError(f"{cfg_path} must hold a JSON object, got {type(hf_config).__name__}")
    return file, hf_config


# ------------------------------------------------------------------ names and shapes
def model_key(checkpoint_key: str) -> str | None:
    """Our parameter name for a checkpoint tensor name, or None for a tensor to skip.

    Strips GPT2LMHeadModel's "transformer." prefix and skips the saved causal-mask buffers.
    `lm_head.weight` is returned unchanged: a tied model checks it against `wte.weight`.
    """
    name = checkpoint_key.removeprefix(_PREFIX)
    return None if _MASK_BUFFER.fullmatch(name) else name


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter name of a GPT2 with this config and its shape, without building one."""
    C, V = config.n_embd, config.vocab_size
    shapes = {"wte.weight": (V, C), "wpe.weight": (config.n_ctx, C)}
    for i in range(config.n_layer):
        p = f"h.{i}."
        shapes |= {p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
                   p + "attn.c_attn.weight": (C, 3 * C)}
        if config.qkv_bias:
            shapes[p + "attn.c_attn.bias"] = (3 * C,)
        shapes |= {p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                   p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
                   p + "mlp.c_fc.weight": (C, 4 * C), p + "mlp.c_fc.bias": (4 * C,),
                   p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,)}
    shapes |= {"ln_f.weight": (C,), "ln_f.bias": (C,)}
    if not config.tie_word_embeddings:
        shapes[_HEAD] = (V, C)
    return shapes


def _short_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def check_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                 what: str) -> None:
    """Raise minigrad's StateDictError listing every missing, unexpected and mis-shaped tensor."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(found[k])} vs model {tuple(expected[k])}"
                  for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched[:8])}"
                        + (f"; ... and {len(mismatched) - 8} more" if len(mismatched) > 8 else ""))
    if problems:
        raise nn.StateDictError(f"cannot load {what}: " + " | ".join(problems))


def _config_summary(config: GPT2Config) -> str:
    return (f"n_layer={config.n_layer}, n_head={config.n_head}, n_embd={config.n_embd}, "
            f"n_ctx={config.n_ctx}, vocab_size={config.vocab_size}")


# ------------------------------------------------------------------ reading the header
class HFCheckpoint:
    """An open .safetensors file: tensor shapes from its header, tensors read on demand."""

    def __init__(self, file: Path):
        from safetensors import SafetensorError, safe_open

        self.file = file
        try:
            self._handle = safe_open(str(file), framework="numpy")
            raw = {k: tuple(self._handle.get_slice(k).get_shape()) for k in self._handle.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise HFCheckpointError(f"{file} is not a readable safetensors file: {e}") from e
        # our name -> (the file's name, shape)
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        for key, shape in raw.items():
            name = model_key(key)
            if name is None:
                continue
            if name in self.tensors:
                raise HFCheckpointError(f"{file} holds both {self.tensors[name][0]!r} and {key!r}")
            self.tensors[name] = (key, shape)
        # A head-only checkpoint (no wte) still carries the tied matrix: use it as wte.
        if "wte.weight" not in self.tensors and _HEAD in self.tensors:
            self.tensors["wte.weight"] = self.tensors.pop(_HEAD)

    def shapes(self, head: bool = False) -> dict[str, tuple[int, ...]]:
        """Our name -> shape for every tensor to load; lm_head.weight only when `head` (untied)."""
        return {n: s for n, (_, s) in self.tensors.items() if head or n != _HEAD}

    def head_is_tied(self) -> bool:
        """True unless the file holds an lm_head.weight that differs from wte.weight."""
        if _HEAD not in self.tensors or "wte.weight" not in self.tensors:
            return True
        if self.tensors[_HEAD][1] != self.tensors["wte.weight"][1]:
            return False
        return bool(np.array_equal(self.read(_HEAD), self.read("wte.weight")))

    def read(self, name: str) -> np.ndarray:
        from safetensors import SafetensorError

        key = self.tensors[name][0]
        try:
            return self._handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise HFCheckpointError(f"cannot read tensor {key!r} from {self.file}: {e}") from e

    def close(self) -> None:
        self._handle.__exit__(None, None, None)  # unmaps the file

    def __enter__(self) -> HFCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ config.json and GPT2Config
def infer_config(ckpt: HFCheckpoint, hf_config: Mapping[str, Any] | None,
                 overrides: Mapping[str, Any]) -> GPT2Config:
    """The config of a local checkpoint: overrides, then config.json, then the tensor shapes."""
    shapes = ckpt.shapes()
    values: dict[str, Any] = {}
    if "wte.weight" in shapes and len(shapes["wte.weight"]) == 2:
        values["vocab_size"], values["n_embd"] = shapes["wte.weight"]
    if "wpe.weight" in shapes and len(shapes["wpe.weight"]) == 2:
        values["n_ctx"] = shapes["wpe.weight"][0]
    layers = {int(m.group(1)) for n in shapes if (m := re.match(r"h\.(\d+)\.", n))}
    if layers:
        values["n_layer"] = max(layers) + 1
        values["qkv_bias"] = "h.0.attn.c_attn.bias" in shapes

    if hf_config is not None:
        _check_supported(hf_config, ckpt.file.parent / CONFIG_FILE)
        for ours, theirs in (("n_layer", "n_layer"), ("n_head", "n_head"), ("n_embd", "n_embd"),
                             ("vocab_size", "vocab_size"), ("layer_norm_eps", "layer_norm_epsilon")):
            if theirs in hf_config:
                values[ours] = hf_config[theirs]
        # n_positions is the size of wpe; old configs also carry n_ctx, normally equal to it
        n_ctx = hf_config.get("n_positions", hf_config.get("n_ctx"))
        if n_ctx is not None:
            values["n_ctx"] = n_ctx
        values["tie_word_embeddings"] = bool(hf_config.get("tie_word_embeddings", True))
    elif "tie_word_embeddings" not in overrides:
        values["tie_word_embeddings"] = ckpt.head_is_tied()
    values.update(overrides)

    missing = [k for k in ("vocab_size", "n_embd", "n_ctx", "n_layer") if k not in values]
    if missing:
        raise HFCheckpointError(f"{ckpt.file} does not look like a GPT-2 checkpoint: cannot tell "
                              f"{', '.join(missing)} (no wte.weight / wpe.weight / h.* tensors)")
    if "n_head" not in values:
        # Shapes cannot tell heads apart; the official sizes pin them down.
        for preset in PRESETS.values():
            if (preset["n_embd"], preset["n_layer"]) == (values["n_embd"], values["n_layer"]):
                values["n_head"] = preset["n_head"]
                break
        else:
            raise HFCheckpointError(
                f"cannot tell the number of attention heads of {ckpt.file} (n_layer={values['n_layer']}, "
                f"n_embd={values['n_embd']}, no config.json): pass it, e.g. from_pretrained(path, n_head=...)")
    return make_config(values)


def _check_supported(hf_config: Mapping[str, Any], where: Path) -> None:
    """Refuse Hugging Face options that change the maths of the model we would build."""
    act = hf_config.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise HFCheckpointError(f"{where} asks for activation {act!r}; this model computes "
                              f"the tanh GELU ({' or '.join(_TANH_GELUS)})")
    for option, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                              ("add_cross_attention", False)):
        if hf_config.get(option, supported) != supported:
            raise HFCheckpointError(f"{where} sets {option}={hf_config[option]!r}; "
                                  f"this model supports only {option}={supported}")


def make_config(values: Mapping[str, Any]) -> GPT2Config:
    """GPT2Config(**values), refusing (by name) a key that is no GPT2Config field."""
    known = set(GPT2Config.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown GPT2Config option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return GPT2Config(**values)


def hf_config_dict(config: GPT2Config) -> dict[str, Any]:
    """Hugging Face's config.json keys for this config (transformers' GPT2Config reads them)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.n_ctx,
        "n_ctx": config.n_ctx,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": config.tie_word_embeddings,
    }


# ------------------------------------------------------------------ loading and exporting
def load_weights(model: GPT2, ckpt: HFCheckpoint, what: str | None = None) -> GPT2:
    """Copy the checkpoint's tensors into `model`'s parameters, one tensor at a time.

    Names and shapes are checked against the header before the first copy, so a checkpoint
    that does not fit leaves the model untouched.
    """
    what = what or f"{ckpt.file} into GPT2({_config_summary(model.config)})"
    own = dict(model.named_parameters())
    tied = model.config.tie_word_embeddings
    check_shapes({n: p.shape for n, p in own.items()}, ckpt.shapes(head=not tied), what)
    if tied and _HEAD in ckpt.tensors and ckpt.tensors[_HEAD][1] != own["wte.weight"].shape:
        raise HFCheckpointError(f"{ckpt.file}: lm_head.weight has shape {ckpt.tensors[_HEAD][1]} but "
                              f"wte.weight {own['wte.weight'].shape}; GPT-2 ties them (the head is wte)")
    for name, param in own.items():
        value = ckpt.read(name)
        # The parameter's own array is written in place (and converted to its dtype and device).
        param.data[...] = backend.to_device(value, param.device).astype(param.dtype, copy=False)
        del value  # the next tensor is read only once this one is gone
    if tied and _HEAD in ckpt.tensors:
        wte = own["wte.weight"]
        head = ckpt.read(_HEAD).astype(wte.dtype, copy=False)
        if not bool((backend.to_device(wte.data, "cpu") == head).all()):
            raise HFCheckpointError(f"{ckpt.file}: lm_head.weight differs from wte.weight, but this model "
                                  f"ties them (the output head is wte); load it with tie_word_embeddings=False")
    return model


def export_state(model: GPT2) -> dict[str, Any]:
    """The model's weights under GPT2Model's names, LoRA adapters merged into their layers."""
    state: dict[str, Any] = {}
    merged = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.LoRALinear):
            state[f"{mname}.weight"] = mod.merged_weight()
            merged.update({f"{mname}.lora_A", f"{mname}.lora_B"})
    for name, p in model.named_parameters():
        if name not in merged and name not in state:
            state[name] = p.data
    expected = expected_shapes(model.config)
    extra = [n for n in state if n not in expected]
    if extra:
        raise ValueError(f"save_pretrained writes GPT-2's own layout, and this model has other "
                         f"parameters too: {_short_list(extra)}; save it with minigrad.io.save instead")
    return state
