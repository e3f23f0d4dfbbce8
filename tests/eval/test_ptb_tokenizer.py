"""The pure-Python PTB tokenizer against coco-caption's Java PTBTokenizer (recorded in a fixture)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS as COCO_PUNCTUATIONS

from mm1.eval.ptb import PUNCTUATIONS, ptb_tokenize, ptb_tokens

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = json.loads((FIXTURES / "ptb_golden.json").read_text())


def test_removal_list_is_coco_captions():
    assert PUNCTUATIONS == frozenset(COCO_PUNCTUATIONS)


@pytest.mark.parametrize("sentence", list(GOLDEN), ids=range(len(GOLDEN)))
def test_matches_the_java_tokenizer(sentence):
    assert ptb_tokenize(sentence) == GOLDEN[sentence]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A Red CIRCLE.", "a red circle"),  # lower-case, final period dropped
        ("two dogs, playing; wow!", "two dogs playing wow"),  # , ; ! dropped
        ("a red circle,two blue squares", "a red circle two blue squares"),  # comma between words splits
        ("don't", "do n't"),
        ("can't won't", "ca n't wo n't"),
        ("the dog's ball", "the dog 's ball"),
        ("they're here, we've gone, I'm", "they 're here we 've gone i 'm"),
        ("cannot gonna", "can not gon na"),
        ("dogs' toys", "dogs toys"),  # a possessive apostrophe alone is dropped
        ('he said "hi"', "he said hi"),  # quotes dropped
        ("fruit (apples)", "fruit -lrb- apples -rrb-"),  # brackets kept, as coco-caption keeps them
        ("3.5 and 1,000 at 3:30", "3.5 and 1,000 at 3:30"),  # numbers keep inner punctuation
        ("$5 for 10%", "$ 5 for 10 %"),
        ("a black-and-white photo", "a black-and-white photo"),
        ("well -- ok ... fine", "well ok fine"),
        ("in the U.S. with Dr. Who", "in the u.s. with dr. who"),  # abbreviations keep their period
        ("ok?!", "ok ?!"),  # a run of marks is one token, not in the removal list
        ("don\u2019t \u201cquote\u201d \u2014 dash", "do n't quote dash"),  # unicode folded to ASCII
        ("", ""),
        ("   ", ""),
    ],
)
def test_behaviours(text, expected):
    assert ptb_tokenize(text) == expected


def test_tokens_keep_punctuation_before_removal():
    assert ptb_tokens("Hi, (you).") == ["hi", ",", "-lrb-", "you", "-rrb-", "."]


@pytest.mark.skipif(shutil.which("java") is None, reason="Java not installed: the golden fixture stands in")
def test_golden_fixture_is_what_java_says(tmp_path):
    """Where Java exists, the recorded fixture must still be the Java tokenizer's output."""
    script = FIXTURES / "make_ptb_golden.py"
    copy = tmp_path / script.name
    copy.write_text(script.read_text())
    subprocess.run([sys.executable, str(copy)], check=True, capture_output=True, timeout=120)
    assert json.loads((tmp_path / "ptb_golden.json").read_text()) == GOLDEN
