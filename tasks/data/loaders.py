"""Batches for the training loop: token windows of raw text, and loaders that resume exactly in
the middle of an epoch (token shards have their own in shards.py; raw text is put in the cache
as token shards by text.py).

Every loader serves epochs in an order that is a pure function of (seed, epoch), so its state
is a few integers saved in each checkpoint (EpochLoader).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


class TextWindows:
    """Sliding windows over a token sequence: inputs ids[i:i+T], targets ids[i+1:i+T+1].

    Windows start at 0, stride, 2*stride, ... as long as a full target fits, so the last few
    tokens may be left out (the same windows as the LLMs-from-scratch book's GPTDatasetV1).
    """

    def __init__(self, ids: Sequence[int] | np.ndarray, context: int, stride: int,
                 name: str = "text"):
        if context < 1 or stride < 1:
            raise ValueError(f"context and stride must be >= 1, got context={context}, "
                             f"stride={stride}")
        self.ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        self.context, self.stride = context, stride
        if len(self.ids) < context + 1:
            raise ValueError(
                f"{name} is too short: it has {len(self.ids)} tokens, but one window of "
                f"context {context} needs at least {context + 1} (inputs plus the shifted "
                f"target); use more text or a smaller context")
        self.starts = np.arange(0, len(self.ids) - context, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        s = self.starts[i]
        return self.ids[s:s + self.context], self.ids[s + 1:s + self.context + 1]


class EpochLoader:
    """What every loader of the training loop shares: epochs of `len(self)` batches served in an
    order that is a pure function of (seed, epoch), so that `state_dict()` (epoch, position,
    seed and a few numbers identifying the data: plain ints, JSON-friendly) resumes exactly.

    A subclass sets batch_size, shuffle, drop_last, seed, and provides `__len__`,
    `_batch_at(epoch, position)` and `_identity()` (what the saved state must agree with).
    """

    epoch = 0
    position = 0  # batches of the current epoch already handed out

    def _batch_at(self, epoch: int, position: int):
        raise NotImplementedError

    def _identity(self) -> dict:
        raise NotImplementedError

    def next_batch(self):
        """The next batch, moving on to the next epoch (and its order) after the last one."""
        batch = self._batch_at(self.epoch, self.position)
        self.position += 1
        if self.position == len(self):
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def __iter__(self):
        """The rest of the current epoch (and the state moves along)."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def peek(self, epoch: int = 0):
        """All batches of `epoch` from its start, leaving the loader's state alone (for evaluation)."""
        for position in range(len(self)):
            yield self._batch_at(epoch, position)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, **self._identity()}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in self._identity().items():
            if key in state and state[key] != mine:
                raise ValueError(f"loader state does not fit this data: {key} is {state[key]!r} in "
                                 f"the checkpoint but {mine!r} here")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < len(self):
            raise ValueError(f"invalid loader state: epoch={epoch}, position={position} "
                             f"({len(self)} batches per epoch)")
        self.epoch, self.position, self.seed = epoch, position, int(state["seed"])


class BatchLoader(EpochLoader):
    """Batches of (x, y) int64 arrays of shape (B, T) from a dataset of (x, y) pairs.

    Iterating yields the rest of the current epoch; the epoch counter moves on as soon as its
    last batch is handed out. The order of an epoch is a pure function of (seed, epoch), so
    `state_dict()` (epoch, position, seed: plain ints, JSON-friendly) is enough to resume
    mid-epoch and get exactly the batches the original loader would have produced.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out
        if len(self) == 0:
            raise ValueError(
                f"no batches: the dataset has {len(dataset)} samples, fewer than "
                f"batch_size={batch_size}, and drop_last=True; use a smaller batch or more data")

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Sample indices of `epoch`, in the order they are served."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        # Seeding from (seed, epoch) instead of carrying a generator along keeps resume trivial.
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def _batch(self, order: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray]:
        idx = order[position * self.batch_size:(position + 1) * self.batch_size]
        pairs = [self.dataset[int(i)] for i in idx]
        x = np.stack([p[0] for p in pairs]).astype(np.int64, copy=False)
        y = np.stack([p[1] for p in pairs]).astype(np.int64, copy=False)
        return x, y

    def _batch_at(self, epoch: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        return self._batch(self.order(epoch), position)

    def _identity(self) -> dict:
        return {"num_samples": len(self.dataset), "batch_size": self.batch_size,
                "shuffle": self.shuffle, "drop_last": self.drop_last}
