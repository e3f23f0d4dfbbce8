"""COCO caption and VQAv2 readers on files in the official layouts (and the Shapes eval writer)."""

from __future__ import annotations

import json

import pytest
from data_helpers import image_bytes

from mm1.data import records as R
from mm1.data.eval_readers import EvalFileError, read_coco_captions, read_vqav2
from mm1.data.preprocess import load_image
from mm1.data.records import BadTally
from mm1.data.shapes_corpus import write_shapes_eval


@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "val2014"
    images.mkdir()
    for i in (42, 73):
        (images / f"COCO_val2014_{i:012d}.jpg").write_bytes(image_bytes())
    captions = {
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
            {"id": 73, "file_name": "COCO_val2014_000000000073.jpg"},
            {"id": 99, "file_name": "COCO_val2014_000000000099.jpg"},  # file missing
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "caption": "A dog on a couch."},
            {"id": 2, "image_id": 42, "caption": "a brown dog"},
            {"id": 3, "image_id": 73, "caption": "Two cats."},
            {"id": 4, "image_id": 99, "caption": "gone"},
            {"id": 5, "image_id": 73, "caption": ""},  # malformed
        ],
    }
    questions = {
        "questions": [
            {"question_id": 420, "image_id": 42, "question": "What animal is this?"},
            {"question_id": 730, "image_id": 73, "question": "How many cats?"},
            {"question_id": 990, "image_id": 99, "question": "Where is it?"},
            {"question_id": 731, "image_id": 73},  # malformed
        ]
    }
    annotations = {
        "annotations": [
            {
                "question_id": 420,
                "image_id": 42,
                "multiple_choice_answer": "dog",
                "answer_type": "other",
                "answers": [{"answer": "dog", "answer_id": k} for k in range(1, 11)],
            },
            {
                "question_id": 730,
                "image_id": 73,
                "answers": [{"answer": a} for a in ["2"] * 9 + ["two"]],
            },
            {"question_id": 990, "image_id": 99, "answers": [{"answer": "x"}] * 10},
        ]
    }
    paths = {name: tmp_path / f"{name}.json" for name in ("captions", "questions", "annotations")}
    for name, data in (("captions", captions), ("questions", questions), ("annotations", annotations)):
        paths[name].write_text(json.dumps(data))
    return paths, images


def test_coco_captions(coco):
    paths, images = coco
    tally = BadTally()
    items = read_coco_captions(paths["captions"], images, tally)
    assert [(i["image_id"], i["references"]) for i in items] == [
        (42, ["A dog on a couch.", "a brown dog"]),
        (73, ["Two cats."]),
    ]
    assert load_image(items[0]["image"]).size == (40, 30)
    assert tally.by_reason == {R.MISSING_IMAGE_FILE: 1, R.BAD_RECORD: 1}
    assert [i["image"] for i in read_coco_captions(paths["captions"])] == ["", "", ""]  # no image folder


def test_vqav2(coco):
    paths, images = coco
    tally = BadTally()
    items = read_vqav2(paths["questions"], paths["annotations"], images, tally)
    assert [(i["question_id"], i["question"], len(i["answers"])) for i in items] == [
        (420, "What animal is this?", 10),
        (730, "How many cats?", 10),
    ]
    assert items[1]["answers"].count("2") == 9 and items[0]["multiple_choice_answer"] == "dog"
    assert items[0]["image"].endswith("COCO_val2014_000000000042.jpg")
    assert tally.by_reason == {R.MISSING_IMAGE_FILE: 1, R.BAD_RECORD: 1}


def test_unusable_eval_files_fail_with_the_path(tmp_path):
    bad = tmp_path / "q.json"
    bad.write_text("{oops")
    with pytest.raises(EvalFileError, match="q.json"):
        read_coco_captions(bad)


def test_shapes_eval_files_read_back(tmp_path):
    paths = write_shapes_eval(tmp_path, num_scenes=12, seed=1_000_003)
    captions = read_coco_captions(paths["coco_annotations"], paths["images"])
    assert len(captions) == 12 and all(len(c["references"]) == 3 for c in captions)
    questions = read_vqav2(paths["vqav2_questions"], paths["vqav2_annotations"], paths["images"])
    assert len(questions) >= 12 * 3 and all(len(set(q["answers"])) == 1 for q in questions)
    assert {q["question_type"] for q in questions} >= {"count_all", "count_kind", "exists"}
