"""GPT-2's tokenizer: tiktoken's "gpt2" encoding, or our from-scratch BPE on the same files.

    tok = get_tokenizer()            # tiktoken (fast, Rust)
    tok = get_tokenizer("bpe")       # gpt2/bpe.py (plain Python, same ids)
    ids = tok.encode("Hello, world!<|endoftext|>")   # [15496, 11, 995, 0, 50256]
    tok.decode(ids)
    text = TextStream(tok)           # incremental decoding: text.push(id) as tokens come, then text.flush()

tiktoken downloads its files on first use (or reads them from $TIKTOKEN_CACHE_DIR). Offline and
without that cache, we build the very same tiktoken encoding from `gpt2/encoder.json` and
`gpt2/vocab.bpe` in our data cache (files.hub), downloading those when online.
"""

from __future__ import annotations

import codecs
from collections.abc import Collection, Iterable
from functools import lru_cache
from pathlib import Path

import tiktoken

from gpt2.bpe import ENDOFTEXT, BPETokenizer, load_gpt2_ranks
from files.hub import MissingFileError, cache_dir, ensure_file

EOT_ID = 50256
N_VOCAB = 50257

# GPT-2's tokenizer files: (cache path, URL, sha256, size), the arguments of ensure_file.
ENCODER_JSON = ("gpt2/encoder.json",
                "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783", 1_042_301)
VOCAB_BPE = ("gpt2/vocab.bpe",
             "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
             "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5", 456_318)

# GPT-2's pre-split pattern as tiktoken writes it (possessive quantifiers are only a speed-up).
GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++"""
                r"""|\s++$|\s+(?!\S)|\s""")


class TokenizerUnavailableError(RuntimeError):
    """Neither tiktoken's cache nor our data cache holds GPT-2's tokenizer files."""


class TiktokenTokenizer:
    """GPT-2 tokenization through a `tiktoken.Encoding`, with the same interface as
    `gpt2.bpe.BPETokenizer`."""

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self.encoding.eot_token

    def encode(self, text: str,
               allowed_special: Collection[str] | str = frozenset({ENDOFTEXT})) -> list[int]:
        """Token ids of `text`; "<|endoftext|>" becomes 50256 unless left out of
        `allowed_special`, in which case finding it in the text raises ValueError."""
        if allowed_special != "all":
            allowed_special = set(allowed_special)
        return self.encoding.encode(text, allowed_special=allowed_special)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, reading special-token strings as plain text."""
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the tokens (invalid UTF-8 becomes U+FFFD)."""
        return self.encoding.decode([int(i) for i in ids])

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes([int(i) for i in ids])


class TextStream:
    """Token ids to text as they come (streaming, a chat loop): GPT-2's tokens are bytes, and a
    character whose UTF-8 bytes are split over two tokens (an emoji often is) is given out once
    both have come, never as two broken halves. Bytes that are not UTF-8 become U+FFFD."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text completed by this token ('' while a character is still incomplete)."""
        if hasattr(self.tokenizer, "decode_bytes"):
            return self._utf8.decode(self.tokenizer.decode_bytes([token_id]))
        return self.tokenizer.decode([token_id])

    def flush(self) -> str:
        """What is left once no token will come (an incomplete character as U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def gpt2_files() -> tuple[Path, Path]:
    """Paths of `encoder.json` and `vocab.bpe` in the data cache, downloaded if missing
    (raises files.hub.MissingFileError offline)."""
    return ensure_file(*ENCODER_JSON), ensure_file(*VOCAB_BPE)


def encoding_from_gpt2_files(encoder_json: str | Path, vocab_bpe: str | Path) -> tiktoken.Encoding:
    """Build tiktoken's "gpt2" encoding ourselves from GPT-2's two files."""
    ranks, special = load_gpt2_ranks(encoder_json, vocab_bpe)
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=special, explicit_n_vocab=N_VOCAB)


def _why(err: Exception) -> str:
    """One short line for an error from our data cache."""
    if isinstance(err, MissingFileError):
        return f"{err.path} is missing ({err.reason})"
    return str(err)


def _unavailable(reasons: list[str], tiktoken_cache_helps: bool) -> TokenizerUnavailableError:
    folder = cache_dir() / "gpt2"
    fix = (f"download {ENCODER_JSON[1]} and {VOCAB_BPE[1]} and save them as "
           f"{folder / 'encoder.json'} and {folder / 'vocab.bpe'}")
    if tiktoken_cache_helps:
        fix = ("set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached gpt2 files, or "
               + fix)
    return TokenizerUnavailableError(
        "GPT-2's tokenizer files are not available: " + "; ".join(reasons) + ". To fix it, "
        + fix + ".")


def load_gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's "gpt2" encoding; offline, the same encoding built from our cached files."""
    reasons = []
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:  # tiktoken raises whatever its HTTP client raises
        reasons.append(f"tiktoken could not load 'gpt2' ({type(err).__name__})")
    try:
        return encoding_from_gpt2_files(*gpt2_files())
    except (OSError, ValueError) as err:  # MissingFileError is an OSError
        reasons.append(_why(err))
    raise _unavailable(reasons, tiktoken_cache_helps=True)


@lru_cache(maxsize=None)
def get_tokenizer(name: str = "tiktoken") -> TiktokenTokenizer | BPETokenizer:
    """GPT-2's tokenizer: "tiktoken" (fast) or "bpe" (gpt2/bpe.py, plain Python, same ids)."""
    if name == "tiktoken":
        return TiktokenTokenizer(load_gpt2_encoding())
    if name == "bpe":
        try:
            return BPETokenizer.from_gpt2_files(*gpt2_files())
        except (OSError, ValueError) as err:
            raise _unavailable([_why(err)], tiktoken_cache_helps=False) from None
    raise ValueError(f"unknown tokenizer {name!r}; choose 'tiktoken' or 'bpe'")
