"""What readers produce: good records in one shape for every corpus format, and counted bad ones.

A `Record` is either a pre-training document (`segments`: text strings and `None` where an image stands, in
document order) or an SFT conversation (`turns`: {"role", "content"} with `<image>` markers); its images are
listed in order as raw sources (bytes or a path) until `mm1.data.images.verify_record` turns them into
verified PNG bytes. A `Bad` is a skipped record with a reason; `BadTally` counts them per reason and per file
so that the ingest step can fail with a message that names the worst files.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

SOURCES = ("interleaved", "captions", "text", "sft")
PRETRAIN_SOURCES = ("interleaved", "captions", "text")

# Reasons a record is skipped (each one is counted; past max_bad_fraction the ingest step fails).
BAD_JSON = "bad_json"  # a JSON line or JSON file that does not parse
BAD_RECORD = "bad_record"  # parses, but misses required fields or has the wrong types
UNEQUAL_LISTS = "unequal_lists"  # OBELICS `images` and `texts` of different lengths
BAD_INTERLEAVING = "bad_interleaving"  # OBELICS index where not exactly one of image/text is set
EMPTY_CAPTION = "empty_caption"  # a caption pair without caption text
EMPTY_TEXT = "empty_text"  # a text-only row or document without any text
MISSING_IMAGE = "missing_image"  # a webdataset key without an image member
MISSING_IMAGE_FILE = "missing_image_file"  # an image path that does not exist
NOT_AN_IMAGE = "not_an_image"  # bytes no image decoder recognizes
TRUNCATED_IMAGE = "truncated_image"  # a recognized image that fails to decode fully
IMAGE_TOO_LARGE = "image_too_large"  # over Pillow's decompression-bomb limit
UNREADABLE_FILE = "unreadable_file"  # a whole shard that cannot be opened (counted as one record)


@dataclass
class Record:
    source: str
    key: str  # stable id: "<file>#<index>", so output order never depends on scheduling
    file: str
    segments: list[str | None] | None = None  # pre-training: None marks an image slot
    turns: list[dict] | None = None  # SFT
    images: list[bytes | str] = field(default_factory=list)  # bytes, or a path/URI to read
    urls_skipped: int = 0  # http(s) image entries left out (download disabled)
    downloads_failed: int = 0

    def text(self) -> str:
        """All of the record's text, for tokenizer training."""
        if self.turns is not None:
            return "\n".join(t["content"].replace("<image>", "") for t in self.turns)
        return "\n".join(s for s in self.segments or [] if s)


@dataclass
class Bad:
    source: str
    file: str
    reason: str
    detail: str = ""


class BadTally:
    """Counts of skipped records by reason and by file."""

    def __init__(self) -> None:
        self.by_reason: Counter[str] = Counter()
        self.by_file: dict[str, Counter[str]] = defaultdict(Counter)
        self.examples: dict[str, str] = {}

    def add(self, reason: str, file: str, detail: str = "", n: int = 1) -> None:
        self.by_reason[reason] += n
        self.by_file[file][reason] += n
        if detail and reason not in self.examples:
            self.examples[reason] = f"{file}: {detail}"

    def add_bad(self, bad: Bad) -> None:
        self.add(bad.reason, bad.file, bad.detail)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def worst_files(self, k: int = 5) -> list[dict]:
        ranked = sorted(self.by_file.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        return [
            {"file": f, "bad": sum(c.values()), "reasons": dict(sorted(c.items()))} for f, c in ranked[:k]
        ]

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "by_reason": dict(sorted(self.by_reason.items())),
            "worst_files": self.worst_files(),
            "examples": dict(sorted(self.examples.items())),
        }
