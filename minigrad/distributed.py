"""Data-parallel training across processes, on existing engines: MPI through mpi4py to launch and
coordinate ranks (`mpiexec -n N python ...`), NCCL through cupy.cuda.nccl for GPU gradients.

    import minigrad.distributed as dist
    dist.init()                        # joins the MPI job; a no-op in a plain single process
    dist.broadcast_parameters(opt.flat.data)
    ...backward...
    dist.all_reduce_(opt.flat.grad)    # sum over ranks, in place; divide by world_size() yourself

One process started without mpiexec needs nothing new installed: every function here is then a
no-op (rank 0 of 1). mpi4py is imported only when the process was launched by an MPI launcher.

GPU path (not run in this project's CI, which has no GPU): one GPU per local rank
(`select_gpu()`), an NCCL communicator whose unique id rank 0 draws and MPI broadcasts, and every
NCCL call on CuPy's current stream.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable

import numpy as np

from . import backend, checks
from .tensor import Tensor

INSTALL = "pip install mpi4py mpich"

_comm = None      # mpi4py's COMM_WORLD once init() found an MPI launcher
_MPI = None
_local = (0, 1)   # (local rank, local size): ranks on this machine
_nccl = None      # cupy.cuda.nccl.NcclCommunicator, made on first GPU use


class DistributedError(RuntimeError):
    """MPI is needed but missing, or the ranks disagree.

    `on_every_rank` is True when every rank raised the same error at the same point (check_same):
    each can then exit on its own, with no MPI abort (whose teardown may cut off the message)."""

    on_every_rank = False


# environment variables that MPI launchers set in every rank they start
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


def init() -> None:
    """Join the MPI job when an MPI launcher started this process; otherwise do nothing.

    Raises DistributedError naming the install command when mpiexec started us but mpi4py is
    missing. Safe to call more than once."""
    global _comm, _MPI, _local
    if _comm is not None or not launched_by_mpi():
        return
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"this process was started by an MPI launcher but mpi4py cannot be "
                               f"imported ({e}); install it with `{INSTALL}`") from None
    _MPI, _comm = MPI, MPI.COMM_WORLD
    node = _comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks that share this machine's memory
    _local = (node.Get_rank(), node.Get_size())
    node.Free()


def is_initialized() -> bool:
    return _comm is not None


def rank() -> int:
    return _comm.Get_rank() if _comm is not None else 0


def world_size() -> int:
    return _comm.Get_size() if _comm is not None else 1


def local_rank() -> int:
    return _local[0]


def local_size() -> int:
    return _local[1]


def is_main() -> bool:
    """Rank 0: the one that writes files and prints progress."""
    return rank() == 0


def check_nccl(nccl: Any = None) -> None:
    """Several GPU ranks sum their gradients through NCCL (cupy.cuda.nccl, or the module given):
    one clear line where CuPy cannot load it."""
    if nccl is None:
        from cupy.cuda import nccl  # a module CuPy imports only when asked (cupy.cuda.nccl fails before)
    if not getattr(nccl, "available", False):
        raise DistributedError("several GPU ranks need NCCL, which this CuPy cannot load (cupy.cuda.nccl.available "
                               "is False): pip install nvidia-nccl-cu12 (CUDA 12) or nvidia-nccl-cu13 (CUDA 13)")


def select_gpu() -> None:
    """Make GPU `local_rank()` current for this process (one GPU per local rank), and check that
    NCCL is there for the gradients' all-reduce."""
    if world_size() > 1:
        cp = backend.cupy()
        check_nccl()
        n = cp.cuda.runtime.getDeviceCount()
        if local_rank() >= n:
            raise DistributedError(f"rank {rank()} is local rank {local_rank()} but this machine has "
                                   f"{n} GPU(s): start at most one rank per GPU")
        cp.cuda.Device(local_rank()).use()


# ---------------------------------------------------------------- collectives
def _nccl_comm():
    """The NCCL communicator over all ranks: rank 0 draws the unique id, MPI hands it round."""
    global _nccl
    if _nccl is None:
        check_nccl()
        from cupy.cuda import nccl
        uid = nccl.get_unique_id() if rank() == 0 else None
        uid = _comm.bcast(uid, root=0)
        _nccl = nccl.NcclCommunicator(world_size(), uid, rank())
    return _nccl


