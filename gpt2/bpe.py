"""Byte-level BPE written from scratch: the tokenizer scheme GPT-2 uses, in plain Python.

How it works, in three steps:
1. Pre-split the text into chunks ("pre-tokens") with GPT-2's regex: runs of letters, runs of
   digits, runs of other symbols (each may carry one leading space), contractions like 's,
   and whitespace. Merges never cross a chunk boundary.
2. Turn each chunk into its UTF-8 bytes, one token per byte (ids 0..255 always exist, so any
   text can be encoded).
3. Repeatedly merge the adjacent pair whose concatenation is the earliest-learned token, until
   no adjacent pair forms a known token.

`BPETokenizer.train` learns the merges from text; `BPETokenizer.from_gpt2_files` loads GPT-2's
`encoder.json` + `vocab.bpe`, and then gives exactly the ids of tiktoken's "gpt2" encoding.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable
from functools import lru_cache

from files.atomic import atomic_write_text

ENDOFTEXT = "<|endoftext|>"
SAVE_FORMAT = "minigrad-bpe-v1"

# --------------------------------------------------------------------------------------------
# Bytes <-> printable characters.
# GPT-2's files store every token as text; bytes that are not printable (control characters,
# space, ...) would be invisible or ambiguous there, so each byte gets a printable stand-in.
# Printable Latin-1 bytes stand for themselves, the other 68 bytes map to chr(256), chr(257), ...
# That is why a leading space shows up as "Ġ" (chr(256 + 32)) in encoder.json.


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte value 0..255 to the character that stands for it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=None)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of `bytes_to_unicode`."""
    return {ch: b for b, ch in bytes_to_unicode().items()}


def token_to_text(token: bytes) -> str:
    """A token's bytes written the way GPT-2's files write them (e.g. b' the' -> 'Ġthe')."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def text_to_token(text: str) -> bytes:
    """Inverse of `token_to_text`; ValueError for a character that stands for no byte."""
    table = unicode_to_bytes()
    try:
        return bytes(table[ch] for ch in text)
    except KeyError as err:
        raise ValueError(f"{text!r} is not a byte-level token: {err.args[0]!r} "
                         f"stands for no byte") from None


# --------------------------------------------------------------------------------------------
# The pre-split regex.
# GPT-2's pattern, as tiktoken runs it, is
#     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s
# Python's built-in `re` has no \p{L} (letter) or \p{N} (number) classes, and its \s also
# matches \x1c-\x1f, which tiktoken's \s (Unicode "White_Space") does not. So we spell out the
# three character classes ourselves, from the standard library's Unicode database.
#
# tiktoken's regex engine (Rust) carries Unicode 16.0 tables, while `unicodedata` knows the
# Unicode version of the running Python (14.0 on Python 3.11). The letters and numbers assigned
# in Unicode 15.0-16.0 are listed below so the split is the same on every character tiktoken
# knows about; tests/test_tokenizer.py checks all 1,112,064 code points against tiktoken.

WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

_LETTERS_SINCE_UNICODE_15 = [
    (0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3),
    (0x10D4A, 0x10D65), (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4), (0x1123F, 0x11240),
    (0x11380, 0x11389), (0x1138B, 0x1138B), (0x1138E, 0x1138E), (0x11390, 0x113B5),
    (0x113B7, 0x113B7), (0x113D1, 0x113D1), (0x113D3, 0x113D3), (0x11BC0, 0x11BE0),
    (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33), (0x1342F, 0x1342F),
    (0x13441, 0x13446), (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16D40, 0x16D6C),
    (0x18CFF, 0x18CFF), (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1DF25, 0x1DF2A),
    (0x1E030, 0x1E06D), (0x1E4D0, 0x1E4EB), (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5F0),
    (0x2B739, 0x2B739), (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF),
]
_NUMBERS_SINCE_UNICODE_15 = [
    (0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x11F50, 0x11F59),
    (0x16130, 0x16139), (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3),
    (0x1E4F0, 0x1E4F9), (0x1E5F1, 0x1E5FA),
]


def _class_body(category: str, extra: list[tuple[int, int]]) -> str:
    """Ranges (for use inside [...]) of every code point whose Unicode category starts with
    `category` ("L" or "N"), plus the `extra` ranges."""
    points = {cp for first, last in extra for cp in range(first, last + 1)}
    points.update(cp for cp in range(0x110000)
                  if unicodedata.category(chr(cp)).startswith(category))
    ranges: list[list[int]] = []
    for cp in sorted(points):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in ranges)


@lru_cache(maxsize=None)
def gpt2_split_pattern() -> re.Pattern[str]:
    """GPT-2's pre-split regex for Python's `re` (built on first use: it scans the Unicode
    database once, about 0.2 s)."""
    letters = _class_body("L", _LETTERS_SINCE_UNICODE_15)
    numbers = _class_body("N", _NUMBERS_SINCE_UNICODE_15)
    ws = WHITESPACE
    return re.compile(
        r"'(?:[sdmt]|ll|ve|re)"                 # contractions: 's 'd 'm 't 'll 've 're
        rf"| ?[{letters}]+"                      # a word, with its leading space if any
        rf"| ?[{numbers}]+"                      # a number (digits of any script)
        rf"| ?[^{ws}{letters}{numbers}]+"        # punctuation, symbols, emoji, marks ...
        rf"|[{ws}]+(?![^{ws}])"                  # whitespace, leaving the last space to the
        rf"|[{ws}]"                              # next word (so " the" stays one chunk)
    )


def pre_split(text: str) -> list[str]:
    """Split text into GPT-2's pre-tokens; "".join(pre_split(t)) == t."""
    return gpt2_split_pattern().findall(text)


