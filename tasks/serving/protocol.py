"""The request and response schema of tasks.serve: OpenAI's completions and chat completions,
and vLLM's tokenizer endpoints, each request checked field by field into a typed value.

Every field of OpenAI's API is either supported (its type and range checked), or refused with
400 `unsupported_parameter` naming it (null, or a value that asks for what we do anyway, such as
`response_format: {"type": "text"}`, is accepted); any other field is 400 `unknown_parameter`, as
OpenAI answers. FIELDS is that table; tasks/serving/README.md shows it, and a test keeps the two
the same. Nothing here touches HTTP or the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gpt2.sampling import SamplingError, SamplingParams

from .text import TokenOut

MAX_STOPS = 16        # stop strings per request (OpenAI allows 4; lm-eval sends a task's and one more)
MAX_LOGPROBS = 20     # alternatives per token (OpenAI's limit for top_logprobs)
MAX_N = 16            # choices per prompt


class ApiError(Exception):
    """A request we refuse: becomes {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


# ------------------------------------------------------------------ the field table
@dataclass(frozen=True)
class Field:
    name: str
    where: tuple[str, ...]            # "completions", "chat"
    supported: bool
    what: str                         # one line for the README
    neutral: tuple = ()               # unsupported: values accepted besides null (they ask for nothing)


BOTH = ("completions", "chat")
FIELDS = [
    Field("model", BOTH, True, "must be this server's model id (GET /v1/models); may be left out"),
    Field("prompt", ("completions",), True, "a string, a list of strings, a list of token ids or a list of them"),
    Field("messages", ("chat",), True, "roles system/developer, user, assistant; content a string or text parts"),
    Field("max_tokens", BOTH, True, "completions: default 16, 0 with echo scores the prompt only; chat: default --max-tokens"),
    Field("max_completion_tokens", ("chat",), True, "the same as max_tokens"),
    Field("temperature", BOTH, True, "0..2, default 1; 0 is greedy"),
    Field("top_p", BOTH, True, "(0, 1]: sample from the smallest set of tokens reaching this probability"),
    Field("n", BOTH, True, f"1..{MAX_N} choices per prompt; sampled ones draw distinct streams from seed"),
    Field("seed", BOTH, True, "an integer: the same request gives the same tokens, alone or batched"),
    Field("stop", BOTH, True, f"a string or up to {MAX_STOPS}; the text ends before the first one"),
    Field("stream", BOTH, True, "server-sent events ending in data: [DONE]"),
    Field("stream_options", BOTH, True, "{include_usage: bool}, with stream only"),
    Field("presence_penalty", BOTH, True, "-2..2: logit - presence * (count > 0), counting generated tokens"),
    Field("frequency_penalty", BOTH, True, "-2..2: logit - frequency * count, counting generated tokens"),
    Field("logit_bias", BOTH, True, "token id -> -100..100, added to its logit (+100 forces it, -100 bans it)"),
    Field("logprobs", ("completions",), True, f"0..{MAX_LOGPROBS}: each token's log-probability and the most likely alternatives"),
    Field("logprobs", ("chat",), True, "true: each token's log-probability (logprobs.content)"),
    Field("top_logprobs", ("chat",), True, f"0..{MAX_LOGPROBS} alternatives per token, with logprobs: true"),
    Field("echo", ("completions",), True, "the prompt before the completion, in text and in logprobs"),
    Field("best_of", ("completions",), True, "only equal to n (no reranking): more is 400 unsupported_parameter"),
    Field("suffix", ("completions",), False, "no insertion: only empty", neutral=("",)),
    Field("user", BOTH, True, "an end-user id: accepted, not stored, no effect on the output"),
    Field("safety_identifier", ("chat",), True, "as user: accepted, not stored, no effect"),
    Field("top_k", BOTH, True, "vLLM's: sample from the k most likely tokens (0 or -1: all)"),
    Field("min_tokens", BOTH, True, "vLLM's: no end-of-text and no stop string before this many tokens"),
    Field("ignore_eos", BOTH, True, "vLLM's: keep generating past end-of-text (up to max_tokens)"),
    Field("response_format", ("chat",), False, "no JSON mode: only {type: text}", neutral=({"type": "text"},)),
    Field("tools", ("chat",), False, "no tool calls: only an empty list", neutral=([],)),
    Field("tool_choice", ("chat",), False, "only none", neutral=("none",)),
    Field("parallel_tool_calls", ("chat",), False, "no tool calls"),
    Field("functions", ("chat",), False, "no function calls: only an empty list", neutral=([],)),
    Field("function_call", ("chat",), False, "only none", neutral=("none",)),
    Field("audio", ("chat",), False, "text only"),
    Field("modalities", ("chat",), False, "only [text]", neutral=(["text"],)),
    Field("prediction", ("chat",), False, "no predicted outputs"),
    Field("reasoning_effort", ("chat",), False, "not a reasoning model"),
    Field("verbosity", ("chat",), False, "no such control"),
    Field("web_search_options", ("chat",), False, "no web search"),
    Field("store", ("chat",), False, "nothing is stored: only false", neutral=(False,)),
    Field("metadata", ("chat",), False, "nothing is stored"),
    Field("service_tier", ("chat",), False, "one tier: only auto or default", neutral=("auto", "default")),
    Field("prompt_cache_key", ("chat",), False, "no prompt cache"),
]
FIELDS_OF = {endpoint: {f.name: f for f in FIELDS if endpoint in f.where} for endpoint in BOTH}


def check_fields(body: dict, endpoint: str) -> None:
    """400 for a field we do not know or do not implement (unless it is null or neutral)."""
    known = FIELDS_OF[endpoint]
    for name, value in body.items():
        f = known.get(name)
        if f is None:
            raise ApiError(400, f"unrecognized request argument: {name!r} (see the supported fields "
                                "in tasks/serving/README.md)", param=name, code="unknown_parameter")
        if f.supported or value is None:
            continue
        if value in f.neutral:
            continue
        raise ApiError(400, f"{name} is not supported by this server ({f.what})", param=name,
                       code="unsupported_parameter")


# ------------------------------------------------------------------ typed values
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def get_int(body: dict, name: str, default, lo: int, hi: int | None = None):
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise bad(name, f"{name} must be an integer {span}, got {value!r}")
    return value


def get_number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value) or not lo <= value <= hi:
        raise bad(name, f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def get_bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"{name} must be true or false, got {value!r}")
    return value


