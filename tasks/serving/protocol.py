"""The OpenAI-style schema of tasks.serve: checking a request body, rendering chat messages into
a prompt, turning generated tokens into text that stops at stop strings, and the shapes of the
responses (a whole body, or server-sent events as the tokens come).

Nothing here touches HTTP or the model, so each piece is tested on its own.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from gpt2.tokenizer import TextStream

from ..data.alpaca import HEADER as ALPACA_HEADER
from ..data.alpaca import RESPONSE_HEADER

MAX_STOPS = 4   # as OpenAI: at most four stop strings


class ApiError(Exception):
    """A request we refuse: becomes {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Sampling:
    """What a request asks of the generator, checked."""
    max_tokens: int | None          # None: as much as the context and --max-tokens allow
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool


# ------------------------------------------------------------------ checking fields
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def parse_sampling(body: dict, default_max_tokens: int | None) -> Sampling:
    """The sampling fields of a completions or chat request, each checked for type and range."""
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif not _is_int(max_tokens) or max_tokens < 1:
        raise _bad("max_tokens", f"max_tokens must be a positive integer, got {max_tokens!r}")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not _is_number(temperature) or not 0.0 <= temperature <= 2.0:
        raise _bad("temperature", f"temperature must be a number in [0, 2], got {temperature!r}")
    top_p = body.get("top_p")
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise _bad("top_p", f"top_p must be a number in (0, 1], got {top_p!r}")
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise _bad("top_k", f"top_k must be a non-negative integer (0 = off), got {top_k!r}")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2 ** 63):
        raise _bad("seed", f"seed must be an integer in [0, 2^63), got {seed!r}")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOPS:
        raise _bad("stop", f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream", f"stream must be true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "stream_options must be an object")
    n = body.get("n", 1)
    if n != 1:
        raise _bad("n", "only n = 1 is supported")
    return Sampling(max_tokens, float(temperature), top_k or None,
                    None if top_p is None else float(top_p), seed, stop, stream,
                    bool(options.get("include_usage", False)))


def completion_prompt(body: dict) -> str | list[int]:
    """The prompt of a /v1/completions request: a string, a list holding one string, or token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return prompt
    raise ApiError(400, "prompt must be a string or a list of token ids (one prompt per request)",
                   param="prompt", code="invalid_value")


def chat_messages(body: dict) -> list[tuple[str, str]]:
    """(role, text) pairs of a chat request; content may be a string or a list of text parts."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages", code="invalid_value")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] must be an object with a role of system, user or assistant",
                           param=f"messages[{i}]", code="invalid_value")
        content = m.get("content")
        if isinstance(content, list):   # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content", code="invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string",
                           param=f"messages[{i}].content", code="invalid_value")
        out.append(("system" if m["role"] == "developer" else m["role"], content))
    return out


# ------------------------------------------------------------------ prompts
INSTRUCT_STOPS = ["\n\n### Instruction:", "\n\n### Response:"]


def render_chat(messages: list[tuple[str, str]], instruct: bool) -> str:
    """The text the model continues for a conversation.

    Instruction-tuned runs (tasks.instruct) see the Alpaca format they were trained on: the
    header (or the system message), then each user turn as "### Instruction:" and each answer as
    "### Response:", ending with an open "### Response:". One user message gives exactly
    tasks.instruct's prompt. A plain language model just continues the turns' text, one
    paragraph each.
    """
    if not instruct:
        return "\n\n".join(text for _, text in messages)
    system = [text for role, text in messages if role == "system"]
    parts = ["\n\n".join(system) if system else ALPACA_HEADER]
    for role, text in messages:
        if role == "user":
            parts.append(f"### Instruction:\n{text}")
        elif role == "assistant":
            parts.append(f"### Response:\n{text}")
    return "\n\n".join(parts) + RESPONSE_HEADER


# ------------------------------------------------------------------ text out
class StopText:
    """Generated tokens -> text, cut before the first stop string.

    Text that could be the start of a stop string is held back until it is clear, so a stream
    never shows part of a stop string.
    """

    def __init__(self, tokenizer, stops: list[str]):
        self.utf8 = TextStream(tokenizer)
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False
        self.tokens = 0       # tokens received, counted by the caller (usage)

    def push(self, token: int) -> str:
        """New text to show after this token ('' if none yet); sets `stopped` at a stop string."""
        self.text += self.utf8.push(token)
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._send(min(hits))
        return self._send(len(self.text) - self.hold)

    def flush(self) -> str:
        """The rest of the text once generation ended without a stop string."""
        if self.stopped:
            return ""
        self.text += self.utf8.flush()
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        self.stopped = bool(hits)
        return self._send(min(hits) if hits else len(self.text))

    def _send(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:upto], upto
        return out


# ------------------------------------------------------------------ responses
@dataclass
class Reply:
    """What every response to one request shares (its id, kind, model, creation time, prompt
    length), and the shapes of its bodies: a whole one, or the events of a stream."""
    chat: bool
    model: str
    prompt_tokens: int
    id: str
    created: int

    @classmethod
    def new(cls, chat: bool, model: str, prompt_tokens: int) -> Reply:
        return cls(chat, model, prompt_tokens, ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
                   int(time.time()))

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def choice(self, piece: str, finish: str | None, stream: bool) -> dict:
        if not self.chat:
            return {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
        if stream:
            return {"index": 0, "delta": {"content": piece} if piece else {}, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": piece},
                "logprobs": None, "finish_reason": finish}

    def body(self, text: str, finish: str, completion_tokens: int) -> dict:
        """The whole response of a request that did not ask to stream."""
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [self.choice(text, finish, False)],
                "usage": self.usage(completion_tokens)}

    def event(self, choices: list, **extra) -> str:
        """One server-sent event of a stream."""
        data = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, **extra}
        return f"data: {json.dumps(data)}\n\n"

    def first_event(self) -> str | None:
        """A chat stream opens with the assistant's role and no text (none for completions)."""
        if not self.chat:
            return None
        return self.event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])

