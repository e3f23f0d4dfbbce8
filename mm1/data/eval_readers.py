"""Readers for evaluation sets: COCO caption annotations and VQAv2 questions + annotations.

They return plain lists of dicts the evaluator can use directly; an entry whose image file is missing (when an
image folder is given) or whose fields are malformed is skipped and counted in the optional `BadTally`.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from mm1 import storage
from mm1.data.records import BAD_JSON, BAD_RECORD, MISSING_IMAGE_FILE, UNREADABLE_FILE, BadTally

_IMAGE_ID = re.compile(r"(\d+)\.(?:jpe?g|png|webp|bmp)$", re.IGNORECASE)


class EvalFileError(ValueError):
    """An evaluation file that cannot be used at all (unreadable, not JSON, wrong top-level shape)."""


def _load_json(path: str | Path, tally: BadTally | None) -> dict:
    try:
        data = json.loads(storage.read_bytes(str(path)))
    except json.JSONDecodeError as exc:
        _count(tally, BAD_JSON, str(path), str(exc))
        raise EvalFileError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        _count(tally, UNREADABLE_FILE, str(path), str(exc))
        raise EvalFileError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise EvalFileError(f"{path}: expected a JSON object at the top level")
    return data


def _count(tally: BadTally | None, reason: str, file: str, detail: str = "") -> None:
    if tally is not None:
        tally.add(reason, file, detail)


def _image_path(images_dir: str | Path | None, name: str, file: str, tally: BadTally | None) -> str | None:
    """The image's path under `images_dir` ('' when no folder is given); None when the file is missing."""
    if not images_dir:
        return ""
    path = storage.join(str(images_dir), name)
    if storage.is_file(path):
        return path
    _count(tally, MISSING_IMAGE_FILE, file, path)
    return None


def read_coco_captions(
    annotations: str | Path, images_dir: str | Path | None = None, tally: BadTally | None = None
) -> list[dict]:
    """COCO captions JSON -> [{"image_id", "file_name", "image" (path or ""), "references": [str, ...]}],
    ordered by image id; images without any caption are left out."""
    data = _load_json(annotations, tally)
    refs: dict[int, list[str]] = defaultdict(list)
    for ann in data.get("annotations", []):
        caption = ann.get("caption") if isinstance(ann, dict) else None
        if not isinstance(caption, str) or not caption.strip() or "image_id" not in ann:
            _count(tally, BAD_RECORD, str(annotations), f"annotation {ann!r:.80}")
            continue
        refs[ann["image_id"]].append(caption.strip())
    out = []
    for image in data.get("images", []):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            _count(tally, BAD_RECORD, str(annotations), f"image {image!r:.80}")
            continue
        if not refs.get(image["id"]):
            continue
        path = _image_path(images_dir, image["file_name"], str(annotations), tally)
        if path is None:
            continue
        out.append(
            {
                "image_id": image["id"],
                "file_name": image["file_name"],
                "image": path,
                "references": refs[image["id"]],
            }
        )
    return sorted(out, key=lambda r: r["image_id"])


def _index_images(images_dir: str | Path) -> dict[int, str]:
    """image id -> file name, from COCO-style names ending in the zero-padded id (COCO_val2014_000000042.jpg)."""
    index = {}
    for path in storage.list_files(str(images_dir)):
        match = _IMAGE_ID.search(storage.name(path))
        if match:
            index.setdefault(int(match.group(1)), storage.name(path))
    return index


def read_vqav2(
    questions: str | Path,
    annotations: str | Path,
    images_dir: str | Path | None = None,
    tally: BadTally | None = None,
) -> list[dict]:
    """VQAv2 question + annotation JSON -> [{"question_id", "image_id", "image", "question", "answers" (10
    strings), "multiple_choice_answer", "question_type", "answer_type"}], in question order."""
    q_data = _load_json(questions, tally)
    a_data = _load_json(annotations, tally)
    by_qid = {a.get("question_id"): a for a in a_data.get("annotations", []) if isinstance(a, dict)}
    index = _index_images(images_dir) if images_dir else {}
    out = []
    for q in q_data.get("questions", []):
        if not isinstance(q, dict) or not {"question_id", "image_id", "question"} <= q.keys():
            _count(tally, BAD_RECORD, str(questions), f"question {q!r:.80}")
            continue
        ann = by_qid.get(q["question_id"])
        answers = ann.get("answers") if ann else None
        if not isinstance(answers, list) or not answers:
            _count(tally, BAD_RECORD, str(annotations), f"question {q['question_id']}: no answers")
            continue
        texts = [a.get("answer") for a in answers if isinstance(a, dict)]
        if len(texts) != len(answers) or not all(isinstance(t, str) for t in texts):
            _count(tally, BAD_RECORD, str(annotations), f"question {q['question_id']}: malformed answers")
            continue
        image = ""
        if images_dir:
            name = index.get(q["image_id"])
            if name is None:
                _count(tally, MISSING_IMAGE_FILE, str(questions), f"image {q['image_id']} in {images_dir}")
                continue
            image = storage.join(str(images_dir), name)
        out.append(
            {
                "question_id": q["question_id"],
                "image_id": q["image_id"],
                "image": image,
                "question": q["question"],
                "answers": texts,
                "multiple_choice_answer": ann.get("multiple_choice_answer", ""),
                "question_type": ann.get("question_type", ""),
                "answer_type": ann.get("answer_type", ""),
            }
        )
    return out
