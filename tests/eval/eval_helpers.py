"""A tiny random-init MM1 checkpoint for the evaluation tests: no downloads, built in about a second."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mm1.data import shapes
from mm1.data.tokenizer import train_bpe_tokenizer
from mm1.model import MM1ForConditionalGeneration, MM1Processor, build_mm1, save_for_inference


def shapes_texts(num_scenes: int = 60) -> list[str]:
    rng = np.random.default_rng(0)
    texts = []
    for _ in range(num_scenes):
        scene = shapes.sample_scene(rng)
        texts += [f"{q.question} {q.answer}" for q in shapes.questions(scene, rng)]
    return texts


def tiny_model(seed: int = 0) -> tuple[MM1ForConditionalGeneration, MM1Processor]:
    """Small images and few image tokens keep generation fast; a wide init makes greedy tokens varied, so
    equality between two decoding paths is not trivially true."""
    tokenizer = train_bpe_tokenizer(shapes_texts(), vocab_size=320)
    torch.manual_seed(seed)
    model = build_mm1(
        "tiny",
        tokenizer,
        image_size=32,
        connector_type="avgpool",
        num_image_tokens=4,
        overrides={"text_config.initializer_range": 0.3, "initializer_range": 0.3},
    ).eval()
    return model, MM1Processor.from_config(model.config, tokenizer)


def save_tiny_checkpoint(folder: Path, seed: int = 0) -> str:
    model, processor = tiny_model(seed)
    save_for_inference(model, processor, folder)
    return str(folder)


def write_coco_and_vqav2(root: Path, num_images: int = 4, seed: int = 5) -> dict[str, str]:
    """Small benchmark files in the real formats (MM1.md), over JPEGs rendered by the Shapes renderer:
    COCO captions (5 per image) and VQAv2 questions + annotations (10 human answers, an answer type each).
    Returns the evaluate.* settings pointing at them."""
    rng = np.random.default_rng(seed)
    images_dir = root / "val2014"
    images_dir.mkdir(parents=True)
    images, captions, questions, annotations = [], [], [], []
    for n in range(num_images):
        image_id = 1000 + 7 * n
        scene = shapes.sample_scene(rng)
        name = f"COCO_val2014_{image_id:012d}.jpg"
        shapes.render(scene).save(images_dir / name, format="JPEG")
        images.append({"id": image_id, "file_name": name, "width": 128, "height": 128})
        canonical = shapes.caption(scene)
        refs = [canonical] + [shapes.paraphrase(scene, rng) for _ in range(4)]
        captions += [
            {"id": 10 * image_id + j, "image_id": image_id, "caption": c} for j, c in enumerate(refs)
        ]
        for q in shapes.questions(scene, rng)[:3]:
            qid = image_id * 100 + len(questions)
            questions.append({"question_id": qid, "image_id": image_id, "question": q.question})
            # Human answers disagree a little, as in VQAv2: 8 give the answer, 2 something else.
            answers = [q.answer] * 8 + ["unsure", q.answer.upper()]
            answer_type = (
                "yes/no" if q.answer in ("yes", "no") else "number" if q.answer.isdigit() else "other"
            )
            annotations.append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "question_type": q.type,
                    "answer_type": answer_type,
                    "multiple_choice_answer": q.answer,
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                        for i, a in enumerate(answers)
                    ],
                }
            )
    files = {
        "coco_annotations": root / "captions_val2014.json",
        "vqav2_questions": root / "v2_OpenEnded_mscoco_val2014_questions.json",
        "vqav2_annotations": root / "v2_mscoco_val2014_annotations.json",
    }
    files["coco_annotations"].write_text(json.dumps({"images": images, "annotations": captions}))
    files["vqav2_questions"].write_text(json.dumps({"task_type": "Open-Ended", "questions": questions}))
    files["vqav2_annotations"].write_text(json.dumps({"annotations": annotations}))
    return {k: str(v) for k, v in files.items()} | {
        "coco_images": str(images_dir),
        "vqav2_images": str(images_dir),
    }
