"""Incremental detokenization with stop strings, for streaming.

Each new token re-decodes the answer so far (byte-level BPE may need several tokens for one character) and
releases only text that can no longer change: a trailing partial UTF-8 character, or a tail that could be the
start of a stop string, is held back until the next token settles it. A stop string ends the answer and is
not part of it, as in OpenAI's API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"  # what a partial UTF-8 sequence decodes to


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._text = ""
        self._sent = 0  # characters of _text already released
        self.stopped = False  # a stop string was found

    def push(self, token: int) -> str:
        """Add a generated token; return the text now safe to release (may be empty)."""
        self._ids.append(token)
        self._text = self._decode(self._ids)
        hit = self._first_stop()
        if hit is not None:
            self.stopped = True
            return self._release(hit)
        safe = len(self._text)
        while safe > self._sent and self._text[safe - 1] == REPLACEMENT:
            safe -= 1
        return self._release(safe - self._stop_prefix_len(self._text[:safe]))

    def flush(self) -> str:
        """At the end of generation: whatever is still held back (unless a stop string cut it)."""
        return "" if self.stopped else self._release(len(self._text))

    @property
    def text(self) -> str:
        """The answer released so far."""
        return self._text[: self._sent]

    def _first_stop(self) -> int | None:
        found = [i for i in (self._text.find(s) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stop:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def _release(self, upto: int) -> str:
        upto = max(upto, self._sent)
        piece = self._text[self._sent : upto]
        self._sent = upto
        return piece
