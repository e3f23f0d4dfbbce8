"""Structured output: `response_format` as an llguidance grammar that masks a row's logits at every step.

`Grammars.compile` turns a request's response format (`json_object`, or `json_schema` with its schema) into
a `JsonGrammar`, once per request; each choice decodes with its own copy (`JsonGrammar.fresh`), which
mm1.model.decoding's `Decoder.choose` asks for the allowed tokens before every choice and advances after it.
The grammar's end-of-sequence tokens are the chat's stop tokens, so an answer can only end where the JSON is
complete; a budget (max_tokens) spent before that ends it with finish_reason "length" and the JSON cut off,
as OpenAI's API does (its docs: check finish_reason before parsing).

JSON is generated compact (no whitespace between tokens: `whitespace_flexible` off): a small model left free
to add whitespace can spend its whole budget on it.

`Vocabulary` is the tokenizer as llguidance sees it (built once per tokenizer, ~1 s for a 150k vocabulary),
also the source of each token's bytes for `logprobs`.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import llguidance
import llguidance.hf
import torch

from mm1.model import MM1Processor

JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """The schema cannot be compiled into a grammar (the message says why)."""


class JsonGrammar:
    """One choice's grammar state (mm1.model.decoding.Constraint)."""

    def __init__(self, matcher: llguidance.LLMatcher, width: int, schema: dict[str, Any]):
        self.matcher = matcher
        self.width = width  # 32-bit words of the matcher's mask
        self.schema = schema  # what it was compiled from (services.engine_process compiles it again)

    def fresh(self) -> JsonGrammar:
        """A copy at the start of the grammar, for another choice of the same request."""
        return JsonGrammar(self.matcher.deep_copy(), self.width, self.schema)

    def fill_mask(self, words: torch.Tensor) -> None:
        if self.matcher.is_error():
            raise RuntimeError(f"structured output: the grammar failed: {self.matcher.get_error()}")
        if words.numel() >= self.width:  # the model's vocabulary may be padded beyond the tokenizer's
            self.matcher.unsafe_compute_mask_ptr(words.data_ptr(), self.width * 4)
        else:
            full = torch.zeros(self.width, dtype=torch.int32)
            self.matcher.unsafe_compute_mask_ptr(full.data_ptr(), self.width * 4)
            words.copy_(full[: words.numel()])

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(
                f"structured output: token {token} does not fit the grammar: {self.matcher.get_error()}"
            )


class Vocabulary:
    """A tokenizer as llguidance sees it, with the chat's stop tokens as its end of sequence."""

    def __init__(self, processor: MM1Processor):
        tokenizer = processor.tokenizer
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(processor.stop_token_ids()))
        self.width = (self.tokenizer.vocab_size + 31) // 32
        self._bytes: dict[int, bytes] = {}

    def token_bytes(self, token: int) -> bytes:
        found = self._bytes.get(token)
        if found is None:
            found = self.tokenizer.decode_bytes([token]) if token < self.tokenizer.vocab_size else b""
            self._bytes[token] = found
        return found


_LOCK = threading.Lock()
_VOCABULARIES: dict[int, tuple[Any, Vocabulary]] = {}


def vocabulary(processor: MM1Processor) -> Vocabulary:
    """The processor's `Vocabulary`, built on first use and shared (the HTTP side and the engine)."""
    key = id(processor.tokenizer)
    with _LOCK:
        held = _VOCABULARIES.get(key)
        if held is None or held[0] is not processor.tokenizer:
            held = (processor.tokenizer, Vocabulary(processor))
            _VOCABULARIES[key] = held
        return held[1]


def schema_for(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema a response format asks for: None for plain text."""
    kind = response_format.type
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    schema = response_format.json_schema.schema_
    return schema if schema is not None else {"type": "object"}


def compile_schema(processor: MM1Processor, schema: dict[str, Any]) -> JsonGrammar:
    """A grammar for JSON that matches `schema`; GrammarError when llguidance cannot build it."""
    vocab = vocabulary(processor)
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)
    except ValueError as exc:
        raise GrammarError(str(exc)) from None
    matcher = llguidance.LLMatcher(vocab.tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise GrammarError(matcher.get_error())
    return JsonGrammar(matcher, vocab.width, schema)
