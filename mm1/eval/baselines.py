"""Majority-answer baselines: the score of always answering the most frequent answer of the question's type.

A VQA score means little without it (Shapes' `exists` questions are balanced yes/no, so 0.5 is free).
The majority answers are fitted on a *training/reference* answer set, never on the evaluated questions
(that would be an oracle prior): for Shapes, the answers of the SFT training conversations (or a training
split generated with the training seed); for VQAv2, the train split's annotations. `MajorityBaseline.source`
records which set it was, and the report prints it.

Counting: a question with several human answers (VQAv2) contributes its most frequent normalized answer,
as VQAv2's `multiple_choice_answer` does; ties, within a question and within a type, go to the
lexicographically smallest answer so the baseline is deterministic. A type absent from the training set falls
back to the most frequent answer over all types; a split type `BASE.SPLIT` (mm1.eval.items) absent from it falls
back to BASE's answer first.

Splits: Shapes' `count_kind.present` / `count_kind.uniform` and `exists.present` / `exists.uniform` are fitted
like their base types, on answers of the training split drawn by the same split definition
(mm1.eval.heldout.shapes_majority_baseline), so each split is scored beside its own majority answer. Like every
split, they are left out of the baseline's `overall`, exactly as they are left out of a model's.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from mm1.eval.items import SPLIT_SEP, score_questions
from mm1.eval.vqa import VQAResult, normalize_answer


@dataclass(frozen=True)
class MajorityBaseline:
    answers: dict[str, str]  # question type -> its most frequent normalized answer in the source set
    fallback: str  # the most frequent answer over all types, for types the source set lacks
    source: str  # which answer set it was fitted on, e.g. "shapes sft train conversations (seed 0)"

    def predict(self, question_type: str) -> str:
        if question_type in self.answers:
            return self.answers[question_type]
        return self.answers.get(question_type.split(SPLIT_SEP, 1)[0], self.fallback)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> MajorityBaseline:
        return cls(answers=dict(data["answers"]), fallback=data["fallback"], source=data["source"])


def _most_common(counts: Counter) -> str:
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def fit_majority(examples: Iterable[tuple[str, str | Sequence[str]]], source: str) -> MajorityBaseline:
    """Fit on (question type, answer or list of human answers) pairs from a training/reference set."""
    if not source:
        raise ValueError("name the answer set the baseline is fitted on (source), e.g. 'shapes train split'")
    by_type: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for question_type, answer in examples:
        if isinstance(answer, str):
            answer = normalize_answer(answer)
        else:
            answer = _most_common(Counter(normalize_answer(a) for a in answer))
        by_type[question_type][answer] += 1
        overall[answer] += 1
    if not overall:
        raise ValueError(f"no training answers to fit a majority baseline on (source: {source})")
    answers = {t: _most_common(c) for t, c in sorted(by_type.items())}
    return MajorityBaseline(answers=answers, fallback=_most_common(overall), source=source)


def baseline_scores(
    baseline: MajorityBaseline,
    references: Mapping[Hashable, Sequence[str] | str],
    question_types: Mapping[Hashable, str],
) -> VQAResult:
    """Score the baseline on the evaluated questions exactly as a model's answers are scored (split types
    apart from `overall`, mm1.eval.items.score_questions)."""
    predictions = {q: baseline.predict(question_types[q]) for q in references if q in question_types}
    return score_questions(predictions, references, question_types)
