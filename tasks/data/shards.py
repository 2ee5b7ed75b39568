"""Token shards in llm.c's format, and a loader that streams training batches out of them.

A shard file is a header of 256 int32 (magic 20240520, version 1, number of tokens, then zeros)
followed by the tokens as uint16, so llm.c's trainer reads our shards and we read theirs (for
example the GPT-2-tokenized FineWeb shards). A folder of shards holds one validation shard
`NAME_val_000000.bin` and training shards `NAME_train_000001.bin`, `NAME_train_000002.bin`, ...

`ShardLoader` memory-maps the shards (`numpy.memmap`) and cuts them into windows of
context + 1 tokens (inputs and the targets shifted by one). In order, the B windows of a batch
are one contiguous span of B*T+1 tokens, as llm.c reads them; shuffled, the shard order and the
window order are permutations drawn from (seed, epoch). Only the batch itself is ever copied
(as int32), so memory does not grow with the corpus.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .loaders import EpochLoader

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids fit
FORMAT = "llm.c token shards: 256 int32 header (20240520, 1, tokens), uint16 tokens"  # index.json says it
SHARD_RE = re.compile(r"^(?P<name>.+)_(?P<split>val|train)_(?P<index>\d{6})\.bin$")


class ShardError(ValueError):
    """A shard file or folder that is not what the format says."""


def shard_name(name: str, index: int) -> str:
    """File name of shard `index`: the first one (index 0) is the validation shard."""
    return f"{name}_{'val' if index == 0 else 'train'}_{index:06d}.bin"


def header(num_tokens: int) -> np.ndarray:
    h = np.zeros(HEADER_INTS, dtype=np.int32)
    h[0], h[1], h[2] = MAGIC, VERSION, num_tokens
    return h


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> Path:
    """Write one shard atomically: to `<path>.tmp` first, renamed only once complete, so an
    interrupted write never looks like a shard."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) > np.iinfo(TOKEN_DTYPE).max:
        raise ShardError(f"token id {int(tokens.max())} does not fit in uint16")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header(tokens.size).tobytes())
            # write(), not ndarray.tofile: a full disk is then ENOSPC naming the file, not
            # NumPy's "N requested and M written"
            f.write(memoryview(np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)).cast("B"))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(tmp)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def read_header(path: str | os.PathLike) -> int:
    """Number of tokens in the shard at `path`, after checking magic, version and size."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path} is not a token shard: {size} bytes, shorter than the "
                         f"{HEADER_BYTES}-byte header")
    h = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if int(h[0]) != MAGIC:
        raise ShardError(f"{path} is not a token shard: magic number {int(h[0])}, expected {MAGIC}")
    if int(h[1]) != VERSION:
        raise ShardError(f"{path}: shard format version {int(h[1])}, only {VERSION} is supported")
    n = int(h[2])
    if n < 0 or size != HEADER_BYTES + 2 * n:
        raise ShardError(f"{path} is damaged: its header says {n} tokens ({HEADER_BYTES + 2 * n} "
                         f"bytes) but the file has {size} bytes")
    return n


def open_shard(path: str | os.PathLike) -> np.ndarray:
    """The tokens of a shard as a read-only memory map (uint16, nothing read yet)."""
    n = read_header(path)
    if n == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n,))


def find_shards(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(validation shards, training shards) of a folder, each sorted by name, headers checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ShardError(f"--data {folder}: no such folder")
    val, train = [], []
    for p in sorted(folder.iterdir()):
        m = SHARD_RE.match(p.name)
        if m and p.is_file():
            (val if m["split"] == "val" else train).append(p)
    if not val or not train:
        missing = " and ".join(w for w, s in (("a validation shard (*_val_NNNNNN.bin)", val),
                                              ("training shards (*_train_NNNNNN.bin)", train)) if not s)
        raise ShardError(f"--data {folder} holds no {missing}; make them with "
                         f"`python -m tasks.prepare --input FILES --out {folder}`")
    for p in val + train:
        read_header(p)
    return val, train


class ShardLoader(EpochLoader):
    """Batches of (x, y) int32 arrays of shape (B, T) from token shards, resumable mid-epoch.

    Windows start at 0, stride, 2*stride, ... inside each shard as long as a full target fits
    (so the last few tokens of a shard may be left out), exactly as loaders.TextWindows does
    on one token list. An epoch serves every window once: shards in order (or permuted), the
    windows of each in order (or permuted), B at a time. With stride = T and no shuffling a
    batch is a contiguous span of B*T+1 tokens.

    The order of an epoch is a pure function of (seed, epoch): one generator seeded with
    [seed, epoch] draws the shard order (when there is more than one shard), then each shard's
    window permutation in the order the shards are served. With one shard this is the very
    permutation loaders.BatchLoader draws, so both serve the same batches. `state_dict()`
    (plain ints) is enough to resume exactly.
    """

    def __init__(self, shards: Sequence[np.ndarray], context: int, batch_size: int,
                 stride: int | None = None, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, name: str = "data"):
        stride = context if stride is None else stride
        if context < 1 or stride < 1 or batch_size < 1:
            raise ValueError(f"context, stride and batch size must be >= 1, got context={context}, "
                             f"stride={stride}, batch_size={batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.shards = list(shards)
        self.context, self.stride, self.batch_size = context, stride, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        # windows of shard k: starts 0, stride, ... < len - context (a target needs context+1 tokens)
        self.windows = np.array([len(range(0, max(len(s) - context, 0), stride)) for s in self.shards],
                                dtype=np.int64)
        self.num_tokens = int(sum(len(s) for s in self.shards))
        self.num_windows = int(self.windows.sum())
        if self.num_windows == 0:
            raise ValueError(
                f"{name} is too short: it has {self.num_tokens} tokens, but one window of context "
                f"{context} needs at least {context + 1} (inputs plus the shifted target); use more "
                f"text or a smaller context")
        if len(self) == 0:
            raise ValueError(
                f"no batches: {name} has {self.num_windows} windows of context {context}, fewer than "
                f"batch_size={batch_size}; use a smaller batch or context, or more data")
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out
        self._orders: dict[int, _EpochOrder] = {}

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike], context: int, batch_size: int,
                   **kwargs) -> ShardLoader:
        return cls([open_shard(p) for p in paths], context, batch_size, **kwargs)

    def __len__(self) -> int:
        n, b = self.num_windows, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def _order(self, epoch: int) -> _EpochOrder:
        order = self._orders.get(epoch)
        if order is None:
            if len(self._orders) >= 2:  # the training epoch and one peeked at for evaluation
                self._orders.pop(next(iter(self._orders)))
            order = self._orders[epoch] = _EpochOrder(self, epoch)
        return order

    def _batch_at(self, epoch: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        first = position * self.batch_size
        count = min(self.batch_size, self.num_windows - first)
        T = self.context
        rows = np.empty((count, T + 1), dtype=np.int32)  # (B, T+1)
        for shard, starts, lo in self._order(epoch).starts(first, count):
            data = self.shards[shard]
            contiguous = self.stride == T and np.all(np.diff(starts) == T)
            if contiguous:  # one read of n*T+1 tokens, as llm.c does
                s = int(starts[0])
                span = np.asarray(data[s:s + len(starts) * T + 1], dtype=np.int32)
                rows[lo:lo + len(starts), :T] = span[:-1].reshape(-1, T)
                rows[lo:lo + len(starts), T] = span[T::T]
            else:
                for i, s in enumerate(starts):
                    rows[lo + i] = data[int(s):int(s) + T + 1]
        return rows[:, :-1], rows[:, 1:]  # (B, T) inputs, (B, T) targets

    def _identity(self) -> dict:
        # the keys of loaders.BatchLoader's state, plus what identifies the shards
        return {"num_samples": self.num_windows, "batch_size": self.batch_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "num_tokens": self.num_tokens, "num_shards": len(self.shards),
                "context": self.context, "stride": self.stride}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._orders.clear()


class _EpochOrder:
    """The order of one epoch, drawn lazily: the shard order at once, each shard's window
    permutation only when its windows are first needed (memory: a few shards' permutations)."""

    def __init__(self, loader: ShardLoader, epoch: int):
        self.loader, self.epoch = loader, epoch
        n = len(loader.shards)
        self.rng = np.random.default_rng([loader.seed, epoch]) if loader.shuffle else None
        self.shard_order = self.rng.permutation(n) if self.rng is not None and n > 1 else np.arange(n)
        # cum[j]: windows served before the j-th served shard
        self.cum = np.concatenate([[0], np.cumsum(loader.windows[self.shard_order])])
        self.perms: dict[int, np.ndarray] = {}
        self.drawn = 0  # served shards whose permutation the generator has drawn

    def _perm(self, j: int) -> np.ndarray | None:
        if self.rng is None:
            return None
        if j < self.drawn and j not in self.perms:  # gone back (rare): draw this epoch again
            self.rng = np.random.default_rng([self.loader.seed, self.epoch])
            if len(self.shard_order) > 1:
                self.rng.permutation(len(self.shard_order))  # the shard order, drawn first
            self.perms, self.drawn = {}, 0
        while self.drawn <= j:
            perm = self.rng.permutation(int(self.loader.windows[self.shard_order[self.drawn]]))
            self.perms[self.drawn] = perm
            self.drawn += 1
        for k in [k for k in self.perms if k < j - 1]:  # keep memory to a couple of shards
            del self.perms[k]
        return self.perms[j]

    def starts(self, first: int, count: int) -> Iterator[tuple[int, np.ndarray, int]]:
        """(shard, window start offsets, row of the batch they go to) for windows
        first..first+count of the epoch, shard by shard."""
        g = first
        end = first + count
        while g < end:
            j = int(np.searchsorted(self.cum, g, side="right")) - 1
            lo, hi = g - int(self.cum[j]), min(end, int(self.cum[j + 1])) - int(self.cum[j])
            local = np.arange(lo, hi)
            perm = self._perm(j)
            if perm is not None:
                local = perm[local]
            yield int(self.shard_order[j]), local * self.loader.stride, g - first
            g += hi - lo