@dataclass
class GenerationRequest:
    """A checked completions or chat request: each prompt x n becomes one choice."""
    prompts: list            # completions: str or token-id list each; chat: [] (messages instead)
    messages: list[tuple[str, str]]
    max_tokens: int | None   # None: as much as --max-tokens and the context allow
    n: int
    params: SamplingParams
    seed: int | None
    stops: list[str]
    stream: bool
    include_usage: bool
    ignore_eos: bool
    logprobs: int | None     # alternatives per token; None: no log-probabilities at all
    echo: bool = False
    chat: bool = False
    extra_stops: list[str] = field(default_factory=list)   # the server's own (instruct format)


def _common(body: dict, default_max_tokens: int | None) -> dict:
    """The fields both endpoints share, checked."""
    max_tokens = get_int(body, "max_tokens", None, 0)
    if max_tokens is None:
        max_tokens = get_int(body, "max_completion_tokens", default_max_tokens, 0)
    stream = get_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise bad("stream_options", "stream_options is only allowed with stream: true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad("stream_options", "stream_options may hold include_usage only")
    for name in ("user", "safety_identifier"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad(name, f"{name} must be a string")
    return dict(max_tokens=max_tokens, n=get_int(body, "n", 1, 1, MAX_N), params=sampling_params(body),
                seed=get_int(body, "seed", None, 0, 2 ** 63 - 1), stops=stop_strings(body), stream=stream,
                include_usage=get_bool(options or {}, "include_usage"),
                ignore_eos=get_bool(body, "ignore_eos"))


def sampling_params(body: dict) -> SamplingParams:
    top_k = get_int(body, "top_k", None, -1)
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict) or not all(_token_key(k) and _is_number(v) for k, v in bias.items()):
        raise bad("logit_bias", "logit_bias must map token ids (as strings) to numbers")
    try:
        return SamplingParams(
            temperature=get_number(body, "temperature", 1.0, 0.0, 2.0), top_k=top_k if top_k and top_k > 0 else None,
            top_p=_top_p(body), presence_penalty=get_number(body, "presence_penalty", 0.0, -2.0, 2.0),
            frequency_penalty=get_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
            logit_bias={int(k): float(v) for k, v in bias.items()}, min_tokens=get_int(body, "min_tokens", 0, 0))
    except SamplingError as e:
        raise bad(e.field, str(e)) from None


def _token_key(k) -> bool:
    return isinstance(k, str) and k.isascii() and k.isdigit() or _is_int(k)


def _top_p(body: dict) -> float | None:
    top_p = body.get("top_p")
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise bad("top_p", f"top_p must be a number in (0, 1], got {top_p!r}")
    return None if top_p is None else float(top_p)


def stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", "stop must be a non-empty string or a list of them")
    if len(stops) > MAX_STOPS:
        raise bad("stop", f"stop holds {len(stops)} strings; this server takes at most {MAX_STOPS}")
    return stops


def parse_completion(body: dict) -> GenerationRequest:
    """A /v1/completions body, every field checked."""
    check_fields(body, "completions")
    common = _common(body, 16)
    echo = get_bool(body, "echo")
    if common["max_tokens"] == 0 and not echo:
        raise bad("max_tokens", "max_tokens: 0 generates nothing; it is allowed with echo: true (to score a text)")
    best_of = get_int(body, "best_of", common["n"], 1)
    if best_of < common["n"]:
        raise bad("best_of", f"best_of ({best_of}) must be at least n ({common['n']})")
    if best_of > common["n"]:
        raise ApiError(400, "best_of > n is not supported by this server (no reranking)", param="best_of",
                       code="unsupported_parameter")
    return GenerationRequest(prompts=completion_prompts(body.get("prompt")), messages=[],
                             logprobs=get_int(body, "logprobs", None, 0, MAX_LOGPROBS), echo=echo, **common)


def completion_prompts(prompt) -> list:
    """A string, a list of strings, token ids or lists of token ids -> a list of prompts."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(_is_int(t) for t in prompt):
            return [prompt]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return list(prompt)
    raise bad("prompt", "prompt must be a string, a list of strings, a list of token ids or a list of "
                        "non-empty token-id lists")


def parse_chat(body: dict) -> GenerationRequest:
    """A /v1/chat/completions body, every field checked."""
    check_fields(body, "chat")
    common = _common(body, None)
    if common["max_tokens"] == 0:
        raise bad("max_tokens", "max_tokens must be >= 1 for a chat completion")
    want = get_bool(body, "logprobs")
    top = get_int(body, "top_logprobs", None, 0, MAX_LOGPROBS)
    if top is not None and not want:
        raise bad("top_logprobs", "top_logprobs needs logprobs: true")
    return GenerationRequest(prompts=[], messages=chat_messages(body.get("messages")), chat=True,
                             logprobs=(top or 0) if want else None, **common)


MESSAGE_KEYS = {"role", "content"}


def chat_messages(messages) -> list[tuple[str, str]]:
    """(role, text) pairs; content a string or a list of text parts (other parts: 400)."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise bad(where, f"{where} must be an object with a role of system, developer, user or assistant")
        for key in set(m) - MESSAGE_KEYS:
            if m[key] is not None:
                raise ApiError(400, f"{where}.{key} is not supported by this server", param=f"{where}.{key}",
                               code="unsupported_parameter")
        out.append(("system" if m["role"] == "developer" else m["role"], _content(m.get("content"), where)))
    return out


def _content(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):                   # [{"type": "text", "text": ...}, ...]
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"{where}.content[{j}]: only text parts are supported, not {kind!r}",
                               param=f"{where}.content[{j}]", code="unsupported_parameter")
        return "".join(p["text"] for p in content)
    raise bad(f"{where}.content", f"{where}.content must be a string or a list of text parts")


