"""GPT-2 weights by name or path: the official checkpoints, local ones, and saving.

The four official sizes are downloaded once into the cache (`files.hub`) under
`weights/{gpt2,gpt2-medium,gpt2-large,gpt2-xl}/`. The format of a checkpoint (Hugging Face's
`model.safetensors` and `config.json`) and reading it into a model are `gpt2.hf_format`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from files import hub
from minigrad import backend
from files.atomic import atomic_write
from minigrad.io import save

from .config import HF_NAMES, PRESETS, GPT2Config
from .hf_format import (CONFIG_FILE, WEIGHTS_FILE, HFCheckpoint, check_shapes, expected_shapes,
                        export_state, hf_config_dict, infer_config, load_weights, make_config,
                        resolve_path)
from .model import GPT2

HF_URL = "https://huggingface.co/openai-community/{hf_name}/resolve/main/model.safetensors"

# sha256 and size in bytes of each official file, checked by the download when known. They were
# not known when this was written (no network): after a download you trust, record them here
# from `files.hub.sha256_of(path)` and `path.stat().st_size`. Until then the file's header is
# checked instead: every tensor of the preset present, with the right shape.
KNOWN_FILES: dict[str, dict[str, Any]] = {
    "gpt2": {"sha256": None, "size": None},
    "gpt2-medium": {"sha256": None, "size": None},
    "gpt2-large": {"sha256": None, "size": None},
    "gpt2-xl": {"sha256": None, "size": None},
}


# ------------------------------------------------------------------ finding the file
def _preset_key(name: str) -> str | None:
    """"124M" for "124M" or "gpt2", None when `name` is not an official size."""
    if name in PRESETS:
        return name
    return {hf: key for key, hf in HF_NAMES.items()}.get(name)


def download(name: str, progress: bool = True) -> Path:
    """The cached `model.safetensors` of an official size, downloading it first if needed.

    Raises files.hub.MissingFileError (naming the URL and where to put the file) when it is
    not cached and cannot be downloaded.
    """
    key = _preset_key(name)
    if key is None:
        raise ValueError(f"unknown GPT-2 size {name!r}; known: {', '.join(_known_names())}")
    hf_name = HF_NAMES[key]
    url = HF_URL.format(hf_name=hf_name)
    known = KNOWN_FILES.get(hf_name, {})
    try:
        return hub.ensure_file(f"weights/{hf_name}/{WEIGHTS_FILE}", url, sha256=known.get("sha256"),
                               size=known.get("size"), progress=progress)
    except hub.MissingFileError as err:
        gb = _num_params(expected_shapes(GPT2Config.preset(key))) * 4 / 1e9
        raise hub.MissingFileError(f"the GPT-2 {key} weights (about {gb:.1f} GB) are not available: {err}",
                                   url=err.url, path=err.path, reason=err.reason) from err


def _known_names() -> list[str]:
    return [*PRESETS, *HF_NAMES.values()]


def _num_params(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


# ------------------------------------------------------------------ loading
def from_pretrained(name_or_path: str | os.PathLike, device: str = "cpu", progress: bool = True,
                    **overrides: Any) -> GPT2:
    """A GPT2 in eval mode with the weights of an official size or of a local checkpoint.

    name_or_path: "124M", "355M", "774M", "1558M" (or "gpt2", "gpt2-medium", "gpt2-large",
        "gpt2-xl"), downloaded once into the cache; or a `.safetensors` file; or a folder with
        `model.safetensors` and optionally Hugging Face's `config.json` (a local folder whose
        name is also a size needs a path form such as "./gpt2").
    overrides: GPT2Config fields, e.g. dropout=0.1 for fine-tuning; shape-changing ones must
        match the checkpoint.
    """
    key = _preset_key(str(name_or_path)) if isinstance(name_or_path, str) else None
    if key is not None:
        file, hf_config = download(key, progress=progress), None
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{name_or_path!r} is neither a GPT-2 size "
                                    f"({', '.join(_known_names())}) nor an existing checkpoint file or folder")
        file, hf_config = resolve_path(path)

    with HFCheckpoint(file) as ckpt:
        if key is not None:
            # No digest to check yet (see KNOWN_FILES): the header must at least be the preset's.
            preset = GPT2Config.preset(key)
            check_shapes(expected_shapes(preset), ckpt.shapes(),
                         f"{file} as the GPT-2 {key} weights (delete the file to download it again)")
            config = make_config({**preset.to_dict(), **overrides})
        else:
            config = infer_config(ckpt, hf_config, overrides)
        model = GPT2(config, init=False)  # every weight comes from the file: skip the random init
        load_weights(model, ckpt)
    model.eval()
    if backend.normalize_device(device) != "cpu":
        model.to(device)
    return model


# ------------------------------------------------------------------ saving
def save_pretrained(model: GPT2, folder: str | os.PathLike) -> Path:
    """Write `model.safetensors` (GPT2Model's names) and `config.json` (Hugging Face's keys).

    Each file is written to a temporary name and renamed, so a crash never leaves half a file.
    The folder loads back with `from_pretrained(folder)` and with transformers'
    `GPT2LMHeadModel.from_pretrained(folder)`. Returns the folder.
    """
    folder = Path(folder)
    state = export_state(model)
    folder.mkdir(parents=True, exist_ok=True)
    # transformers refuses safetensors files without this metadata entry
    save(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    text = json.dumps(hf_config_dict(model.config), indent=2) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder
