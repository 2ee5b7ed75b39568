"""One choice's text as its tokens come: decoded incrementally, cut before the first stop string,
and each token released together with the text it starts in, so a stream never shows part of a
stop string and the log-probabilities reported are those of the tokens whose text was returned.

    out = ChoiceText(decoder, stops=["\\n\\n"], eos_id=50256)
    out.push(TokenOut(id, logprob, top))      # on the scheduler's thread, for every new token
    piece, tokens = out.take()                # text and tokens ready to send
    piece, tokens = out.finish()              # the rest, once generation ended

Nothing here knows HTTP or the model: a `decoder` is anything with push(token id) -> str and
flush() -> str (an incremental UTF-8 decoder over the tokenizer's bytes).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenOut:
    """A token of a choice and what it reports: the model's log-probability of it (None for a
    prompt's first token, which nothing predicts) and the most likely alternatives."""
    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None   # (token id, log-probability), most likely first
    offset: int = 0                               # where its text starts in the choice's text


def echo_prompt(decoder, ids: list[int]) -> tuple[str, list[TokenOut]]:
    """A prompt's text and its tokens (each at its offset), for a choice that echoes it."""
    text, tokens = "", []
    for t in ids:
        tokens.append(TokenOut(t, offset=len(text)))
        text += decoder.push(t)
    return text + decoder.flush(), tokens


class ChoiceText:
    """Generated tokens -> text, cut before the first stop string found once `min_tokens` tokens
    have come (as vLLM: a stop string is not looked for before).

    Text at the end that could be the start of a stop string is held back until it is clear. The end-of-text
    token (unless `eos_id` is None) adds no text. With echo, `prompt` (text and tokens) comes
    first; stop strings are looked for in the generated text only.
    """

    def __init__(self, decoder, stops: list[str], eos_id: int | None, min_tokens: int = 0,
                 prompt_text: str = "", prompt_tokens: list[TokenOut] | None = None):
        self.decoder, self.stops, self.eos_id, self.min_tokens = decoder, stops, eos_id, min_tokens
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = prompt_text
        self.start = len(prompt_text)          # where the generated text begins
        self.sent = 0                          # text[:sent] has been taken
        self.searched = self.start             # no stop string starts before this
        self.cut: int | None = None            # where the first stop string starts, once found
        self.tokens: list[TokenOut] = list(prompt_tokens or [])
        self.released = 0                      # tokens[:released] have been taken
        self.generated = 0                     # tokens pushed (usage counts them, stop or not)

    @property
    def stopped(self) -> bool:
        return self.cut is not None

    def push(self, token: TokenOut) -> None:
        """One generated token; sets `stopped` once the text holds a stop string."""
        if self.stopped:
            return
        self.generated += 1
        token.offset = len(self.text)
        self.tokens.append(token)
        if token.id != self.eos_id:
            self.text += self.decoder.push(token.id)
        self._search()

    def take(self) -> tuple[str, list[TokenOut]]:
        """The text and tokens that are ready: all that cannot be part of a stop string."""
        if self.stopped:
            return self._release(self.cut)
        if self.generated < self.min_tokens:
            return self._release(len(self.text))   # no stop string counts yet: nothing to hold
        return self._release(max(self.sent, self.start, len(self.text) - self._held()))

    def finish(self) -> tuple[str, list[TokenOut]]:
        """Everything left once generation ended (the decoder flushed, stop strings checked)."""
        if not self.stopped:
            self.text += self.decoder.flush()
            self._search()
        if self.stopped:
            return self._release(self.cut)
        piece, tokens = self._release(len(self.text))
        rest, self.released = self.tokens[self.released:], len(self.tokens)   # text-less ones at the end
        return piece, tokens + rest

    def _held(self) -> int:
        """How many characters at the end could begin a stop string (those must wait)."""
        for k in range(min(self.hold, len(self.text) - self.start), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def _search(self) -> None:
        if self.generated < self.min_tokens:
            self.searched = len(self.text)
            return
        hits = [i for i in (self.text.find(s, self.searched) for s in self.stops) if i >= 0]
        if hits:
            self.cut = min(hits)
        else:   # a stop string starting earlier would already lie whole in the text
            self.searched = max(self.searched, len(self.text) - self.hold)

    def _release(self, upto: int) -> tuple[str, list[TokenOut]]:
        """text[sent:upto] and the tokens whose text starts before `upto`."""
        piece = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        n = self.released
        while n < len(self.tokens) and self.tokens[n].offset < upto:
            n += 1
        tokens, self.released = self.tokens[self.released:n], n
        return piece, tokens
