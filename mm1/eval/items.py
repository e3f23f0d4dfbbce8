"""One evaluation item, whatever the benchmark: an image, the text asked about it, and its references.

Split types: a question type `BASE.SPLIT` (e.g. `count_kind.uniform`, mm1.eval.heldout) is a separately drawn
probe set of the type BASE. It is scored on its own (metric `BENCHMARK/BASE.SPLIT`) and counted neither in
BASE's score nor in `overall`, so those keep their definitions whatever splits are added. The separator is a
dot, not `/` (metric names keep one slash) nor `@` (the k-shot suffix `@K`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

from mm1.eval.vqa import VQAResult, score_vqa

SPLIT_SEP = "."


@dataclass(frozen=True)
class EvalItem:
    key: str  # unique within its benchmark
    image: bytes | str  # encoded image bytes, or a path every evaluation actor can read
    prompt: str  # the user's text after the <image> marker (unused by k-shot document prompts)
    references: tuple[str, ...]  # the answer (Shapes), 10 human answers (VQAv2), or reference captions
    type: str  # question type for per-type scores (BASE.SPLIT for a split), or "caption"

    @property
    def answer(self) -> str:
        """The first reference: the canonical answer or caption for Shapes."""
        return self.references[0]


def split_type(base: str, split: str) -> str:
    """The question type of `base`'s split `split`: `count_kind.uniform`."""
    return f"{base}{SPLIT_SEP}{split}"


def is_split(question_type: str) -> bool:
    return SPLIT_SEP in question_type


def score_questions(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str] | str],
    question_types: Mapping[Hashable, str],
) -> VQAResult:
    """`score_vqa`, with `accuracy` (overall) the mean over the questions whose type is not a split."""
    result = score_vqa(predictions, references, question_types)
    main = [acc for q, acc in result.per_item.items() if not is_split(question_types[q])]
    if len(main) == len(result.per_item):
        return result
    if not main:
        raise ValueError("only split questions to score: overall needs questions of the base types")
    return replace(result, accuracy=sum(main) / len(main))