def _nccl_dtype(arr):
    from cupy.cuda import nccl
    kinds = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
             np.dtype(np.float16): nccl.NCCL_FLOAT16}
    if arr.dtype not in kinds or not arr.flags.c_contiguous:
        raise DistributedError(f"NCCL here takes contiguous float16/32/64 arrays, got {arr.dtype}")
    return kinds[arr.dtype]


def all_reduce_(arr: Any) -> Any:
    """Sum `arr` over all ranks, in place (a NumPy array by MPI, a CuPy array by NCCL on the
    current stream). Returns arr. One process: returns arr untouched."""
    if world_size() == 1:
        return arr
    if backend.array_module(arr) is np:
        if not arr.flags.c_contiguous:
            raise DistributedError("all_reduce_ needs a contiguous array")
        _comm.Allreduce(_MPI.IN_PLACE, arr, op=_MPI.SUM)
    else:
        from cupy.cuda import nccl
        stream = backend.cupy().cuda.get_current_stream().ptr
        _nccl_comm().allReduce(arr.data.ptr, arr.data.ptr, arr.size, _nccl_dtype(arr), nccl.NCCL_SUM, stream)
    return arr


def all_reduce_sum(values: Iterable[float]) -> list[float]:
    """Sum a few Python numbers over ranks (losses, flags), in float64."""
    arr = np.asarray(list(values), dtype=np.float64)
    return all_reduce_(arr).tolist()


def broadcast_(arr: Any, root: int = 0) -> Any:
    """Overwrite `arr` on every rank with root's, in place."""
    root = checks.integer("broadcast_", "root", root, 0, world_size())
    if world_size() == 1:
        return arr
    if backend.array_module(arr) is np:
        _comm.Bcast(arr, root=root)
    else:
        stream = backend.cupy().cuda.get_current_stream().ptr
        _nccl_comm().bcast(arr.data.ptr, arr.size, _nccl_dtype(arr), root, stream)
    return arr


def broadcast_parameters(params: Any, root: int = 0) -> None:
    """Give every rank root's parameters: a flat array (optimizer.flat.data) in one call, or an
    iterable of tensors one by one."""
    if isinstance(params, Tensor) or not hasattr(params, "dtype"):  # checked in one process too
        params = checks.tensor_list("broadcast_parameters", "params", params, Tensor)
    root = checks.integer("broadcast_parameters", "root", root, 0, world_size())
    if world_size() == 1:
        return
    if not isinstance(params, list):  # the flat array
        broadcast_(params, root)
        return
    for p in params:
        broadcast_(p.data, root)


def allgather(obj: Any) -> list[Any]:
    """Every rank's `obj` (a small picklable value), in rank order."""
    if world_size() == 1:
        return [obj]
    return _comm.allgather(obj)


def check_same(what: str, value: Any) -> None:
    """Raise DistributedError (on every rank) unless all ranks hold the same `value`, e.g. a hash
    of the code, config and data: ranks that disagree would train on a silent mixture."""
    values = allgather(value)
    if any(v != values[0] for v in values):
        differ = [r for r, v in enumerate(values) if v != values[0]]
        err = DistributedError(f"ranks disagree on {what}: rank 0 has {values[0]!r}, "
                               + ", ".join(f"rank {r} has {values[r]!r}" for r in differ))
        err.on_every_rank = True
        raise err


def barrier() -> None:
    if world_size() > 1:
        _comm.Barrier()


def abort(msg: str, code: int = 1) -> None:
    """End the whole job now: print `error: rank R: msg` and have MPI kill every rank (one
    process: just exit). Use it where one rank fails alone, so the others do not wait forever
    in their next collective."""
    print(f"error: rank {rank()} of {world_size()}: {msg}", file=sys.stderr, flush=True)
    if world_size() > 1:
        _comm.Abort(code)
    os._exit(code)
