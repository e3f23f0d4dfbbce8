"""CIDEr-D for captioning, computed by pycocoevalcap's pure-Python `Cider` scorer.

CIDEr-D (Vedantam et al. 2015, as in coco-caption): each caption becomes TF-IDF vectors of its 1..4-grams;
the IDF comes from the references of the evaluated set itself; a candidate's n-gram weights are clipped at the
reference's, cosine similarity is averaged over n and over the references, damped by a Gaussian length
penalty (sigma 6) and multiplied by 10. The score is pycocoevalcap's (papers print it x100: 1.146 -> 114.6).

Text is first tokenized by `mm1.eval.ptb.ptb_tokenize`, a pure-Python stand-in for coco-caption's Java
PTBTokenizer (lower-case, punctuation removed). Because the IDF depends on the whole set, scores are only
comparable between checkpoints evaluated on the same full set; with a single item every IDF is zero and so is
the score.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from pycocoevalcap.cider.cider import Cider

from mm1.eval.ptb import ptb_tokenize


@dataclass(frozen=True)
class CiderResult:
    score: float  # the corpus CIDEr-D: the mean of per_item
    per_item: dict[Hashable, float]  # key -> that item's CIDEr-D


def cider_d(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]) -> CiderResult:
    """CIDEr-D of `candidates` (key -> one caption) against `references` (key -> its reference captions).

    Both take raw text; every key of one must be in the other. Raises ValueError naming the offending keys.
    """
    missing = [k for k in references if k not in candidates]
    extra = [k for k in candidates if k not in references]
    if missing or extra:
        raise ValueError(
            f"references and candidates must have the same keys: no candidate for {missing[:5]} "
            f"({len(missing)} in all), no references for {extra[:5]} ({len(extra)} in all)"
        )
    no_refs = [k for k, refs in references.items() if isinstance(refs, str) or len(refs) == 0]
    if no_refs:
        raise ValueError(f"each key needs a non-empty list of reference captions; bad keys: {no_refs[:5]}")
    if not references:
        raise ValueError("cannot compute CIDEr-D of an empty set")
    keys = list(references)
    gts = {i: [ptb_tokenize(r) for r in references[k]] for i, k in enumerate(keys)}
    res = {i: [ptb_tokenize(candidates[k])] for i, k in enumerate(keys)}
    if not any(ref for refs in gts.values() for ref in refs):
        # pycocoevalcap would fail on max() of an empty IDF table; say why instead.
        raise ValueError("every reference caption is empty after tokenization")
    score, scores = Cider().compute_score(gts, res)
    return CiderResult(score=float(score), per_item={k: float(s) for k, s in zip(keys, scores, strict=True)})
