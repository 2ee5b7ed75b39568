"""The command-line jobs on GPT-2, and what they share.

The commands are the flat modules, each `python -m tasks.NAME`:
    prepare    a corpus into token shards          pretrain   GPT-2 on raw text or shards
    classify   GPT-2 as a text classifier          instruct   instruction fine-tuning, answers, chat
    evaluate   judge, MMLU, HellaSwag              generate   text (and attention maps) from a model
    serve      an OpenAI-compatible HTTP server

What they share lives in wings (sub-packages), each importing only those below it; nothing
imports a command (tests/test_imports.py checks it):
    common/    errors and exit codes, main_guard, the flags and their parsing, the backend,
               JSON and JSON-lines files, progress, plots
    data/      the dataset manifest and downloads, corpora, loaders, shards, labelled and
               Alpaca data                                                     (uses common)
    runs/      the run folder, checkpoints, and the one --init resolver        (uses common)
    training/  TrainConfig, the training loop, data-parallel glue              (uses the above)
    evals/     MMLU, HellaSwag, the judge                                      (uses the above)
    serving/   protocol, scheduler, server and routes of tasks.serve           (uses the above)
See tasks/README.md for the map of modules.
"""
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
