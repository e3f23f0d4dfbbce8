"""COCO caption and VQAv2 readers: real-format files become items; anything missing fails loudly and says where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import write_coco_and_vqav2

from mm1.data import shapes
from mm1.data.shapes_corpus import write_shapes_eval
from mm1.eval.coco import BenchmarkFileError, index_images, read_coco_captions, read_vqav2


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    return write_coco_and_vqav2(tmp_path, num_images=3)


def test_coco_items_carry_every_caption_of_their_image(files):
    items = read_coco_captions(files["coco_annotations"], files["coco_images"])
    data = json.loads(Path(files["coco_annotations"]).read_text())
    assert [it.key for it in items] == [str(i["id"]) for i in data["images"]]
    for it in items:
        expected = [a["caption"] for a in data["annotations"] if str(a["image_id"]) == it.key]
        assert list(it.references) == expected and len(expected) == 5
        assert Path(it.image).is_file() and it.image.endswith(f"{int(it.key):012d}.jpg")
        assert it.type == "caption"


def test_vqav2_items_have_ten_answers_and_a_one_slash_answer_type(files):
    items = read_vqav2(files["vqav2_questions"], files["vqav2_annotations"], files["vqav2_images"])
    questions = json.loads(Path(files["vqav2_questions"]).read_text())["questions"]
    assert sorted(it.key for it in items) == sorted(str(q["question_id"]) for q in questions)
    by_key = {str(q["question_id"]): q for q in questions}
    for it in items:
        assert it.prompt == by_key[it.key]["question"]
        assert len(it.references) == 10
        assert it.type in {"yes_no", "number", "other"}
        assert Path(it.image).name == f"COCO_val2014_{by_key[it.key]['image_id']:012d}.jpg"


def test_images_are_found_by_the_number_their_name_ends_with(tmp_path):
    (tmp_path / "COCO_val2014_000000000042.jpg").write_bytes(b"x")
    (tmp_path / "7.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    assert {k: Path(p).name for k, p in index_images(str(tmp_path)).items()} == {
        42: "COCO_val2014_000000000042.jpg",
        7: "7.png",
    }
    (tmp_path / "42.png").write_bytes(b"x")
    with pytest.raises(BenchmarkFileError, match="both hold image 42"):
        index_images(str(tmp_path))


def test_a_missing_coco_image_is_named(files):
    victim = sorted(Path(files["coco_images"]).iterdir())[0]
    victim.unlink()
    with pytest.raises(BenchmarkFileError, match="not in") as err:
        read_coco_captions(files["coco_annotations"], files["coco_images"])
    assert victim.name in str(err.value)


def test_a_question_without_answers_is_an_error(files):
    path = Path(files["vqav2_annotations"])
    data = json.loads(path.read_text())
    dropped = data["annotations"].pop()["question_id"]
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkFileError, match=str(dropped)):
        read_vqav2(files["vqav2_questions"], files["vqav2_annotations"], files["vqav2_images"])


def test_malformed_files_name_the_file_and_entry(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": "one", "file_name": "a.jpg"}], "annotations": []}))
    with pytest.raises(BenchmarkFileError, match=r"bad\.json: entry 0 lacks a valid 'id'"):
        read_coco_captions(str(bad), files["coco_images"])
    bad.write_text("{not json")
    with pytest.raises(BenchmarkFileError, match="not valid JSON"):
        read_vqav2(str(bad), files["vqav2_annotations"], files["vqav2_images"])


def test_shapes_eval_files_read_back(tmp_path):
    """write_shapes_eval writes the formats these readers take (one reader for COCO and VQAv2 files)."""
    paths = {k: str(v) for k, v in write_shapes_eval(tmp_path, num_scenes=12, seed=1_000_003).items()}
    captions = read_coco_captions(paths["coco_annotations"], paths["images"])
    assert len(captions) == 12 and all(len(c.references) == 3 for c in captions)
    questions = read_vqav2(paths["vqav2_questions"], paths["vqav2_annotations"], paths["images"])
    assert len(questions) >= 12 * 3 and all(len(set(q.references)) == 1 for q in questions)
    question_types = {shapes.QUESTION_TYPES[int(q.key) % 10] for q in questions}
    assert question_types >= {"count_all", "count_kind", "exists"}
    assert {q.type for q in questions} == {"number", "other"}
