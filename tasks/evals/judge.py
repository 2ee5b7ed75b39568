"""Scoring instruction-tuned responses with a judge model over HTTP (Ollama or OpenAI-compatible).

Each record {instruction, input?, output, model_response} becomes one chat request asking the
judge for a 0-100 score of `model_response` against the reference `output`. The judge's reply is
treated as untrusted data: we only look for a number in it, nothing else in it is acted on.
Only the standard library talks HTTP (urllib), so no new dependency is needed.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..common.progress import progress_bar
from ..data.alpaca import format_alpaca_prompt

# The exact request sent to the judge, one per record (docs/evaluation.md quotes it).
JUDGE_PROMPT = (
    "Given the input `{prompt}` and correct output `{output}`, "
    "score the model response `{model_response}` on a scale from 0 to 100, "
    "where 100 is the best score. Respond with the integer number only."
)

APIS = ("ollama", "openai")


class JudgeInputError(ValueError):
    """The responses file (or an option) cannot be used: missing, not JSON, wrong shape."""


class JudgeRequestError(RuntimeError):
    """A request to the judge failed for good (after any retries)."""


class JudgeUnreachableError(JudgeRequestError):
    """Nothing listens at the judge's address (connection refused, unknown host): no record can be
    scored, so the run stops at once instead of failing every record after its retries."""


class ScoreParseError(ValueError):
    """The judge's reply holds no integer score in 0..100."""


def judge_prompt(record: dict) -> str:
    return JUDGE_PROMPT.format(prompt=format_alpaca_prompt(record), output=record["output"],
                               model_response=record["model_response"])


# A number, possibly signed or with a fraction, so that "-5" and "85.5" are seen (and rejected)
# as what they are rather than read as "5" or "85".
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse_score(reply: str) -> int:
    """The first number in the judge's reply, which must be an integer in 0..100."""
    match = _NUMBER.search(reply)
    if match is None:
        raise ScoreParseError(f"no number in the judge's reply {_preview(reply)}")
    value = float(match.group())
    if value != int(value):
        raise ScoreParseError(f"{match.group()} is not an integer (reply {_preview(reply)})")
    if not 0 <= value <= 100:
        raise ScoreParseError(f"{match.group()} is outside 0..100 (reply {_preview(reply)})")
    return int(value)


def _preview(text: str, limit: int = 60) -> str:
    # repr() keeps control characters from the reply out of terminals and logs.
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ----------------------------------------------------------------------------- HTTP client


class _RetryableError(Exception):
    """A failure worth another try: 5xx or 429, timeout, refused or dropped connection."""