# --------------------------------------------------------------------------------------------
# Loading GPT-2's files.


def load_gpt2_ranks(encoder_json: str | os.PathLike,
                    vocab_bpe: str | os.PathLike) -> tuple[dict[bytes, int], dict[str, int]]:
    """Read GPT-2's `encoder.json` and `vocab.bpe` into (token bytes -> id, special -> id).

    A token's id is also its rank: ids 0..255 are the single bytes, and merge number i of
    vocab.bpe creates token 256 + i. We check that the two files agree on this, because the
    encoder relies on it.
    """
    try:
        with open(encoder_json, encoding="utf-8") as f:
            encoder = json.load(f)
        with open(vocab_bpe, encoding="utf-8") as f:
            merge_lines = f.read().splitlines()
    except json.JSONDecodeError as err:
        raise ValueError(f"{encoder_json} is not valid JSON: {err}") from None
    if not isinstance(encoder, dict):
        raise ValueError(f"{encoder_json} should map token strings to ids")

    special = {s: i for s, i in encoder.items() if s == ENDOFTEXT}
    ranks = {text_to_token(s): i for s, i in encoder.items() if s != ENDOFTEXT}

    merges = [line for line in merge_lines if line and not line.startswith("#version")]
    single_bytes = sorted(i for t, i in ranks.items() if len(t) == 1)
    if single_bytes != list(range(256)):
        raise ValueError(f"{encoder_json}: ids 0..255 should be the 256 single bytes")
    for i, line in enumerate(merges):
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{vocab_bpe}: merge {i + 1} should be two tokens, got {line!r}")
        merged = text_to_token(parts[0] + parts[1])
        if ranks.get(merged) != 256 + i:
            raise ValueError(f"{vocab_bpe}: merge {i + 1} ({line!r}) should create token "
                             f"{256 + i} of {encoder_json}, which has {ranks.get(merged)}")
    if len(ranks) != 256 + len(merges):
        raise ValueError(f"{encoder_json} has {len(ranks)} tokens but {vocab_bpe} explains "
                         f"only {256 + len(merges)}")
    return ranks, special


# --------------------------------------------------------------------------------------------
# The tokenizer.


