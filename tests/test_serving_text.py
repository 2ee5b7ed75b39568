"""tasks/serving/text.py: a choice's text cut at the first stop string, never showing part of one,
and its tokens released with the text they start in."""
from __future__ import annotations

import codecs

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.serving.text import ChoiceText, TokenOut

EOS = 0


class Chars:
    """One character per token (token id = code point)."""

    def push(self, token: int) -> str:
        return chr(token)

    def flush(self) -> str:
        return ""


def run(ids: list[int], stops: list[str], min_tokens: int = 0, prompt: str = ""):
    """(pieces taken after each token + the final piece, tokens released, the ChoiceText)."""
    out = ChoiceText(Chars(), stops, EOS, min_tokens, prompt_text=prompt)
    pieces, released = [], []
    for t in ids:
        out.push(TokenOut(t, -1.0))
        piece, tokens = out.take()
        pieces.append(piece)
        released += tokens
        if out.stopped:
            break
    piece, tokens = out.finish()
    return pieces + [piece], released + tokens, out


def reference(ids: list[int], stops: list[str], min_tokens: int = 0) -> tuple[str, int]:
    """(text, tokens consumed): token by token, the first time a stop string appears (in text
    added from the min_tokens-th token on), cut at the earliest one."""
    text, checked_from = "", 0
    for n, t in enumerate(ids, 1):
        text += "" if t == EOS else chr(t)
        if n < min_tokens:
            checked_from = len(text)
            continue
        hits = [i for i in (text.find(s, checked_from) for s in stops) if i >= 0]
        if hits:
            return text[:min(hits)], n
    return text, len(ids)


alphabet = st.sampled_from([EOS] + [ord(c) for c in "abcxy\n"])
stop_strings = st.lists(st.text("abcxy\n", min_size=1, max_size=4), max_size=4)


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(alphabet, max_size=30), stops=stop_strings, min_tokens=st.integers(0, 4))
def test_text_is_cut_at_the_first_stop_and_tokens_follow_their_text(ids, stops, min_tokens):
    pieces, released, out = run(ids, stops, min_tokens)
    text, consumed = reference(ids, stops, min_tokens)
    assert "".join(pieces) == text
    assert out.generated == consumed
    # the tokens released are those whose text starts inside the returned text (all of them
    # when no stop string was met), in order, once each
    if out.stopped:
        want = [t for t in out.tokens if t.offset < len(text)]
    else:
        want = out.tokens
    assert [id(t) for t in released] == [id(t) for t in want]


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(alphabet, max_size=30), stops=stop_strings)
def test_a_stream_never_shows_part_of_a_stop_string(ids, stops):
    """Whatever has been sent at any moment is a prefix of the final text: nothing shown is
    ever taken back, so no part of a stop string is shown."""
    pieces, _, _ = run(ids, stops)
    final = "".join(pieces)
    sent = ""
    for p in pieces:
        sent += p
        assert final.startswith(sent)


def test_echo_prompt_comes_first_and_is_not_searched_for_stops():
    prompt = [TokenOut(ord("x"), None, None, 0), TokenOut(ord("\n"), -0.5, None, 1)]
    out = ChoiceText(Chars(), ["\n"], EOS, prompt_text="x\n", prompt_tokens=prompt)
    assert out.take() == ("x\n", prompt)              # the prompt at once, though "\n" is a stop
    out.push(TokenOut(ord("a"), -1.0))
    out.push(TokenOut(ord("\n"), -2.0))
    piece, tokens = out.finish()
    assert out.stopped and piece == "a" and [t.id for t in tokens] == [ord("a")]
    assert [t.offset for t in out.tokens] == [0, 1, 2, 3]


def test_end_of_text_adds_no_text_but_is_reported():
    pieces, released, _ = run([ord("a"), EOS], ["zz"])
    assert "".join(pieces) == "a" and [t.id for t in released] == [ord("a"), EOS]
    assert released[1].offset == 1


def test_a_character_split_over_two_tokens():
    """'é' is two UTF-8 bytes, one per token: the first token adds no text, both are released
    once the character is there, at the same offset."""
    table = {1: b"a", 2: "é".encode()[:1], 3: "é".encode()[1:]}

    class Bytes:
        def __init__(self):
            self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def push(self, t):
            return self.utf8.decode(table[t])

        def flush(self):
            return self.utf8.decode(b"", final=True)

    out = ChoiceText(Bytes(), ["zz"], None)
    out.push(TokenOut(1))
    out.push(TokenOut(2))
    piece, tokens = out.take()
    assert piece == "a" and [t.id for t in tokens] == [1]    # the half character waits
    out.push(TokenOut(3))
    piece, tokens = out.take()
    assert piece == "é" and [t.id for t in tokens] == [2, 3]
    assert [t.offset for t in out.tokens] == [0, 1, 1]


def test_only_text_that_could_start_a_stop_string_waits():
    out = ChoiceText(Chars(), ["\n\n", "END"], EOS)
    for c, shown in [("a", "a"), ("\n", ""), ("b", "\nb"), ("E", ""), ("N", ""), ("x", "ENx")]:
        out.push(TokenOut(ord(c)))
        assert out.take()[0] == shown
