"""Readers for the real evaluation formats (MM1.md): COCO caption annotations and VQAv2 questions/annotations.

COCO captions (`captions_val2014.json`, Karpathy test splits in the same format):
    {"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", ...}],
     "annotations": [{"image_id": 391895, "id": 1, "caption": "A man riding a bike."}, ...]}
  -> one item per image that has captions; its references are all its captions; the image is
     `images_dir/file_name`.
VQAv2 (`v2_OpenEnded_mscoco_val2014_questions.json` + `v2_mscoco_val2014_annotations.json`):
    questions: {"questions": [{"question_id", "image_id", "question"}]}
    annotations: {"annotations": [{"question_id", "answers": [{"answer": ...} x 10], "answer_type", ...}]}
  -> one item per question; references are the 10 human answers; the type is the answer type ("yes/no"
     becomes `yes_no` so metric names keep one slash: `vqav2/yes_no`). VQAv2 names no file, so the image is
     found in `images_dir` by the number its file name ends with (`COCO_val2014_000000391895.jpg` and
     `391895.png` both hold image 391895).
Items hold image *locations* (not bytes): the evaluation actors read them through mm1.storage, so files and
folders may be local (visible to every Ray node: local runs, a shared volume) or on an object store (s3://). Anything missing or malformed fails here, naming the file
and the offending entries, rather than scoring a partial benchmark.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

from mm1 import storage
from mm1.errors import UserFacingError
from mm1.eval.items import EvalItem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


class BenchmarkFileError(UserFacingError, ValueError):
    """A benchmark file or image folder that cannot be evaluated as configured."""

    hint = "point the evaluate.* file keys at readable files (the trained checkpoints are kept: a rerun only evaluates)"


def _load_json(path: str, what: str, key: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(storage.read_text(path))
    except OSError as exc:
        raise BenchmarkFileError(f"cannot read the {what} file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BenchmarkFileError(f"{what} file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise BenchmarkFileError(f"{what} file {path} has no {key!r} list at the top level")
    return data[key]


def _field(entry: Any, name: str, path: str, index: int, kind: type | tuple[type, ...]) -> Any:
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get(name), kind)
        or isinstance(entry.get(name), bool)
    ):
        raise BenchmarkFileError(f"{path}: entry {index} lacks a valid {name!r}: {str(entry)[:200]}")
    return entry[name]


def _require_images(paths: dict[str, str], folder: str, what: str) -> None:
    present = set(storage.list_files(folder, recursive=True))  # one listing, not one request per image
    missing = sorted(k for k, p in paths.items() if p not in present)
    if missing:
        raise BenchmarkFileError(
            f"{len(missing)} {what} image(s) are not in {folder}: e.g. {[str(paths[k]) for k in missing[:3]]}"
        )


def read_coco_captions(annotations: str, images_dir: str) -> list[EvalItem]:
    """Items keyed by image id (as text), in image-id order; `prompt` is empty (the caller phrases it)."""
    images = _load_json(annotations, "COCO caption annotations", "images")
    captions = _load_json(annotations, "COCO caption annotations", "annotations")
    files: dict[int, str] = {}
    for i, entry in enumerate(images):
        files[_field(entry, "id", annotations, i, int)] = _field(entry, "file_name", annotations, i, str)
    refs: dict[int, list[str]] = {}
    for i, entry in enumerate(captions):
        image_id = _field(entry, "image_id", annotations, i, int)
        if image_id not in files:
            raise BenchmarkFileError(
                f"{annotations}: annotation {i} names image {image_id}, absent from 'images'"
            )
        refs.setdefault(image_id, []).append(_field(entry, "caption", annotations, i, str))
    if not refs:
        raise BenchmarkFileError(f"{annotations}: no captions to evaluate")
    paths = {str(i): storage.join(storage.absolute(images_dir), files[i]) for i in refs}
    _require_images(paths, images_dir, "COCO")
    return [EvalItem(str(i), str(paths[str(i)]), "", tuple(refs[i]), "caption") for i in sorted(refs)]


def index_images(images_dir: str) -> dict[int, str]:
    """Image id -> file location, by the number each image file's name ends with."""
    if not storage.is_dir(images_dir):
        raise BenchmarkFileError(f"image folder {images_dir} does not exist")
    index: dict[int, str] = {}
    for path in storage.list_files(images_dir):
        stem, suffix = posixpath.splitext(storage.name(path))
        match = _TRAILING_NUMBER.search(stem)
        if suffix.lower() not in IMAGE_SUFFIXES or not match:
            continue
        image_id = int(match.group(1))
        if image_id in index:
            raise BenchmarkFileError(
                f"{images_dir}: {storage.name(index[image_id])} and {storage.name(path)} both hold image {image_id}"
            )
        index[image_id] = path
    return index


def _answer_type(entry: dict[str, Any]) -> str:
    value = entry.get("answer_type")
    return value.replace("/", "_").replace(" ", "_") if isinstance(value, str) and value else "all"


def read_vqav2(questions: str, annotations: str, images_dir: str) -> list[EvalItem]:
    """Items keyed by question id (as text), in question-id order; `prompt` is the question."""
    asked = _load_json(questions, "VQAv2 questions", "questions")
    answered = _load_json(annotations, "VQAv2 annotations", "annotations")
    by_question: dict[int, dict[str, Any]] = {}
    for i, entry in enumerate(answered):
        qid = _field(entry, "question_id", annotations, i, int)
        answers = _field(entry, "answers", annotations, i, list)
        texts = [a.get("answer") if isinstance(a, dict) else None for a in answers]
        if len(texts) < 2 or not all(isinstance(t, str) for t in texts):
            raise BenchmarkFileError(
                f"{annotations}: question {qid} needs a list of at least 2 {{'answer': str}} (VQAv2 has 10)"
            )
        by_question[qid] = entry | {"answers": texts}
    index = index_images(images_dir)
    items: list[EvalItem] = []
    unanswered: list[int] = []
    no_image: list[int] = []
    for i, entry in enumerate(asked):
        qid = _field(entry, "question_id", questions, i, int)
        image_id = _field(entry, "image_id", questions, i, int)
        text = _field(entry, "question", questions, i, str)
        if qid not in by_question:
            unanswered.append(qid)
        elif image_id not in index:
            no_image.append(image_id)
        else:
            ann = by_question[qid]
            items.append(
                EvalItem(str(qid), str(index[image_id]), text, tuple(ann["answers"]), _answer_type(ann))
            )
    if unanswered:
        raise BenchmarkFileError(
            f"{annotations} has no answers for {len(unanswered)} question(s), e.g. {unanswered[:5]}"
        )
    if no_image:
        raise BenchmarkFileError(
            f"{images_dir} lacks {len(no_image)} image(s) the questions ask about, e.g. {no_image[:5]}"
        )
    if not items:
        raise BenchmarkFileError(f"{questions}: no questions to evaluate")
    if len({it.key for it in items}) != len(items):
        raise BenchmarkFileError(f"{questions}: a question_id appears twice")
    return sorted(items, key=lambda it: int(it.key))
