"""CIDEr-D: agreement with pycocoevalcap's Cider scorer, with an independent implementation, and by hand."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
from pycocoevalcap.cider.cider import Cider

from mm1.eval.cider import cider_d

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "ptb_golden.json").read_text())
WORDS = (
    "a red blue green circle square triangle two three and the word cat dog sun on of in man horse".split()
)


def _coco(gts: dict, res: dict) -> tuple[float, list[float]]:
    """pycocoevalcap's scorer on already-tokenized text."""
    score, scores = Cider().compute_score(
        {k: list(v) for k, v in gts.items()}, {k: [v] for k, v in res.items()}
    )
    return float(score), [float(s) for s in scores]


def _oracle(gts: dict, res: dict, n: int = 4, sigma: float = 6.0) -> list[float]:
    """CIDEr-D written from its definition, independently of pycocoevalcap (length = number of words)."""

    def grams(words: list[str]) -> list[Counter]:
        return [Counter(tuple(words[i : i + k]) for i in range(len(words) - k + 1)) for k in range(1, n + 1)]

    df: Counter = Counter()
    for refs in gts.values():
        df.update({g for r in refs for c in grams(r.split()) for g in c})
    log_n = math.log(len(gts))

    def tfidf(words: list[str]) -> list[dict]:
        return [{g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in c.items()} for c in grams(words)]

    out = []
    for key, refs in gts.items():
        hyp_words = res[key].split()
        hyp = tfidf(hyp_words)
        total = 0.0
        for ref in refs:
            ref_words = ref.split()
            vec_ref = tfidf(ref_words)
            penalty = math.exp(-((len(hyp_words) - len(ref_words)) ** 2) / (2 * sigma**2))
            for h, r in zip(hyp, vec_ref, strict=True):
                dot = sum(min(w, r.get(g, 0.0)) * r.get(g, 0.0) for g, w in h.items())
                norms = math.sqrt(sum(w * w for w in h.values())) * math.sqrt(sum(w * w for w in r.values()))
                total += (dot / norms if norms else 0.0) * penalty / n
        out.append(10.0 * total / len(refs))
    return out


def _sentence(rng: random.Random, length: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(length))


def _generated_case(seed: int) -> tuple[dict, dict]:
    """Varied sets: 2-6 images, 1-5 references of 0-14 words, candidates copied, perturbed, repetitive or empty."""
    rng = random.Random(seed)
    gts, res = {}, {}
    for i in range(rng.randint(2, 6)):
        refs = [_sentence(rng, rng.randint(1, 14)) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.2:
            refs.append("")  # an empty reference among others
        kind = rng.choice(["copy", "perturb", "random", "repeat", "empty", "one"])
        if kind == "copy":
            cand = rng.choice([r for r in refs if r] or ["cat"])
        elif kind == "perturb":
            words = rng.choice([r for r in refs if r] or ["cat"]).split()
            words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS))
            cand = " ".join(words)
        elif kind == "repeat":
            cand = " ".join([rng.choice(WORDS)] * rng.randint(2, 9))
        elif kind == "empty":
            cand = ""
        elif kind == "one":
            cand = rng.choice(WORDS)
        else:
            cand = _sentence(rng, rng.randint(1, 20))
        gts[f"img{i}"], res[f"img{i}"] = refs, cand
    return gts, res


@pytest.mark.parametrize("seed", range(24))
def test_matches_pycocoevalcap_and_an_independent_implementation(seed):
    gts, res = _generated_case(seed)
    # Upper-case the raw input: our tokenizer must lower-case it as the PTB tokenizer does.
    raw_gts = {k: [r.upper() for r in refs] for k, refs in gts.items()}
    raw_res = {k: v.capitalize() for k, v in res.items()}
    result = cider_d(raw_gts, raw_res)
    score, scores = _coco(gts, res)
    assert result.score == pytest.approx(score, abs=1e-6)
    assert [result.per_item[k] for k in gts] == pytest.approx(scores, abs=1e-6)
    assert [result.per_item[k] for k in gts] == pytest.approx(_oracle(gts, res), abs=1e-6)


@pytest.mark.parametrize("start", range(0, 72, 9))
def test_punctuated_text_scores_as_coco_caption_scores_its_java_tokenization(start):
    sentences = [s for s in GOLDEN if GOLDEN[s]][start : start + 9]
    raw_gts = {i: sentences[3 * i : 3 * i + 2] for i in range(3)}
    raw_res = {i: sentences[3 * i + 2] for i in range(3)}
    # Expected: pycocoevalcap on the Java PTBTokenizer's output for the same sentences.
    score, scores = _coco(
        {k: [GOLDEN[s] for s in v] for k, v in raw_gts.items()}, {k: GOLDEN[v] for k, v in raw_res.items()}
    )
    result = cider_d(raw_gts, raw_res)
    assert result.score == pytest.approx(score, abs=1e-6)
    assert list(result.per_item.values()) == pytest.approx(scores, abs=1e-6)


def test_hand_computed_exact_copy():
    # Two images, one reference each, no shared n-grams: every IDF is log 2, so a copy has cosine 1 for
    # unigrams and bigrams and no 3- or 4-grams: (1 + 1 + 0 + 0) / 4 * 10 = 5.
    result = cider_d({"x": ["a b"], "y": ["c d"]}, {"x": "A b!", "y": "c d"})
    assert result.per_item == pytest.approx({"x": 5.0, "y": 5.0})
    assert result.score == pytest.approx(5.0)


def test_hand_computed_clipping_and_length_penalty():
    # Candidate "a a b" against "a b" (IDF log 2 everywhere, it cancels in the cosines):
    # unigrams: clipped dot 2, norms sqrt(5) * sqrt(2); bigrams: dot 1, norms sqrt(2) * 1;
    # length penalty exp(-1 / 72) for one extra word.
    result = cider_d({"x": ["a b"], "y": ["c d"]}, {"x": "a a b", "y": "zzz"})
    expected = 10 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert result.per_item["x"] == pytest.approx(expected, abs=1e-9)
    assert result.per_item["y"] == 0.0


def test_idf_comes_from_the_evaluated_set():
    refs = {"x": ["a red circle"], "y": ["a blue square"]}
    cands = {"x": "a red square", "y": "a blue square"}
    alone = cider_d(refs, cands).per_item["x"]
    # A third image whose reference says "red square" makes that bigram commoner, so x's match on it
    # weighs less and its score changes although x itself did not.
    grown = cider_d(refs | {"z": ["a red square"]}, cands | {"z": "a red square"}).per_item["x"]
    assert alone > 0 and grown > 0
    assert alone != pytest.approx(grown, abs=1e-3)


def test_single_item_scores_zero():
    # log(1) - log(df) = 0: a set of one gives every n-gram zero weight (documented).
    assert cider_d({"x": ["a red circle"]}, {"x": "a red circle"}).score == 0.0


def test_keys_must_match():
    with pytest.raises(ValueError, match=r"no candidate for \['y'\]"):
        cider_d({"x": ["a"], "y": ["b"]}, {"x": "a"})
    with pytest.raises(ValueError, match=r"no references for \['z'\]"):
        cider_d({"x": ["a"]}, {"x": "a", "z": "b"})


def test_references_must_be_lists_and_not_all_empty():
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d({"x": "a red circle"}, {"x": "a red circle"})
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d({"x": []}, {"x": "a"})
    with pytest.raises(ValueError, match="empty after tokenization"):
        cider_d({"x": ["..."], "y": [""]}, {"x": "a", "y": "b"})
