"""The backend a command runs on, checked before any work starts."""
from __future__ import annotations

import minigrad as mg
import minigrad.distributed as dist

from .errors import UsageError


def select_device(backend: str, dtype: str = "float32") -> str:
    """The device of --backend ("cpu", "cuda" or "standin"), checked now, so that a missing GPU
    is one message before any work starts; --dtype tf32 switches the GPU's matmuls to it."""
    device = {"cupy": "cuda", "standin": "standin"}.get(backend, "cpu")
    if device == "cuda" and not mg.gpu_available():
        mg.backend.cupy()  # raises BackendError with the reason
    if device == "cuda":
        dist.select_gpu()  # under mpiexec: GPU local_rank, before anything is allocated
    if dtype == "tf32":
        if device != "cuda":
            raise UsageError(f"--dtype tf32 is the tensor cores' TensorFloat-32 matmul mode of NVIDIA "
                             f"GPUs (--backend cupy); --backend {backend} computes float32 "
                             "matmuls in float32. Use --dtype float32 here.")
        mg.backend.set_tf32(True)
    return device