class BPETokenizer:
    """A byte-level BPE tokenizer: `ranks` maps each token's bytes to its id, lower ids being
    merged first; `special_tokens` maps strings like "<|endoftext|>" to their ids."""

    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int] | None = None):
        self.ranks = dict(ranks)
        self.special_tokens = dict(special_tokens or {})
        self.decoder: dict[int, bytes] = {i: t for t, i in self.ranks.items()}
        self.decoder.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        if len(self.decoder) != len(self.ranks) + len(self.special_tokens):
            raise ValueError("two tokens share an id")
        if any(bytes([b]) not in self.ranks for b in range(256)):
            raise ValueError("every single byte must be a token, or some text cannot be encoded")
        self._n_vocab = max(self.decoder) + 1
        # Text repeats the same words over and over; remembering each pre-token's ids makes
        # encoding a book cost little more than the regex split.
        self._cache: dict[str, tuple[int, ...]] = {}

    # -- properties shared with the tiktoken-backed tokenizer ---------------------------------
    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def eot_id(self) -> int | None:
        return self.special_tokens.get(ENDOFTEXT)

    # -- encoding ---------------------------------------------------------------------------
    def _bpe(self, piece: bytes) -> list[int]:
        """Merge one pre-token's bytes into tokens (exactly as tiktoken does)."""
        whole = self.ranks.get(piece)
        if whole is not None:  # common words are single tokens: skip the merge loop
            return [whole]
        parts = [piece[i:i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            # The adjacent pair whose concatenation was learned first; leftmost on a tie.
            best_rank, best_i = None, -1
            for i in range(len(parts) - 1):
                rank = self.ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_i = rank, i
            if best_rank is None:
                break
            parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        return [self.ranks[p] for p in parts]

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token strings as plain text."""
        ids: list[int] = []
        cache = self._cache
        for piece in pre_split(text):
            cached = cache.get(piece)
            if cached is None:
                if len(cache) >= 200_000:  # bound memory on endless, ever-new text
                    cache.clear()
                cached = cache[piece] = tuple(self._bpe(piece.encode("utf-8")))
            ids.extend(cached)
        return ids

    def encode(self, text: str,
               allowed_special: Collection[str] | str = frozenset({ENDOFTEXT})) -> list[int]:
        """Encode text. Special tokens named in `allowed_special` (or all, with "all") become
        their ids; any other special-token string in the text raises ValueError, as tiktoken
        does, so that user text cannot smuggle in control tokens by accident."""
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        else:
            allowed = set(allowed_special) & set(self.special_tokens)
        for special in self.special_tokens:
            if special not in allowed and special in text:
                raise ValueError(
                    f"the text contains the special token {special!r}, which is not allowed; "
                    f"pass allowed_special={{{special!r}}} to encode it as a special token, or "
                    f"use encode_ordinary() to encode it as plain text")
        if not allowed:
            return self.encode_ordinary(text)
        # Longest first, so that a special token that contains another one wins.
        names = sorted(allowed, key=len, reverse=True)
        splitter = re.compile("(" + "|".join(re.escape(s) for s in names) + ")")
        ids: list[int] = []
        for i, segment in enumerate(splitter.split(text)):
            if i % 2:  # re.split puts the captured separators at odd positions
                ids.append(self.special_tokens[segment])
            elif segment:
                ids.extend(self.encode_ordinary(segment))
        return ids

    # -- decoding ---------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of the tokens, concatenated."""
        try:
            return b"".join(self.decoder[int(i)] for i in ids)
        except KeyError as err:
            raise ValueError(f"unknown token id {err.args[0]} (vocabulary has "
                             f"{self.n_vocab} ids)") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the tokens; bytes that are not valid UTF-8 (a character cut between two
        tokens) become U+FFFD, as in tiktoken."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_gpt2_files(cls, encoder_json: str | os.PathLike,
                        vocab_bpe: str | os.PathLike) -> "BPETokenizer":
        """GPT-2's tokenizer from its `encoder.json` and `vocab.bpe`."""
        ranks, special = load_gpt2_ranks(encoder_json, vocab_bpe)
        return cls(ranks, special)

    @classmethod
    def train(cls, text: str, vocab_size: int,
              special_tokens: Iterable[str] = (ENDOFTEXT,),
              verbose: bool = False) -> "BPETokenizer":
        """Learn a vocabulary of `vocab_size` tokens (256 bytes + merges + special tokens).

        Classic BPE: count every adjacent pair of tokens over the text, merge the most frequent
        pair into a new token everywhere, repeat. Counting is done per distinct pre-token, times
        how often it occurs, so the cost grows with the number of different words, not with
        the length of the text. Stops early if no pair is left to merge.
        """
        special_tokens = list(dict.fromkeys(special_tokens))
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size must be at least {256 + len(special_tokens)} "
                             f"(256 bytes + {len(special_tokens)} special tokens), "
                             f"got {vocab_size}")
        # Special tokens are never learned from: split the text at them.
        chunks = [text]
        if special_tokens:
            chunks = re.split("|".join(re.escape(s) for s in special_tokens), text)
        word_counts = Counter(word for chunk in chunks for word in pre_split(chunk))
        words = [list(w.encode("utf-8")) for w in word_counts]  # each word as token ids
        counts = list(word_counts.values())

        vocab = [bytes([b]) for b in range(256)]  # id -> bytes
        ranks = {t: i for i, t in enumerate(vocab)}
        n_merges = vocab_size - 256 - len(special_tokens)
        while len(vocab) < 256 + n_merges:
            pair_counts: Counter[tuple[int, int]] = Counter()
            for word, count in zip(words, counts):
                for pair in zip(word, word[1:]):
                    pair_counts[pair] += count
            if not pair_counts:
                break  # every word is a single token already
            (a, b), freq = pair_counts.most_common(1)[0]  # a tie goes to the pair seen first
            merged = vocab[a] + vocab[b]
            new_id = ranks.get(merged)
            if new_id is None:  # the same bytes can come from two pairs ("a"+"bc", "ab"+"c")
                new_id = ranks[merged] = len(vocab)
                vocab.append(merged)
            if verbose:
                print(f"merge {len(vocab) - 256}: {merged!r} ({freq} times)")
            for word in words:
                i = 0
                while i < len(word) - 1:
                    if word[i] == a and word[i + 1] == b:
                        word[i:i + 2] = [new_id]
                    i += 1
        special = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
        return cls(ranks, special)

    # -- saving -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON (tokens in GPT-2's printable form, e.g. "Ġthe")."""
        ordered = sorted(self.ranks.items(), key=lambda item: item[1])
        if [i for _, i in ordered] != list(range(len(ordered))):
            raise ValueError("save() needs token ids 0..n-1 without gaps")
        data = {"format": SAVE_FORMAT,
                "tokens": [token_to_text(t) for t, _ in ordered],
                "special_tokens": self.special_tokens}
        # atomically, so a crash never leaves half a vocabulary behind
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        """Read a vocabulary written by `save`."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if (not isinstance(data, dict) or data.get("format") != SAVE_FORMAT
                or not isinstance(data.get("tokens"), list)):
            raise ValueError(f"{path} is not a tokenizer saved by BPETokenizer.save "
                             f"(expected \"format\": \"{SAVE_FORMAT}\")")
        ranks = {text_to_token(t): i for i, t in enumerate(data["tokens"])}
        if len(ranks) != len(data["tokens"]):
            raise ValueError(f"{path} lists the same token twice")
        return cls(ranks, data.get("special_tokens", {}))
