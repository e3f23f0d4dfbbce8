"""VQA accuracy: the official VQAv2 answer normalization and the leave-one-out human-agreement score.

Normalization follows GT-Vision-Lab/VQA `vqaEval.py` step by step (its tables are reproduced verbatim):
1. newlines and tabs become spaces, outer whitespace is stripped;
2. punctuation: each mark in `PUNCT` is deleted if it touches a space anywhere in the answer, or if the answer
   holds a comma between digits (`1,000` -> `1000`); otherwise it becomes a space (`red/blue` -> `red blue`);
3. periods are deleted unless a digit follows (`3.5` keeps it, `yes.` loses it). The official pattern
   `(?!<=\\d)(\\.)(?!\\d)` means to also keep a period after a digit but its look-behind is mistyped, so a
   period after a digit is deleted too (`5.` -> `5`); we reproduce the behaviour, not the intent;
4. lower-case, split on whitespace, number words `none`/`zero`..`ten` -> digits, articles a/an/the dropped;
5. contractions missing their apostrophe are restored (`dont` -> `don't`).

Accuracy of one answer against n human answers (n = 10 in VQAv2, TextVQA, VizWiz, OK-VQA): for each of the
n leave-one-out subsets, `min(1, matches / 3)` where matches counts the subset's answers equal to it; the
mean over the n subsets. One difference from the official script: it normalizes human answers only when they
disagree (the released annotations are already normalized); we always normalize both sides with the same
function, which gives the same score on released annotations and makes our own references robust.
A benchmark with a single reference answer (Shapes) is scored by exact match after normalization.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

# The official tables (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]  # fmt: skip
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official (mistyped) look-behind, see step 3
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    digit_comma = _COMMA_STRIP.search(text) is not None
    for p in PUNCT:
        # The test looks at the original text, not the running result: the official behaviour.
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """The official VQAv2 answer normalization (see the module docstring)."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(answer))


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQAv2 accuracy in [0, 1]: min(1, matches/3) averaged over the leave-one-out subsets of the answers."""
    if isinstance(human_answers, str) or len(human_answers) < 2:
        raise ValueError(
            f"leave-one-out VQA accuracy needs at least 2 human answers, got {human_answers!r}; "
            "use exact_match for single-reference benchmarks"
        )
    pred = normalize_answer(prediction)
    answers = [normalize_answer(a) for a in human_answers]
    total_matches = sum(a == pred for a in answers)
    # Leaving out answer i leaves total - [answer i matches] matches among the others.
    per_subset = [min(1.0, (total_matches - (a == pred)) / 3) for a in answers]
    return sum(per_subset) / len(per_subset)


def exact_match(prediction: str, answer: str) -> float:
    """1.0 if the answers agree after normalization, else 0.0 (single-reference benchmarks such as Shapes)."""
    return float(normalize_answer(prediction) == normalize_answer(answer))


def answer_score(prediction: str, references: Sequence[str]) -> float:
    """Exact match for one reference answer, VQAv2 leave-one-out accuracy for several."""
    if isinstance(references, str):
        return exact_match(prediction, references)
    if len(references) == 1:
        return exact_match(prediction, references[0])
    return vqa_accuracy(prediction, references)


@dataclass(frozen=True)
class VQAResult:
    accuracy: float  # mean over all questions, in [0, 1]
    per_type: dict[str, float]  # question type -> mean accuracy
    counts: dict[str, int]  # question type -> number of questions
    per_item: dict[Hashable, float]  # question id -> accuracy

    def as_metrics(self, benchmark: str) -> dict[str, float]:
        """Flat metric names as the workflow's select.metric spells them: BENCHMARK/overall, BENCHMARK/TYPE."""
        return {f"{benchmark}/overall": self.accuracy} | {
            f"{benchmark}/{t}": v for t, v in self.per_type.items()
        }


def score_vqa(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str] | str],
    question_types: Mapping[Hashable, str] | None = None,
) -> VQAResult:
    """Score every question of `references` (id -> answer(s)); a question without a prediction scores 0.

    `question_types` (id -> type) groups the per-type means; without it every question is of type "all".
    """
    if not references:
        raise ValueError("no questions to score")
    unknown = [q for q in predictions if q not in references]
    if unknown:
        raise ValueError(f"predictions for unknown question ids: {unknown[:5]} ({len(unknown)} in all)")
    if question_types is not None:
        untyped = [q for q in references if q not in question_types]
        if untyped:
            raise ValueError(f"question_types lacks question ids {untyped[:5]} ({len(untyped)} in all)")
    per_item = {
        q: answer_score(predictions[q], refs) if q in predictions else 0.0 for q, refs in references.items()
    }
    by_type: dict[str, list[float]] = defaultdict(list)
    for q, acc in per_item.items():
        by_type[question_types[q] if question_types is not None else "all"].append(acc)
    counts = Counter({t: len(v) for t, v in by_type.items()})
    return VQAResult(
        accuracy=sum(per_item.values()) / len(per_item),
        per_type={t: sum(v) / len(v) for t, v in sorted(by_type.items())},
        counts=dict(sorted(counts.items())),
        per_item=per_item,
    )
