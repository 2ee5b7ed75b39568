"""The bridge from a request's event loop to the scheduler's thread: a Generation is one request's
choices (each prompt x n) queued as scheduler jobs, their events gathered into one response or
streamed as server-sent events."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from gpt2.sampling import SamplingError, check_params, seeded_rng
from gpt2.tokenizer import TextStream

from .protocol import ApiError, GenerationRequest, bad, choice_body, usage
from .scheduler import Job, QueueFull
from .server import Server
from .text import ChoiceText, echo_prompt


def sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class Generation:
    """One request's choices (each prompt x n) queued as scheduler jobs, and their events."""

    def __init__(self, server: Server, req: GenerationRequest, prompts: list[list[int]]):
        self.server, self.req, self.prompts = server, req, prompts
        if len(prompts) * req.n > server.max_choices:
            raise bad("n" if req.n > 1 else "prompt", f"{len(prompts)} prompt(s) x n = {req.n} choices; this "
                      f"server takes at most {server.max_choices} per request (--max-batch + --max-queue)")
        try:
            check_params(req.params, server.vocab)
        except SamplingError as e:
            raise bad(e.field, str(e)) from None
        budgets = [server.budget(ids, req.max_tokens) for ids in prompts]
        self.id = ("chatcmpl-" if req.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.events_in: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + server.timeout
        self.jobs = [self._job(ids, budget, j, p * req.n + j, loop, deadline)
                     for p, (ids, budget) in enumerate(zip(prompts, budgets)) for j in range(req.n)]
        try:
            server.scheduler.submit(self.jobs)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy: {e}; retry later", code="queue_full",
                           type="server_error") from None

    def _job(self, ids: list[int], max_tokens: int, stream: int, index: int, loop, deadline: float) -> Job:
        """Choice `index`: sample `stream` of its prompt (its own generator from the seed)."""
        req, tok = self.req, self.server.tok

        def emit(event):   # on the scheduler's thread
            loop.call_soon_threadsafe(self.events_in.put_nowait, (index, event))

        echo = echo_prompt(TextStream(tok), ids) if req.echo else ("", None)
        text = ChoiceText(TextStream(tok), req.stops + req.extra_stops, tok.eot_id, req.params.min_tokens, *echo)
        rng = seeded_rng(req.seed, stream) if req.params.temperature > 0 else None
        return Job(ids, max_tokens, emit, req.params, rng, text, req.logprobs, req.echo,
                   stop_at_eos=not req.ignore_eos, deadline=deadline)

    def cancel(self) -> None:
        for job in self.jobs:
            self.server.scheduler.cancel(job)   # a no-op for a finished job

    def _reason(self, reason: str) -> str:
        """A job's finish reason as OpenAI's finish_reason, or the error it stands for."""
        if reason in ("stop", "length"):
            return reason
        if reason == "timeout":
            raise ApiError(504, f"generation did not finish within {self.server.timeout:g} s (--timeout)",
                           code="timeout", type="server_error")
        raise ApiError(500, f"generation {reason}", code="generation_failed", type="server_error")

    def usage(self) -> dict:
        return usage(sum(len(ids) for ids in self.prompts), sum(len(job.generated) for job in self.jobs))

    def body(self, obj: str, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.server.name,
                "choices": choices, **extra}

    async def collect(self, request) -> dict | None:
        """The whole response once every choice finished; None if the client left first."""
        n = len(self.jobs)
        texts, tokens, finish = [""] * n, [[] for _ in range(n)], [None] * n
        checked = time.monotonic()
        try:
            while None in finish:
                try:
                    index, event = await asyncio.wait_for(self.events_in.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    index = None
                if time.monotonic() - checked > 0.5:   # a client that left frees its rows
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return None
                if index is None:
                    continue
                texts[index] += event[-2]
                tokens[index] += event[-1]
                if event[0] == "finish":
                    finish[index] = self._reason(event[1])
        finally:
            self.cancel()
        choices = [choice_body(self.req, i, texts[i], tokens[i], self.server.tok, finish[i], stream=False)
                   for i in range(n)]
        return self.body("chat.completion" if self.req.chat else "text_completion", choices, usage=self.usage())

    async def events(self):
        """Server-sent events as the choices' text comes, ending with data: [DONE]."""
        obj = "chat.completion.chunk" if self.req.chat else "text_completion"
        try:
            if self.req.chat:
                yield sse(self.body(obj, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None} for i in range(len(self.jobs))]))
            running = len(self.jobs)
            while running:
                for index, (piece, tokens, finish) in (await self._ready()).items():
                    if piece or tokens or finish:
                        yield sse(self.body(obj, [choice_body(self.req, index, piece, tokens, self.server.tok,
                                                              finish, stream=True)]))
                    running -= finish is not None
            if self.req.include_usage:
                yield sse(self.body(obj, [], usage=self.usage()))
        except ApiError as e:
            yield sse(e.body())
        finally:
            # a client that disconnects ends this generator (Starlette cancels it): free the rows
            self.cancel()
        yield sse("[DONE]")

    async def _ready(self) -> dict[int, tuple[str, list, str | None]]:
        """Every event that has come, at least one, merged per choice: {index: (text, tokens,
        finish reason or None)}. When the stream falls behind the scheduler, a chunk then carries
        several tokens instead of each costing a chunk of its own."""
        events = [await self.events_in.get()]
        while not self.events_in.empty():
            events.append(self.events_in.get_nowait())
        merged: dict[int, tuple[str, list, str | None]] = {}
        for index, event in events:
            piece, tokens, _ = merged.get(index, ("", [], None))
            finish = self._reason(event[1]) if event[0] == "finish" else None
            merged[index] = (piece + event[-2], tokens + event[-1] if self.req.logprobs is not None else [], finish)
        return merged
