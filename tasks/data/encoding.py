"""Tokenizing the pieces of a corpus for tasks.prepare, in worker processes, in a fixed order.

Each document becomes <|endoftext|> (50256) followed by tiktoken's GPT-2 `encode_ordinary` of its
text. Pieces are grouped into work items of about WORK_CHARS characters; with several workers at
most 2 x workers items are in flight, and the results come back in the order of the pieces, so
the tokens are the same for any number of workers.
"""
from __future__ import annotations

import multiprocessing
import signal
import sys
from collections import deque
from typing import Iterator

import numpy as np

from gpt2.tokenizer import EOT_ID

WORK_CHARS = 1 << 19  # text handed to a worker at once (small: the last item ends the run sooner)

_ENCODING = None


def gpt2_encoding():
    """tiktoken's GPT-2 encoding, loaded once per process (forked workers inherit it)."""
    global _ENCODING
    if _ENCODING is None:
        from gpt2.tokenizer import get_tokenizer
        _ENCODING = get_tokenizer().encoding  # tiktoken's gpt2 (or the same built from our cache)
    return _ENCODING


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def start_pool(ctx, workers: int):
    """A pool whose workers never run the parent's signal handlers.

    A forked worker inherits main_guard's SIGTERM handler, and Python drops a signal that arrives
    before the child has finished forking: the SIGTERM of Pool.terminate could then be lost and
    the worker left waiting on the task queue, with the parent waiting for it forever (seen as a
    hung test suite). So the stop signals are blocked while the workers (and the pool's threads)
    start; each worker sets plain handlers, then unblocks them, and a SIGTERM that came early is
    delivered then, ending it."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return ctx.Pool(workers, initializer=_worker_start)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _worker_start() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's: it stops the pool
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    gpt2_encoding()


def encode_pieces(pieces: list[tuple[bool, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens uint16, tokens per piece) of a list of pieces; runs in a worker process."""
    enc = gpt2_encoding()
    eot = np.array([EOT_ID], dtype=np.uint16)
    out, counts = [], np.empty(len(pieces), dtype=np.int64)
    for i, (start, text) in enumerate(pieces):
        if hasattr(enc, "encode_to_numpy"):  # tiktoken >= 0.8: no list of Python ints on the way
            # with no special token allowed nor disallowed this is encode_ordinary (tested)
            ids = enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        else:
            ids = np.array(enc.encode_ordinary(text), dtype=np.uint32)
        if start:
            out.append(eot)
        out.append(ids.astype(np.uint16))
        counts[i] = len(ids) + start
    return (np.concatenate(out) if out else np.zeros(0, np.uint16)), counts


def work_items(pieces: Iterator[tuple[bool, str]], skip: int, skipped_docs: list[int]
               ) -> Iterator[tuple[int, list]]:
    """(index of the first piece, pieces) groups of about WORK_CHARS, from piece `skip` on."""
    group, size, first = [], 0, skip
    for index, piece in enumerate(pieces):
        if index < skip:
            skipped_docs[0] += piece[0]
            continue  # already in a complete shard: read, not tokenized
        group.append(piece)
        size += len(piece[1])
        if size >= WORK_CHARS:
            yield first, group
            group, size, first = [], 0, index + 1
    if group:
        yield first, group


def encoded(items: Iterator[tuple[int, list]], workers: int
            ) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
    """(first piece, tokens, tokens per piece, documents) of each work item, in order.

    With several workers at most 2*workers items are in flight (bounded memory, unlike
    Pool.imap, which reads its whole input ahead)."""
    if workers == 1:
        for first, group in items:
            yield first, *encode_pieces(group), sum(s for s, _ in group)
        return
    gpt2_encoding()  # loaded once here: forked workers inherit it
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with start_pool(ctx, workers) as pool:
        pending: deque = deque()
        for first, group in items:
            pending.append((first, pool.apply_async(encode_pieces, (group,)),
                            sum(s for s, _ in group)))
            if len(pending) >= 2 * workers:
                f, res, docs = pending.popleft()
                yield f, *res.get(), docs
        while pending:
            f, res, docs = pending.popleft()
            yield f, *res.get(), docs
