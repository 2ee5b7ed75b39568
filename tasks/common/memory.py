"""Memory checked before it is allocated: a command estimates what it will need (gpt2.memory for
the model, a task's own buffers here) and `check_memory` compares it with what this process can
have, so that a size the machine cannot hold is one usage error, with the estimate and the flag
to lower, before any file is written: not a MemoryError, or the kernel's OOM killer, later.
"""
from __future__ import annotations

import os
from pathlib import Path

from gpt2 import GPT2Config
from gpt2.memory import INTERPRETER, MemoryEstimate, size_text, inference_memory

from .errors import UsageError

# what to lower, by the largest part of an estimate
LOWER = {"activations": "--batch-size (or --context)", "transient": "--batch-size (or --context)",
         "parameters": "the model's size (--size, --n-layer, --n-embd)",
         "gradients": "the model's size (--size, --n-layer, --n-embd)",
         "optimizer": "the model's size (--size, --n-layer, --n-embd)",
         "kv_cache": "--max-batch (or the model's context)", "buffers": "--shard-tokens"}


def _meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What this process's memory cgroup still allows, where it sets a limit (v2, else v1)."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2 ** 60:
            return None
        return max(int(limit) - usage, 0)
    return None


def _local_ranks() -> int:
    """Processes of one MPI job on this machine (they share its memory)."""
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or "1"
    return max(int(local), 1) if local.isdigit() else 1


def available_bytes(device: str = "cpu") -> int | None:
    """Memory this process can still have: the GPU's free memory on "cuda" (CuPy's pool counted
    as free), else the kernel's MemAvailable, lowered to the memory cgroup's room where it sets a
    limit, shared among the ranks of an MPI job on this machine. None where it cannot be known."""
    if device == "cuda":
        import cupy
        free, _ = cupy.cuda.runtime.memGetInfo()
        return free + cupy.get_default_memory_pool().free_bytes()
    ram, room = _meminfo("MemAvailable"), _cgroup_room()
    have = ram if room is None else room if ram is None else min(ram, room)
    return None if have is None else have // _local_ranks()


def check_memory(estimate: MemoryEstimate, device: str, what: str, lower: dict[str, str] | None = None) -> None:
    """A UsageError when `estimate` is more than `device` has available: it says the estimate,
    its parts, what is available and which flag lowers the largest part. `what` names the work
    ("training a step of --batch-size 8 x --context 1024")."""
    have = available_bytes(device)
    if have is None or estimate.total <= have:
        return
    hint = {**LOWER, **(lower or {})}.get(estimate.largest, "the sizes")
    where = "the GPU has" if device == "cuda" else "this machine has"
    raise UsageError(f"{what} needs about {estimate.describe()}; {where} {size_text(have)} available. "
                     f"Lower {hint}")


def check_inference_memory(config: GPT2Config | None, rows: int, tokens: int, device: str, what: str, *,
                           cache_rows: int = 0, vocab_logits: bool = True, lower: str = "--batch-size") -> None:
    """check_memory for a forward pass of `rows` x `tokens` (no gradients) and a KV cache of
    `cache_rows` rows; `lower` is the flag that sets the rows. Nothing to check where the config
    cannot be known before the weights are read (None)."""
    if config is None:
        return
    fused = device == "cuda" and os.environ.get("MINIGRAD_FUSED", "1") != "0"
    estimate = inference_memory(config, rows, min(tokens, config.n_ctx), kv_cache=cache_rows > 0,
                                cache_rows=cache_rows, vocab_logits=vocab_logits, fused_attention=fused)
    check_memory(estimate, device, what, {"transient": lower, "kv_cache": lower})


def check_buffer_memory(nbytes: int, device: str, what: str, lower: str) -> None:
    """check_memory for a plain buffer of `nbytes` (a shard being filled, ...)."""
    check_memory(MemoryEstimate(buffers=nbytes + INTERPRETER), device, what, {"buffers": lower})
