"""The engine side of tasks.serve: the model's scheduler and tokenizer, and the settings every
request is checked against (API key, body size and JSON, model name, token ids, context); what the
GET endpoints show about the model and its tokenizer."""
from __future__ import annotations

import hmac
import json
import time

from gpt2.tokenizer import EOT_ID

from .chat import INSTRUCT_STOPS, chat_template, render_chat
from .protocol import ApiError, GenerationRequest, bad
from .scheduler import Scheduler


class Server:
    """The model's scheduler and tokenizer, and the settings every request is checked against."""

    def __init__(self, model, tokenizer, name: str, instruct: bool = False, api_key: str | None = None,
                 max_batch: int = 8, max_queue: int = 32, chat_max_tokens: int = 256,
                 max_body: int = 1 << 20, timeout: float = 300.0, cors_origins: tuple[str, ...] = (),
                 log_requests: bool = True):
        self.tok, self.name, self.instruct, self.api_key = tokenizer, name, instruct, api_key
        self.n_ctx, self.vocab = model.config.n_ctx, tokenizer.n_vocab
        self.chat_max_tokens, self.max_body, self.timeout = chat_max_tokens, max_body, timeout
        self.max_choices = max_batch + max_queue
        self.cors_origins, self.log_requests = tuple(cors_origins), log_requests
        self.scheduler = Scheduler(model, max_batch, max_queue, eos_id=tokenizer.eot_id)
        self.created = int(time.time())

    # ---------------------------------------------------------- request checks
    def check_auth(self, request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    def check_model(self, model, param: str | None = "model") -> None:
        if model is not None and model != self.name:
            raise ApiError(404, f"the model {model!r} does not exist; this server has {self.name!r}",
                           param=param, code="model_not_found")

    async def read_json(self, request) -> dict:
        """The body as a JSON object, no larger than --max-body, naming a model we have."""
        size = request.headers.get("content-length")
        too_large = ApiError(413, f"request body over {self.max_body} bytes", code="request_too_large")
        if size is not None and (not size.isdigit() or int(size) > self.max_body):
            raise too_large
        body = bytearray()
        async for chunk in request.stream():   # a chunked body has no length to check up front
            body += chunk
            if len(body) > self.max_body:
                raise too_large
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        self.check_model(data.get("model"))
        return data

    def check_ids(self, ids: list[int], param: str) -> list[int]:
        if not all(0 <= t < self.vocab for t in ids):
            raise bad(param, f"token ids must be in [0, {self.vocab})")
        return ids

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """A prompt's ids ("<|endoftext|>" in a text is that token); empty starts from it."""
        ids = self.tok.encode(prompt) if isinstance(prompt, str) else self.check_ids(list(prompt), "prompt")
        return ids or [self.tok.eot_id]

    def chat_prompt_ids(self, req: GenerationRequest) -> list[int]:
        if self.instruct:
            req.extra_stops = INSTRUCT_STOPS
        return self.prompt_ids(render_chat(req.messages, self.instruct))

    def budget(self, ids: list[int], asked: int | None) -> int:
        """max_tokens for this prompt: what was asked, checked against the context."""
        room = self.n_ctx - len(ids)
        wanted = min(self.chat_max_tokens, max(room, 1)) if asked is None else asked
        if wanted > room:                    # max_tokens 0 (echo) may score a whole context
            raise ApiError(400, f"this model's context is {self.n_ctx} tokens; the prompt has {len(ids)} "
                                f"and max_tokens asks for {wanted}", param="max_tokens",
                           code="context_length_exceeded")
        return wanted

    # ---------------------------------------------------------- what GET endpoints show
    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "minigrad-gpt2",
                "context_length": self.n_ctx, "max_model_len": self.n_ctx, "instruct": self.instruct}

    def tokenizer_info(self) -> dict:
        """vLLM's /tokenizer_info: what a client needs to tokenize as we do (lm-eval's remote tokenizer)."""
        eot = self.tok.decode([EOT_ID])
        return {"tokenizer_class": "GPT2Tokenizer", "eos_token": eot, "bos_token": eot, "unk_token": eot,
                "pad_token": None, "add_bos_token": False, "model_max_length": self.n_ctx,
                "vocab_size": self.vocab, "chat_template": chat_template(self.instruct)}
