"""Command-line jobs (pretrain, classify, instruct, evaluate, generate) and their shared pieces."""
import os as _os


def _blas_threads_per_rank() -> None:
    """Under mpiexec, share the cores among the ranks on this machine (cores / local ranks BLAS
    threads each) unless the user chose: set before NumPy loads its BLAS, which reads these
    variables once. MPICH's mpiexec sets MPI_LOCALNRANKS, Open MPI's OMPI_COMM_WORLD_LOCAL_SIZE."""
    local = _os.environ.get("MPI_LOCALNRANKS") or _os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    chosen = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    if not (local and local.isdigit()) or any(v in _os.environ for v in chosen):
        return
    threads = str(max(len(_os.sched_getaffinity(0)) // max(int(local), 1), 1))
    for v in chosen:
        _os.environ[v] = threads


_blas_threads_per_rank()