# ------------------------------------------------------------------ vLLM's tokenizer endpoints
def parse_tokenize(body: dict) -> str:
    """POST /tokenize {"prompt": str, "add_special_tokens": bool, "model"}: the text.
    GPT-2's tokenizer has no special tokens to add, so add_special_tokens changes nothing."""
    _only(body, {"prompt", "add_special_tokens", "model"})
    get_bool(body, "add_special_tokens", True)
    if not isinstance(body.get("prompt"), str):
        raise bad("prompt", "prompt must be a string")
    return body["prompt"]


def parse_detokenize(body: dict) -> list[int]:
    """POST /detokenize {"tokens": [int], "model"}: the ids."""
    _only(body, {"tokens", "model"})
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(_is_int(t) for t in tokens):
        raise bad("tokens", "tokens must be a list of token ids")
    return tokens


def _only(body: dict, allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise ApiError(400, f"unrecognized request argument: {name!r}", param=name, code="unknown_parameter")


# ------------------------------------------------------------------ responses
def token_text(tok, token_id: int) -> str:
    """A token as OpenAI shows it: its text, or 'bytes:\\xe2\\x80' when its bytes are not whole
    UTF-8 characters (part of an emoji, say)."""
    raw = tok.decode_bytes([token_id])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def legacy_logprobs(tokens: list[TokenOut], tok, k: int) -> dict:
    """/v1/completions' logprobs object. top_logprobs holds the k most likely tokens and the
    chosen one (as OpenAI: up to k + 1); a prompt's first token has null in both lists."""
    def top(t: TokenOut) -> dict | None:
        if t.top is None:
            return None
        alternatives = {token_text(tok, i): lp for i, lp in t.top[:k]}
        alternatives.setdefault(token_text(tok, t.id), t.logprob)
        return alternatives
    return {"tokens": [token_text(tok, t.id) for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [top(t) for t in tokens], "text_offset": [t.offset for t in tokens]}


def chat_logprobs(tokens: list[TokenOut], tok, k: int) -> dict:
    """/v1/chat/completions' logprobs object: content[] = {token, logprob, bytes, top_logprobs}."""
    def entry(i: int, lp: float) -> dict:
        return {"token": token_text(tok, i), "logprob": lp, "bytes": list(tok.decode_bytes([i]))}
    return {"content": [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in (t.top or [])[:k]]}
                        for t in tokens], "refusal": None}


def choice_body(req: GenerationRequest, index: int, text: str, tokens: list[TokenOut] | None, tok,
                finish: str | None, stream: bool) -> dict:
    """One choice of a response (stream: of a chunk), with its log-probabilities if asked for."""
    logprobs = None
    if req.logprobs is not None and tokens is not None:
        logprobs = (chat_logprobs if req.chat else legacy_logprobs)(tokens, tok, req.logprobs)
    if not req.chat:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    if stream:
        delta = {"content": text} if text else {}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
            "finish_reason": finish}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def fields_table() -> str:
    """FIELDS as the markdown table of tasks/serving/README.md (a test keeps the two the same)."""
    rows = ["| field | endpoint | supported | what it does |", "|---|---|---|---|"]
    for f in FIELDS:
        where = "both" if len(f.where) == 2 else f.where[0]
        rows.append(f"| `{f.name}` | {where} | {'yes' if f.supported else 'no: 400 `unsupported_parameter`'} "
                    f"| {f.what} |")
    return "\n".join(rows)
