"""The one decoder: rows of one batch keep their own stops, suppressed tokens and budgets, and decode as alone."""

from __future__ import annotations

import torch
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


class Forced:
    """A constraint allowing exactly `tokens`, then only the stop tokens."""

    def __init__(self, tokens: list[int], stops: frozenset[int]):
        self.tokens, self.stops, self.at = tokens, stops, 0

    def fill_mask(self, words: torch.Tensor) -> None:
        for t in [self.tokens[self.at]] if self.at < len(self.tokens) else self.stops:
            words[t // 32] |= torch.tensor(1 << (t % 32), dtype=torch.int64).to(torch.int32)

    def consume(self, token: int) -> None:
        assert token == self.tokens[self.at]
        self.at += 1


def test_each_row_follows_its_own_constraint_and_free_rows_are_untouched(model, processor):
    decoder = Decoder(model, processor)
    text = _prompt(processor, "how many circles are there? a longer text-only question", [])
    image = _prompt(processor, f"{IMAGE}\nwhat shape is in the picture?", [random_image(0)])
    (free_text,) = _tokens(decoder, [text], [decoder.chat_row(6, ignore_stops=True)])
    forced = [t for t in range(40, 300, 37)][:5]  # tokens the random model would not pick in this order
    assert forced != free_text[:5]
    stops = decoder.chat_stop_ids
    rows = [
        decoder.chat_row(6, ignore_stops=True),
        decoder.chat_row(20, constraint=Forced(forced, stops)),
        decoder.chat_row(3, constraint=Forced(forced, stops)),  # its budget ends it mid-way
    ]
    batched = _tokens(decoder, [text, image, text], rows)
    assert batched[0] == free_text
    assert batched[1] == forced and rows[1].count == len(forced) + 1  # ended by a stop token: "stop"
    assert batched[2] == forced[:3] and rows[2].finished


def test_logprobs_are_the_models_own_distribution_over_the_answer(model, processor):
    """Per generated token: log-softmax of the raw logits (what a teacher-forced forward over prompt+answer
    gives), and the top K alternatives in order, the chosen token among them under greedy."""
    decoder = Decoder(model, processor)
    prompt = _prompt(processor, f"{IMAGE}\nwhat shape is in the picture?", [random_image(0)])
    row = decoder.chat_row(6, ignore_stops=True, top_logprobs=3)
    (answer,) = _tokens(decoder, [prompt], [row])
    (plain,) = _tokens(decoder, [prompt], [decoder.chat_row(6, ignore_stops=True)])
    assert answer == plain  # asking for log-probabilities changes nothing
    assert [e.token for e in row.logprobs] == answer
    ids = torch.tensor([prompt.input_ids + answer])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=prompt.pixel_values).logits[0].float()
    expected = torch.log_softmax(logits[len(prompt.input_ids) - 1 : -1], dim=-1)
    for entry, dist in zip(row.logprobs, expected, strict=True):
        assert abs(entry.logprob - float(dist[entry.token])) < 1e-4
        assert len(entry.top) == 3 and [t for t, _ in entry.top] == dist.topk(3).indices.tolist()
        assert entry.top[0][1] >= entry.top[1][1] >= entry.top[2][1]
    # Greedy: the chosen token is the top one, unless it is the suppressed image placeholder.
    assert all(e.top[0][0] == e.token for e in row.logprobs if e.top[0][0] != decoder.image_token_id)
