"""COCO and VQAv2 files on an object store (the session's real S3 server) read like local ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import write_coco_and_vqav2

from mm1.data.preprocess import load_image
from mm1.eval.coco import BenchmarkFileError, read_coco_captions, read_vqav2


def test_benchmarks_from_a_bucket_match_the_local_files(s3_server, tmp_path):
    local = write_coco_and_vqav2(tmp_path / "local", num_images=3)
    bucket = s3_server.new_bucket()
    s3_server.upload(tmp_path / "local", f"{bucket}/coco")

    def remote(key: str) -> str:
        return f"{bucket}/coco/{Path(local[key]).relative_to(tmp_path / 'local')}"

    captions = read_coco_captions(remote("coco_annotations"), remote("coco_images"))
    local_captions = read_coco_captions(local["coco_annotations"], local["coco_images"])
    assert [(c.key, c.references) for c in captions] == [(c.key, c.references) for c in local_captions]
    assert all(c.image.startswith(f"{bucket}/coco/") for c in captions)
    questions = read_vqav2(remote("vqav2_questions"), remote("vqav2_annotations"), remote("vqav2_images"))
    local_questions = read_vqav2(local["vqav2_questions"], local["vqav2_annotations"], local["vqav2_images"])
    assert [(q.key, q.prompt, q.references) for q in questions] == [
        (q.key, q.prompt, q.references) for q in local_questions
    ]
    # The evaluation actors decode images from their locations: the bucket's bytes are the local ones.
    assert load_image(captions[0].image).tobytes() == load_image(local_captions[0].image).tobytes()


def test_a_missing_image_in_the_bucket_is_named(s3_server, tmp_path):
    local = write_coco_and_vqav2(tmp_path / "local", num_images=2)
    victim = sorted((tmp_path / "local" / "val2014").iterdir())[0]
    victim.unlink()
    bucket = s3_server.new_bucket()
    s3_server.upload(tmp_path / "local", f"{bucket}/coco")
    with pytest.raises(BenchmarkFileError, match=victim.name):
        read_coco_captions(f"{bucket}/coco/{Path(local['coco_annotations']).name}", f"{bucket}/coco/val2014")
