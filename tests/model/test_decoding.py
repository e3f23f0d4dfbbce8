"""The one decoder: rows of one batch keep their own stops, suppressed tokens and budgets, and decode as alone."""

from __future__ import annotations

from model_helpers import random_image

from mm1.data.chat import IMAGE
from mm1.model.decoding import ChatPrompt, Decoder, Row, left_pad


def _prompt(processor, text: str, images: list) -> ChatPrompt:
    encoded = processor.encode_chat([{"role": "user", "content": text}], images)
    return ChatPrompt(encoded["input_ids"][0].tolist(), encoded["pixel_values"])


def _tokens(decoder: Decoder, prompts: list[ChatPrompt], rows: list[Row]) -> list[list[int]]:
    for _ in decoder.run(prompts, rows):
        pass
    return [row.tokens for row in rows]


def test_left_pad_puts_padding_on_the_left():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_rows_with_their_own_stops_and_suppressed_tokens_decode_as_alone(model, processor):
    decoder = Decoder(model, processor)
    image = _prompt(processor, f"{IMAGE}\nwhat shape is in the picture?", [random_image(0)])
    text = _prompt(processor, "how many circles are there? a longer text-only question", [])
    (chat,) = _tokens(decoder, [image], [decoder.chat_row(8, ignore_stops=True)])
    assert len(chat) == 8 and chat[2] not in chat[:2] and len(set(chat)) > 3

    def rows() -> list[Row]:
        return [
            decoder.chat_row(8, ignore_stops=True),
            Row(stop_ids=frozenset({chat[2]}), suppress_ids=(), max_tokens=8),  # stops at chat's third
            decoder.chat_row(5),
            Row(stop_ids=decoder.chat_stop_ids, suppress_ids=(decoder.image_token_id, chat[0]), max_tokens=8),
        ]

    prompts = [image, image, text, image]
    alone = [_tokens(decoder, [p], [r])[0] for p, r in zip(prompts, rows(), strict=True)]
    batched = _tokens(decoder, prompts, rows())
    assert batched == alone
    assert alone[0] == chat and alone[1] == chat[:2]  # the stop token ends the answer, not part of it
    assert len(alone[2]) <= 5 and alone[3][0] != chat[0]  # a budget; a suppressed token never comes out
