"""A pure-Python stand-in for coco-caption's PTBTokenizer, so CIDEr-D needs no Java.

coco-caption runs Stanford CoreNLP 3.4.1 (`PTBTokenizer -preserveLines -lowerCase`) over every caption and
then drops the tokens in `PUNCTUATIONS`. This module reproduces that pipeline for the text captions and
model answers are made of; tests/eval/fixtures/ptb_golden.json holds the Java tokenizer's output for the
cases we claim to match (regenerate it with tests/eval/fixtures/make_ptb_golden.py where Java is installed).

What is reproduced:
- lower-casing; unicode quotes and dashes folded to ASCII as CoreNLP does (`’` -> `'`, `—` -> `--`);
- punctuation split off words and dropped: . , ; : ! ? ... - -- and all quote marks;
- clitics split off: `don't` -> `do n't`, `can't` -> `ca n't`, `dog's` -> `dog 's`, `we're` -> `we 're`,
  and `cannot` / `gonna` / `wanna` / `gotta` -> `can not` / `gon na` / `wan na` / `got ta`;
- brackets become `-lrb-` `-rrb-` `-lsb-` `-rsb-` `-lcb-` `-rcb-` and are KEPT: coco-caption's removal list
  holds the upper-case `-LRB-`, but `-lowerCase` has already lower-cased them (a quirk kept for fidelity);
- `$`, `%`, `#` (before a digit) and `*` become tokens of their own; runs such as `!!` or `?!` are one token
  and are kept (only the single marks are in the removal list);
- numbers keep their inner `.`, `,` and `:` (`3.5`, `1,000`, `3:30`); hyphenated words stay whole;
- a final period stays on abbreviations: dotted ones (`u.s.`, `p.m.`, `e.g.`), single letters (`c.`) and
  common titles (`mr.`, `dr.`, `st.`, `vs.`, `etc.`).

Known differences (rare in captions and short answers): emoticons (`:)` -> `:-rrb-` in Java), CoreNLP's
context-dependent abbreviations (`no. 5` keeps `no.`, here it becomes `no 5`), `'tis`, `y'all`, and
words joined by `!` or `.` without spaces.
"""

from __future__ import annotations

import re

# coco-caption's pycocoevalcap/tokenizer/ptbtokenizer.py drops exactly these tokens.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_UNICODE_FOLD = str.maketrans(
    {
        "\u201c": '"',
        "\u201d": '"',
        "\u2018": "'",
        "\u2019": "'",
        "\u2014": " -- ",
        "\u2013": " -- ",
        "\u2026": "...",
        "\u00a0": " ",
    }
)
_OPEN = {"(": "-lrb-", "[": "-lsb-", "{": "-lcb-"}
_CLOSE = {")": "-rrb-", "]": "-rsb-", "}": "-rcb-"}
_TITLES = frozenset(
    "mr mrs ms dr st jr sr vs etc prof mt inc ltd co corp gen gov sen rep rev capt col lt sgt".split()
)
_SPLIT_WORDS = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "wanna": ["wan", "na"],
    "gotta": ["got", "ta"],
}
_CLITICS = ("'s", "'re", "'ve", "'d", "'m", "'ll")
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'d|'m|'ll)$")
_DOTTED = re.compile(r"^(?:[a-z]\.)+[a-z]$")
_NUMBER_AMPM = re.compile(r"^(\d[\d:.]*)(am|pm)$")
# A comma, semicolon or colon inside a chunk splits it, except between two digits (1,000, 3:30) or in a URL.
_INNER_PUNCT = re.compile(r"(?<!\d)([,;:])(?!//)|([,;:])(?!\d|//)")


def _is_abbreviation(word: str) -> bool:
    return len(word) == 1 and word.isalpha() or bool(_DOTTED.match(word)) or word in _TITLES


def _keeps_apostrophe(chunk: str) -> bool:
    """'90s and a clitic written apart from its word ('s, 're, ...) keep their leading apostrophe."""
    return chunk[1].isdigit() or chunk.rstrip(".,;:!?") in _CLITICS


def _peel_front(chunk: str, out: list[str]) -> str:
    """Move leading quotes, brackets and symbols from `chunk` to `out`; returns the rest."""
    while chunk:
        if chunk.startswith(("``", '"')):
            out.append("``")
            chunk = chunk[2:] if chunk.startswith("``") else chunk[1:]
        elif chunk[0] in _OPEN:
            out.append(_OPEN[chunk[0]])
            chunk = chunk[1:]
        elif chunk.startswith("...") or chunk.startswith("--"):
            out.append(chunk[:3] if chunk.startswith("...") else "--")
            chunk = chunk[len(out[-1]) :]
        elif chunk[0] == "`" or (chunk[0] == "'" and len(chunk) > 1 and not _keeps_apostrophe(chunk)):
            out.append("`")  # an opening single quote
            chunk = chunk[1:]
        elif chunk[0] in "$*" or (chunk[0] == "#" and chunk[1:2].isdigit()):
            out.append(chunk[0])
            chunk = chunk[1:]
        else:
            break
    return chunk


def _peel_back(chunk: str, out: list[str]) -> str:
    """Move trailing punctuation from `chunk` to `out` (in reverse order); returns the rest."""
    while chunk:
        if chunk[-1] in _CLOSE:
            out.append(_CLOSE[chunk[-1]])
            chunk = chunk[:-1]
        elif chunk.endswith(("''", '"')):
            out.append("''")
            chunk = chunk[:-2] if chunk.endswith("''") else chunk[:-1]
        elif chunk.endswith("...") or chunk.endswith("--"):
            out.append("..." if chunk.endswith("...") else "--")
            chunk = chunk[: -len(out[-1])]
        elif chunk[-1] in "!?":
            mark = re.search(r"[!?]+$", chunk).group(0)
            out.append(mark)
            chunk = chunk[: -len(mark)]
        elif chunk[-1] == ".":
            if chunk.endswith("..") or not _is_abbreviation(chunk[:-1]):
                out.append(".")
                chunk = chunk[:-1]
            else:
                break
        elif chunk[-1] in ",;:%*'`":
            out.append(chunk[-1])
            chunk = chunk[:-1]
        else:
            break
    return chunk


def _split_word(word: str) -> list[str]:
    """Split a chunk stripped of outer punctuation into words and clitics."""
    if not word:
        return []
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    parts = [p for p in _INNER_PUNCT.split(word) if p]
    if len(parts) > 1:
        return [t for p in parts for t in ([p] if p in ",;:" else _split_word(p))]
    if "$" in word[1:]:  # 5$ -> 5 $
        head, _, tail = word.partition("$")
        return _split_word(head) + ["$"] + _split_word(tail)
    match = _NUMBER_AMPM.match(word)
    if match:
        return [match.group(1), match.group(2)]
    match = _CLITIC.match(word)
    if match:
        return [match.group(1), match.group(2)]
    return [word]


def _tokens(chunk: str) -> list[str]:
    front: list[str] = []
    back: list[str] = []
    middle = _peel_front(chunk, front)
    middle = _peel_back(middle, back)
    return front + _split_word(middle) + back[::-1]


def ptb_tokens(text: str) -> list[str]:
    """PTB tokens of one caption, lower-cased, before punctuation removal."""
    text = text.translate(_UNICODE_FOLD).lower()
    return [token for chunk in text.split() for token in _tokens(chunk)]


def ptb_tokenize(text: str) -> str:
    """One caption as coco-caption's tokenizer leaves it: PTB tokens without punctuation, space-joined."""
    return " ".join(t for t in ptb_tokens(text) if t not in PUNCTUATIONS)
