"""Incremental detokenization: what streams out must equal the final answer, stop strings excluded."""

from __future__ import annotations

import random

from mm1.data.tokenizer import train_bpe_tokenizer
from services.textstream import REPLACEMENT, TextStream, answer_decoder


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


def byte_decoder(pieces: dict[int, bytes]):
    """A byte-level decoder, as byte-level BPE's: incomplete UTF-8 decodes to U+FFFD."""
    return lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")


def test_partial_utf8_is_held_until_complete():
    # "é" is two bytes; a token may carry only its first one.
    stream = TextStream(byte_decoder({0: b"caf\xc3", 1: b"\xa9!"}))
    assert stream.push(0) == ""  # "caf" + U+FFFD: the token waits for the rest of its character
    assert stream.push(1) == "café!"
    assert stream.flush() == ""
    assert stream.text == "café!"


def test_flush_releases_a_trailing_partial_character_at_the_end():
    stream = TextStream(byte_decoder({0: b"x", 1: b"\xc3"}))
    assert stream.push(0) == "x"
    assert stream.push(1) == ""
    assert stream.flush() == REPLACEMENT


def test_a_stop_string_completed_by_the_held_tokens_is_cut_at_the_end():
    stream = TextStream(byte_decoder({0: b"ab", 1: b"\xc3"}), stop=["b\ufffd"])
    assert stream.push(0) == "a"  # "b" could start the stop string
    assert stream.push(1) == ""
    assert stream.flush() == ""
    assert stream.stopped and stream.text == "a"


def test_streamed_text_equals_the_whole_answer_decoded_by_a_real_tokenizer():
    """Byte-level BPE with multi-byte characters split across tokens and special tokens in between: the
    released pieces join to exactly what decoding the whole answer gives, with either decode function."""
    texts = ["café crème brûlée", "naïve señor 日本語 テキスト", "emoji 🙂🚀 and ümlauts"] * 20
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    whole = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    fast = answer_decoder(tokenizer)
    rng = random.Random(0)
    vocab = len(tokenizer)
    for _ in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        assert fast(ids) == whole(ids)
        for decode in (whole, fast):
            released, text = run(TextStream(decode), ids)
            assert text == whole(ids), ids
    # Tokens that spell real text: every character comes out whole while streaming.
    ids = tokenizer("naïve 日本語 🙂 done", add_special_tokens=False)["input_ids"]
    released, text = run(TextStream(fast), ids)
    assert text == "naïve 日本語 🙂 done"
    assert not any(REPLACEMENT in piece for piece in released)


def test_each_token_decodes_a_short_window_not_the_whole_answer():
    pieces = {i: bytes([97 + i % 26]) for i in range(400)}
    decode = byte_decoder(pieces)
    lengths = []
    stream = TextStream(lambda ids: lengths.append(len(ids)) or decode(ids))
    for token in range(400):
        stream.push(token)
    assert stream.text == decode(list(range(400)))
    assert max(lengths) <= 2
