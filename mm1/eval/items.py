"""One evaluation item, whatever the benchmark: an image, the text asked about it, and its references."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalItem:
    key: str  # unique within its benchmark
    image: bytes | str  # encoded image bytes, or a path every evaluation actor can read
    prompt: str  # the user's text after the <image> marker (unused by k-shot document prompts)
    references: tuple[str, ...]  # the answer (Shapes), 10 human answers (VQAv2), or reference captions
    type: str  # question type for per-type scores, or "caption"

    @property
    def answer(self) -> str:
        """The first reference: the canonical answer or caption for Shapes."""
        return self.references[0]
