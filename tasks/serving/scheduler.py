"""Continuous batching for tasks.serve: one thread owns the model and decodes every running
choice together, one token per choice per step.

    sched = Scheduler(model, max_batch=8, max_queue=32, eos_id=50256)
    sched.start()
    sched.submit([Job(prompt_ids, 20, on_event, SamplingParams(0.8), rng, text=ChoiceText(...))])
    # on_event(("text", piece, tokens)) ... then once on_event(("finish", reason, piece, tokens))

Between two decode steps, waiting jobs join the batch (their prompt is prefilled into a free row
of a per-row KV cache; the n choices of one prompt share one prefill) and finished or cancelled
ones leave (the last row moves into the hole, so the running rows are always 0..n-1). Each job
keeps its own position, sampling settings (gpt2/sampling.py) and random generator, so it
produces the same tokens alone or alongside others. Stop strings are found here too (the job's
ChoiceText), so a job ends at the token that completes one.

Log-probabilities are the model's own float32 log-softmax at each position, computed from the
same logits the batch decodes with; a job that echoes its prompt scores the prompt's tokens from
its prefill, a block of positions at a time.
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
from minigrad.tensor import Tensor
from gpt2.sampling import SamplingParams, choose_next, log_softmax, top_logprobs
from gpt2.tokenizer import EOT_ID

from .text import ChoiceText, TokenOut

# What a job tells its owner, from the scheduler's thread: ("text", piece, tokens) whenever text
# or tokens are ready, then once ("finish", reason, piece, tokens), reason being "stop"
# (end-of-text or a stop string), "length" (max_tokens or the context), "timeout", "cancelled"
# or "failed: ...".
Event = tuple
FINISH_REASONS = ("stop", "length", "cancelled", "timeout", "failed")
SCORE_BLOCK = 256        # prompt positions scored at once: (256, 50,257) float32 is 51 MB


class QueueFull(Exception):
    """More jobs wait than --max-queue allows."""


@dataclass(eq=False)
class Job:
    prompt: list[int]
    max_tokens: int                          # 0: score the prompt (echo) and generate nothing
    emit: Callable[[Event], None]            # called on the scheduler's thread; must not block
    params: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0))
    rng: np.random.Generator | None = None   # for sampled (temperature > 0) jobs
    text: ChoiceText | None = None           # stop strings; None: no text, tokens only
    logprobs: int | None = None              # alternatives per token; None: no log-probabilities
    echo: bool = False                       # score the prompt's tokens too
    stop_at_eos: bool = True                 # False: vLLM's ignore_eos
    deadline: float | None = None            # time.monotonic() after which the job is dropped
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False


def decode_head(model) -> np.ndarray | None:
    """On the CPU, a contiguous copy of the output layer's weight, transposed to (C, V).

    A decode step multiplies a few rows (one per running choice) by the (V, C) head. OpenBLAS
    does that 1.5x faster against a contiguous (C, V) copy than against the transposed view of
    the weight (8 rows x 768 x 50,257 ... measured in bench/results/serve.md), which costs V x C
    more floats of memory (154 MB for 124M). On a GPU the view is as fast: None there."""
    w = (model.wte if model.lm_head is None else model.lm_head).weight.data
    return np.ascontiguousarray(w.T) if isinstance(w, np.ndarray) else None


class Scheduler:
    def __init__(self, model, max_batch: int = 8, max_queue: int = 32, eos_id: int | None = EOT_ID):
        self.model = model.eval()
        self.n_ctx = model.config.n_ctx
        self.max_batch, self.max_queue, self.eos_id = max_batch, max_queue, eos_id
        self.cache = model.new_cache(max_batch, per_row=True)
        self.head_t = decode_head(model)
        self.running: list[Job] = []        # running[i] decodes in cache row i
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        # seconds: where the scheduler's thread spends its time (prefill, the decode steps' forward
        # passes, choosing tokens and their text), so a load test can tell what limits it
        self.stats = {"finish_reasons": dict.fromkeys(FINISH_REASONS, 0), "prompt_tokens": 0,
                      "tokens": 0, "steps": 0, "steps_batched": 0, "max_batch_seen": 0,
                      "seconds": {"prefill": 0.0, "forward": 0.0, "sample": 0.0}}
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

    def submit(self, jobs: list[Job]) -> None:
        """Queue all of `jobs` (one request's choices) or none of them (QueueFull)."""
        with self.cond:
            free_rows = max(0, self.max_batch - len(self.running))
            if len(self.waiting) + len(jobs) > self.max_queue + free_rows:
                raise QueueFull(f"{len(self.waiting)} choices are already waiting (--max-queue {self.max_queue})")
            self.waiting.extend(jobs)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """Drop the job at the next step boundary (its client left)."""
        with self.cond:
            job.cancelled = True
            self.cond.notify()

    def status(self) -> dict:
        with self.cond:
            return {"running": len(self.running), "waiting": len(self.waiting),
                    **{k: dict(v) if isinstance(v, dict) else v for k, v in self.stats.items()}}

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
            self._drop_expired()
            self._admit()
            if self.running:
                self._decode()
        except Exception as e:  # a bug or a device fault: fail the jobs in flight, keep serving
            jobs, self.running = self.running, []
            for job in jobs:
                self._finish(job, f"failed: {type(e).__name__}: {e}")

    def _drop_expired(self) -> None:
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

    @staticmethod
    def _why_drop(job: Job, now: float) -> str | None:
        if job.cancelled:
            return "cancelled"
        if job.deadline is not None and now > job.deadline:
            return "timeout"
        return None

    def _admit(self) -> None:
        shared: dict[tuple, tuple] = {}      # prompt -> (job, row, logits, scored) this round
        while len(self.running) < self.max_batch:
            with self.cond:
                if not self.waiting:
                    return
                job = self.waiting.popleft()
            row, key = len(self.running), (tuple(job.prompt), job.echo, job.logprobs)
            first, src, logits, scored = shared.get(key, (None, -1, None, None))
            # another choice of the same prompt whose row still holds just the prompt: copy it
            # (a job that left at once gave its row up; rows below the last never move here)
            reuse = first is not None and src < row and self.running[src] is first
            self.running.append(job)
            if reuse:
                self.cache.copy_row(src, row)
            else:
                t0 = time.perf_counter()
                logits, scored = self._prefill(job, row)
                self.stats["seconds"]["prefill"] += time.perf_counter() - t0
                shared[key] = (job, row, logits, scored)
                self.stats["prompt_tokens"] += len(job.prompt)
            self._start(job, row, logits, scored)

    def _prefill(self, job: Job, row: int) -> tuple[np.ndarray, list[TokenOut] | None]:
        """The prompt into cache row `row`: (the last position's logits (1, V), the prompt's
        tokens with their log-probabilities if the job echoes them, else None)."""
        view = self.cache.rows(row, row + 1)
        view.lengths[0] = 0
        with mg.no_grad():
            h = self.model.hidden_states(np.asarray([job.prompt], dtype=np.int64), cache=view)   # (1, T, C)
            last = self._logits(h.data[0, -1:])                                                  # (1, V)
            scored = self._score_prompt(job, h) if job.echo and job.logprobs is not None else None
        return backend.to_device(last, "cpu"), scored

    def _logits(self, h, on_device: bool = False):
        """The output layer on hidden states (n, C): logits (n, V) on the CPU (or left on the
        model's device if asked), through the contiguous head copy where there is one."""
        if self.head_t is not None:
            return h @ self.head_t
        logits = self.model.logits(Tensor(h)).data
        return logits if on_device else backend.to_device(logits, "cpu")

    def _score_prompt(self, job: Job, h) -> list[TokenOut]:
        """Each prompt token's log-probability given the ones before it (the first has none)."""
        tokens = [TokenOut(job.prompt[0])]
        T = len(job.prompt)
        for lo in range(0, T - 1, SCORE_BLOCK):
            hi = min(lo + SCORE_BLOCK, T - 1)
            lp = backend.to_device(log_softmax(self._logits(h.data[0, lo:hi], on_device=True)), "cpu")  # (hi-lo, V)
            tokens += self._token_outs(lp, job.prompt[lo + 1:hi + 1], job.logprobs)
        return tokens

    @staticmethod
    def _token_outs(lp: np.ndarray, ids: list[int], k: int) -> list[TokenOut]:
        """TokenOuts of `ids`, row i of the log-probabilities `lp` giving ids[i]'s, with k alternatives."""
        top_ids, top_vals = top_logprobs(lp, k)
        chosen = lp[np.arange(len(ids)), ids]
        return [TokenOut(t, float(c), list(zip(i.tolist(), v.tolist())))
                for t, c, i, v in zip(ids, chosen, top_ids, top_vals)]

    def _start(self, job: Job, row: int, logits: np.ndarray, scored: list[TokenOut] | None) -> None:
        if scored is not None and job.text is not None:
            # each choice its own copies: offsets and all belong to its text
            job.text.tokens[:len(scored)] = [TokenOut(t.id, t.logprob, t.top, o.offset)
                                             for t, o in zip(scored, job.text.tokens)]
        if job.max_tokens == 0:
            self._leave(row, "length")
        else:
            self._sample_and_emit([job], logits)

    def _decode(self) -> None:
        n = len(self.running)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], n)
        self.stats["steps"] += 1
        self.stats["steps_batched"] += n > 1   # steps that decoded two or more choices at once
        ids = np.asarray([[job.generated[-1]] for job in self.running], dtype=np.int64)   # (n, 1)
        t0 = time.perf_counter()
        with mg.no_grad():
            h = self.model.hidden_states(ids, cache=self.cache.rows(0, n))                 # (n, 1, C)
            logits = self._logits(h.data[:, -1])                                          # (n, V)
        t1 = time.perf_counter()
        self._sample_and_emit(list(self.running), logits)
        self.stats["seconds"]["forward"] += t1 - t0
        self.stats["seconds"]["sample"] += time.perf_counter() - t1

    def _sample_and_emit(self, jobs: list[Job], logits: np.ndarray) -> None:
        nxt = choose_next(logits, [j.params for j in jobs], [j.generated for j in jobs],
                          [j.rng for j in jobs], self.eos_id).tolist()
        outs = [TokenOut(t) for t in nxt]
        scored = [i for i, j in enumerate(jobs) if j.logprobs is not None]
        if scored:
            lp = log_softmax(logits[scored])                     # the model's own distribution
            k = max(jobs[i].logprobs for i in scored)
            for i, out in zip(scored, self._token_outs(lp, [nxt[i] for i in scored], k)):
                out.top = out.top[:jobs[i].logprobs]
                outs[i] = out
        for job, out in zip(jobs, outs):
            job.generated.append(out.id)
            self.stats["tokens"] += 1
            if job.text is not None:
                job.text.push(out)
        # leave now rather than at the next step: a finished row must not cost a decode
        for i in reversed(range(len(self.running))):
            job = self.running[i]
            if job not in jobs:
                continue
            reason = self._why_finished(job)
            if reason:
                self._leave(i, reason)
            elif job.text is not None:
                piece, tokens = job.text.take()
                if piece or tokens:
                    self._emit(job, ("text", piece, tokens))

    def _why_finished(self, job: Job) -> str | None:
        if job.text is not None and job.text.stopped:
            return "stop"
        if job.stop_at_eos and self.eos_id is not None and job.generated[-1] == self.eos_id:
            return "stop"
        if len(job.generated) >= job.max_tokens or len(job.prompt) + len(job.generated) >= self.n_ctx:
            return "length"
        return None

    def _leave(self, row: int, reason: str) -> None:
        last = len(self.running) - 1
        job = self.running[row]
        if row != last:   # keep rows contiguous: the last running row moves into the hole
            self.cache.copy_row(last, row)
            self.running[row] = self.running[last]
        self.running.pop()
        self._finish(job, reason)

    def _finish(self, job: Job, reason: str) -> None:
        with self.cond:
            self.stats["finish_reasons"][reason.partition(":")[0]] += 1
        piece, tokens = job.text.finish() if job.text is not None else ("", [])
        self._emit(job, ("finish", reason, piece, tokens))

    @staticmethod
    def _emit(job: Job, event: Event) -> None:
        try:
            job.emit(event)
        except Exception:   # the owner is gone (its event loop closed): nothing to tell
            job.cancelled = True