@dataclass
class JudgeClient:
    """Sends one prompt to the judge and returns the text of its reply."""

    url: str
    model: str
    api: str = "ollama"
    api_key: str | None = None  # sent as a Bearer token (OpenAI-compatible API only)
    timeout: float = 60.0  # seconds a whole request may take (connect, send, every read)
    retries: int = 3  # extra attempts after the first, for retryable failures only
    backoff: float = 1.0  # seconds before the first retry; doubles after each one
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise JudgeInputError(f"unknown API {self.api!r}; choose one of {', '.join(APIS)}")
        if not self.url.startswith(("http://", "https://")):
            raise JudgeInputError(f"judge URL must start with http:// or https://, got {self.url!r}")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise JudgeInputError("timeout must be > 0, retries and backoff >= 0")
        self.url = self.url.rstrip("/")

    def __repr__(self) -> str:  # keep the key out of any repr that ends up in a log
        return f"JudgeClient(url={self.url!r}, model={self.model!r}, api={self.api!r})"

    def _request(self, content: str) -> tuple[str, dict, dict]:
        messages = [{"role": "user", "content": content}]
        if self.api == "ollama":
            # Fixed seed, temperature 0 and context so that scores are repeatable.
            body = {"model": self.model, "messages": messages, "stream": False,
                    "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}}
            return f"{self.url}/api/chat", body, {}
        body = {"model": self.model, "messages": messages, "temperature": 0}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return f"{self.url}/v1/chat/completions", body, headers

    def ask(self, content: str) -> str:
        """The judge's reply text, retrying with exponential backoff on transient failures."""
        url, body, headers = self._request(content)
        for attempt in range(self.retries + 1):
            try:
                return self._reply_text(self._post(url, body, headers))
            except _RetryableError as err:
                if attempt == self.retries:
                    tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    raise JudgeRequestError(f"{err} (gave up after {tries})") from None
                self.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def _post(self, url: str, body: dict, headers: dict) -> Any:
        data = json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
        deadline = time.monotonic() + self.timeout
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = self._read_until(resp, deadline)
        except urllib.error.HTTPError as err:
            msg = self._scrub(f"HTTP {err.code} {err.reason} from {url}")
            err.close()
            if err.code >= 500 or err.code == 429:
                raise _RetryableError(msg) from None
            raise JudgeRequestError(msg) from None
        except (TimeoutError, socket.timeout):
            raise _RetryableError(f"no reply from {url} within {self.timeout:g} s") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise _RetryableError(f"no reply from {url} within {self.timeout:g} s") from None
            if isinstance(err.reason, (ConnectionRefusedError, socket.gaierror)):
                raise JudgeUnreachableError(self._scrub(f"cannot reach {url}: {err.reason}")) from None
            raise _RetryableError(self._scrub(f"cannot reach {url}: {err.reason}")) from None
        except (ConnectionError, http.client.HTTPException) as err:
            raise _RetryableError(self._scrub(f"connection to {url} failed: {err!r}")) from None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise JudgeRequestError(f"the reply from {url} is not JSON") from None

    def _read_until(self, resp, deadline: float) -> bytes:
        """The body, read in chunks so that a server trickling bytes cannot outlast the deadline
        (urllib's timeout bounds each read, not the whole request)."""
        chunks = []
        while chunk := resp.read1(1 << 16):  # what has arrived, at most one socket read
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError
        return b"".join(chunks)

    def _reply_text(self, reply: Any) -> str:
        try:
            if self.api == "ollama":
                text = reply["message"]["content"]
            else:
                text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeRequestError(f"the {self.api} reply has no message content") from None
        if not isinstance(text, str):
            raise JudgeRequestError(f"the {self.api} reply's message content is not text")
        return text

    def _scrub(self, text: str) -> str:
        # Error texts are saved and printed: make sure the key never rides along in one.
        return text.replace(self.api_key, "***") if self.api_key else text


# ----------------------------------------------------------------------------- records


def load_responses(path: str | os.PathLike) -> list[dict]:
    """The records of a responses file, checked: a JSON list of objects with string fields."""
    path = Path(path)
    if not path.is_file():
        raise JudgeInputError(f"responses file not found: {path}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise JudgeInputError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(records, list) or not records:
        raise JudgeInputError(f"{path} must hold a non-empty JSON list of records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise JudgeInputError(f"record {i} of {path} is not a JSON object")
        for key in ("instruction", "output", "model_response"):
            if key not in rec:
                raise JudgeInputError(f"record {i} of {path} has no {key!r} field")
        for key in ("instruction", "input", "output", "model_response"):
            # a null input means no input, as in the records tasks.instruct answers
            if key in rec and not isinstance(rec[key], str) and not (key == "input" and rec[key] is None):
                raise JudgeInputError(f"record {i} of {path}: {key!r} must be a string")
    return records


@dataclass
class JudgeResult:
    scores: list[dict]  # per record: {"index", "score" (int or None), "error" (str or None)}

    @property
    def scored(self) -> int:
        return sum(s["score"] is not None for s in self.scores)

    @property
    def failed(self) -> int:
        return len(self.scores) - self.scored

    @property
    def mean(self) -> float | None:
        values = [s["score"] for s in self.scores if s["score"] is not None]
        return sum(values) / len(values) if values else None


def judge_records(records: Sequence[dict], client: JudgeClient, progress: bool = True,
                  done: Sequence[dict] = (), on_score: Callable[[dict], None] | None = None) -> JudgeResult:
    """Ask the judge about every record after the `done` ones; a failed record is recorded and the
    run goes on, but an unreachable judge stops it (JudgeUnreachableError). `on_score` sees each
    new score as it comes (to append it to a file)."""
    scores = list(done)
    with progress_bar(total=len(records), initial=len(scores), desc="judging", unit="record",
              disable=not progress) as bar:
        for i in range(len(scores), len(records)):
            score, error = None, None
            try:
                score = parse_score(client.ask(judge_prompt(records[i])))
            except JudgeUnreachableError:
                raise
            except (JudgeRequestError, ScoreParseError) as err:
                error = str(err)
            scores.append({"index": i, "score": score, "error": error})
            if on_score is not None:
                on_score(scores[-1])
            bar.update(1)
    return JudgeResult(scores)
