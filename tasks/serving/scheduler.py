"""Continuous batching for tasks.serve: one thread owns the model and decodes every running
request together, one token per request per step.

    sched = Scheduler(model, max_batch=8, max_queue=32, eos_id=50256)
    sched.start()
    sched.submit(Job(prompt_ids, max_tokens=20, temperature=0.8, seed=1, emit=on_event))
    # on_event(("token", id)) ... then on_event(("finish", "stop" | "length" | ...))

Between two decode steps, waiting jobs join the batch (their prompt is prefilled into a free row
of a per-row KV cache) and finished or cancelled ones leave (the last row moves into the hole,
so the running rows are always 0..n-1). Each job keeps its own position, sampling settings and
random generator, so it produces the same tokens alone or alongside others.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import minigrad as mg
from minigrad import backend
from gpt2.generate import sample_next
from gpt2.tokenizer import EOT_ID

# What a job tells its owner, from the scheduler's thread: ("token", id) for every new token,
# then once ("finish", reason), reason being "stop" (end-of-text), "length" (max_tokens or the
# context is reached), "timeout", "cancelled" or "error: ...".
Event = tuple


class QueueFull(Exception):
    """More jobs wait than --max-queue allows."""


@dataclass(eq=False)
class Job:
    prompt: list[int]
    max_tokens: int
    emit: Callable[[Event], None]           # called on the scheduler's thread; must not block
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    deadline: float | None = None           # time.monotonic() after which the job is dropped
    generated: int = 0
    last: int = -1                          # the newest token, the input of the next step
    cancelled: bool = False
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        # every job its own generator: its draws do not depend on who else is in the batch
        self.rng = np.random.default_rng(self.seed)


class Scheduler:
    def __init__(self, model, max_batch: int = 8, max_queue: int = 32, eos_id: int | None = EOT_ID):
        self.model = model.eval()
        self.n_ctx = model.config.n_ctx
        self.max_batch, self.max_queue, self.eos_id = max_batch, max_queue, eos_id
        self.cache = model.new_cache(max_batch, per_row=True)
        self.running: list[Job] = []        # running[i] decodes in cache row i
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.stats = {"finished": 0, "cancelled": 0, "timeouts": 0, "errors": 0, "tokens": 0,
                      "steps": 0, "steps_batched": 0, "max_batch_seen": 0}
        self._stop = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ from any thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        with self.cond:
            free_rows = max(0, self.max_batch - len(self.running))
            if len(self.waiting) >= self.max_queue + free_rows:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting (--max-queue)")
            self.waiting.append(job)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """Drop the job at the next step boundary (its client left, or a stop string was seen)."""
        with self.cond:
            job.cancelled = True
            self.cond.notify()

    def status(self) -> dict:
        with self.cond:
            return {"running": len(self.running), "waiting": len(self.waiting), **self.stats}

    # ------------------------------------------------------------ the scheduler's thread
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self._stop and not self.running and not self.waiting:
                    self.cond.wait()
                if self._stop:
                    return
            self.step()

    def step(self) -> None:
        """Drop what is done, admit waiting jobs into free rows, then decode one token per row."""
        try:
            self._drop_finished()
            self._admit()
            if self.running:
                self._decode()
        except Exception as e:  # a bug or a device fault: fail the jobs in flight, keep serving
            with self.cond:
                jobs, self.running = self.running, []
                self.stats["errors"] += len(jobs)
            for job in jobs:
                self._emit(job, ("finish", f"error: {type(e).__name__}: {e}"))

    def _drop_finished(self) -> None:
        now = time.monotonic()
        with self.cond:
            for job in list(self.waiting):
                reason = self._why_drop(job, now)
                if reason:
                    self.waiting.remove(job)
                    self._finish(job, reason)
        for i in reversed(range(len(self.running))):
            reason = self._why_drop(self.running[i], now)
            if reason:
                self._leave(i, reason)

    def _why_drop(self, job: Job, now: float) -> str | None:
        if job.cancelled:
            return "cancelled"
        if job.deadline is not None and now > job.deadline:
            return "timeout"
        return None

    def _admit(self) -> None:
        while len(self.running) < self.max_batch:
            with self.cond:
                if not self.waiting:
                    return
                job = self.waiting.popleft()
            row = len(self.running)
            self.running.append(job)
            view = self.cache.rows(row, row + 1)
            view.lengths[0] = 0
            logits = self._forward(np.asarray([job.prompt], dtype=np.int64), view)   # (1, V)
            self._sample_and_emit([job], logits)

    def _decode(self) -> None:
        n = len(self.running)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], n)
        self.stats["steps"] += 1
        self.stats["steps_batched"] += n > 1   # steps that decoded two or more requests at once
        ids = np.asarray([[job.last] for job in self.running], dtype=np.int64)      # (n, 1)
        logits = self._forward(ids, self.cache.rows(0, n))                          # (n, V)
        self._sample_and_emit(list(self.running), logits)

    def _forward(self, ids: np.ndarray, cache) -> np.ndarray:
        with mg.no_grad():
            logits = self.model(ids, cache=cache)                                   # (B, T, V)
        return backend.to_device(logits.data[:, -1, :], "cpu")

    def _sample_and_emit(self, jobs: list[Job], logits: np.ndarray) -> None:
        # rows with the same settings are sampled in one call, each with its own generator
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.temperature, job.top_k, job.top_p), []).append(i)
        nxt = np.empty(len(jobs), dtype=np.int64)
        for (temperature, top_k, top_p), rows in groups.items():
            nxt[rows] = sample_next(logits[rows], temperature, top_k, top_p, [jobs[i].rng for i in rows])
        for job, token in zip(jobs, nxt.tolist()):
            job.last = token
            job.generated += 1
            self.stats["tokens"] += 1
            self._emit(job, ("token", token))
        # leave now rather than at the next step: a finished row must not cost a decode
        for i in reversed(range(len(self.running))):
            job = self.running[i]
            if job not in jobs:
                continue
            if self.eos_id is not None and job.last == self.eos_id:
                self._leave(i, "stop")
            elif job.generated >= job.max_tokens or len(job.prompt) + job.generated >= self.n_ctx:
                self._leave(i, "length")

    def _leave(self, row: int, reason: str) -> None:
        last = len(self.running) - 1
        job = self.running[row]
        if row != last:   # keep rows contiguous: the last running row moves into the hole
            self.cache.copy_row(last, row)
            self.running[row] = self.running[last]
        self.running.pop()
        self._finish(job, reason)

    def _finish(self, job: Job, reason: str) -> None:
        key = {"cancelled": "cancelled", "timeout": "timeouts"}.get(reason, "finished")
        self.stats[key] += 1
        self._emit(job, ("finish", reason))

    @staticmethod
    def _emit(job: Job, event: Event) -> None:
        try:
            job.emit(event)
        except Exception:   # the owner is gone (its event loop closed): nothing to tell
            job.cancelled = True
