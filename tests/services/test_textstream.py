"""Incremental detokenization: what streams out must equal the final answer, stop strings excluded."""

from __future__ import annotations

from services.textstream import REPLACEMENT, TextStream


def char_decoder(pieces: dict[int, str]):
    return lambda ids: "".join(pieces[i] for i in ids)


def run(stream: TextStream, ids: list[int]) -> tuple[list[str], str]:
    released = []
    for token in ids:
        released.append(stream.push(token))
        if stream.stopped:
            break
    released.append(stream.flush())
    return released, "".join(released)


def test_without_stop_strings_everything_is_released_in_order():
    pieces = {0: "he", 1: "llo", 2: " wor", 3: "ld"}
    released, text = run(TextStream(char_decoder(pieces)), [0, 1, 2, 3])
    assert text == "hello world"
    assert released[:4] == ["he", "llo", " wor", "ld"]  # nothing held back without stops


def test_stop_string_spanning_tokens_is_cut_and_never_streamed():
    pieces = {0: "one ", 1: "tw", 2: "o thr", 3: "ee"}
    stream = TextStream(char_decoder(pieces), stop=["two"])
    released, text = run(stream, [0, 1, 2, 3])
    assert text == "one "
    assert stream.stopped
    assert all("tw" not in piece for piece in released)


def test_a_possible_stop_prefix_is_held_back_then_released_when_it_is_not_a_stop():
    pieces = {0: "ab", 1: "X", 2: "Z"}
    stream = TextStream(char_decoder(pieces), stop=["XY"])
    assert stream.push(0) == "ab"
    assert stream.push(1) == ""  # "X" could start "XY"
    assert stream.push(2) == "XZ"
    assert not stream.stopped


def test_earliest_of_several_stop_strings_wins():
    pieces = {0: "a;b.c"}
    _, text = run(TextStream(char_decoder(pieces), stop=[".", ";"]), [0])
    assert text == "a"


def test_partial_utf8_is_held_until_complete():
    # Byte-level BPE: "é" may need two tokens; the first alone decodes to U+FFFD.
    decode = lambda ids: {(0,): "caf" + REPLACEMENT, (0, 1): "café"}[tuple(ids)]  # noqa: E731
    stream = TextStream(decode)
    assert stream.push(0) == "caf"
    assert stream.push(1) == "é"
    assert stream.flush() == ""
    assert stream.text == "café"


def test_flush_releases_a_trailing_partial_character_at_the_end():
    decode = lambda ids: "x" + REPLACEMENT  # noqa: E731
    stream = TextStream(decode)
    assert stream.push(0) == "x"
    assert stream.flush() == REPLACEMENT
