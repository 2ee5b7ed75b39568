"""The engine side of tasks.serve: the model with its tokenizer and scheduler, the settings
every request is checked against, and the bridge from the scheduler's thread to a request's
event loop (a job's tokens come back on an asyncio queue)."""
from __future__ import annotations

import asyncio
import hmac
import json
import time

from .protocol import ApiError, StopText
from .scheduler import Job, QueueFull, Scheduler


class Server:
    """The model, its tokenizer and scheduler, and the settings every request is checked against."""

    def __init__(self, model, tokenizer, name: str, instruct: bool = False, api_key: str | None = None,
                 max_batch: int = 8, max_queue: int = 32, chat_max_tokens: int = 256,
                 max_body: int = 1 << 20, timeout: float = 300.0):
        self.tok, self.name, self.instruct, self.api_key = tokenizer, name, instruct, api_key
        self.n_ctx = model.config.n_ctx
        self.chat_max_tokens, self.max_body, self.timeout = chat_max_tokens, max_body, timeout
        self.scheduler = Scheduler(model, max_batch, max_queue, eos_id=tokenizer.eot_id)
        self.created = int(time.time())

    # ---------------------------------------------------------- request checks
    def check_auth(self, request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    async def read_body(self, request) -> dict:
        """The request's JSON object, its size and its model checked."""
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > self.max_body):
            raise ApiError(413, f"request body over {self.max_body} bytes", code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():   # a chunked body has no length to check up front
            body += chunk
            if len(body) > self.max_body:
                raise ApiError(413, f"request body over {self.max_body} bytes", code="request_too_large")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        model = data.get("model", self.name)
        if model != self.name:
            raise ApiError(404, f"the model {model!r} does not exist; this server has {self.name!r}",
                           param="model", code="model_not_found")
        return data

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tok.encode(prompt) if prompt else []
        else:
            ids = list(prompt)
            if not all(0 <= t < self.tok.n_vocab for t in ids):
                raise ApiError(400, f"token ids must be in [0, {self.tok.n_vocab})", param="prompt",
                               code="invalid_value")
        return ids or [self.tok.eot_id]   # an empty prompt starts from <|endoftext|>

    def budget(self, ids: list[int], asked: int | None) -> int:
        """max_tokens for this prompt: what was asked, checked against the context."""
        room = self.n_ctx - len(ids)
        if asked is None:
            asked = min(self.chat_max_tokens, room)
        if room < 1 or asked > room:
            raise ApiError(400, f"this model's context is {self.n_ctx} tokens; the prompt has {len(ids)} "
                                f"and max_tokens asks for {asked}", param="max_tokens",
                           code="context_length_exceeded")
        return asked

    # ---------------------------------------------------------- generation
    def submit(self, ids: list[int], sampling, max_tokens: int):
        """Queue a job; returns it and the asyncio queue its events arrive on."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event):   # on the scheduler's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(ids, max_tokens, emit, sampling.temperature, sampling.top_k, sampling.top_p,
                  sampling.seed, deadline=time.monotonic() + self.timeout)
        try:
            self.scheduler.submit(job)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy: {e}; retry later", code="queue_full",
                           type="server_error") from None
        return job, events

    async def tokens(self, job, events, text: StopText, request=None):
        """(new text, finish reason or None) as tokens come; cancels the job at a stop string."""
        checked = time.monotonic()
        while True:
            try:
                kind, value = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                kind = None
            # a non-streaming client that left frees its slot too (twice a second, we look)
            if request is not None and time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                if await request.is_disconnected():
                    self.scheduler.cancel(job)
                    return
            if kind is None:
                continue
            if kind == "token":
                text.tokens += 1   # what this response reports; the job may run a step past a stop
                if value == self.tok.eot_id:
                    continue   # the end is reported as finish "stop", not as text
                piece = text.push(value)
                if text.stopped:
                    self.scheduler.cancel(job)
                    yield piece, "stop"
                    return
                if piece:
                    yield piece, None
            elif value == "timeout":
                raise ApiError(504, f"generation did not finish within {self.timeout:g} s (--timeout)",
                               code="timeout", type="server_error")
            elif value in ("stop", "length"):
                yield text.flush(), ("stop" if text.stopped else value)
                return
            else:   # "error: ..." (or "cancelled", which only we ask for)
                raise ApiError(500, f"generation failed: {value}", code="generation_failed",
                               type="server_error")
