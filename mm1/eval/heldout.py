"""The held-out Shapes benchmark: scenes from a seed never used for training, their questions and captions.

The training corpus is generated from `data.shapes.seed` (0 by default); evaluation uses `evaluate.seed`, and
the config's default keeps them apart. The majority baselines are fitted on a training split generated with
the training seed, never on the evaluated questions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from mm1.data import shapes
from mm1.eval.baselines import MajorityBaseline, fit_majority


@dataclass(frozen=True)
class HeldOutItem:
    key: str  # unique id: scene index (+ question index)
    image: bytes  # PNG of the rendered 128 x 128 scene
    prompt: str  # the user's text (after the <image> marker)
    answer: str  # the canonical answer / caption
    type: str  # question type, or "caption"


def _png(scene: shapes.Scene) -> bytes:
    buffer = io.BytesIO()
    shapes.render(scene).save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_heldout(
    num_scenes: int, num_questions: int, seed: int
) -> tuple[list[HeldOutItem], list[HeldOutItem]]:
    """(questions, captions): `num_questions` questions drawn evenly from all scenes, one caption per scene."""
    rng = np.random.default_rng(seed)
    scenes = [shapes.sample_scene(rng) for _ in range(num_scenes)]
    images = [_png(scene) for scene in scenes]
    pool: list[HeldOutItem] = []
    captions: list[HeldOutItem] = []
    for i, (scene, image) in enumerate(zip(scenes, images, strict=True)):
        for j, q in enumerate(shapes.questions(scene, rng)):
            if q.type == "caption":
                captions.append(HeldOutItem(f"s{i}", image, q.question, q.answer, "caption"))
            else:
                pool.append(HeldOutItem(f"s{i}q{j}", image, q.question, q.answer, q.type))
    if len(pool) < num_questions:
        raise ValueError(
            f"{num_scenes} held-out scenes give only {len(pool)} questions; raise evaluate.num_scenes "
            f"to get evaluate.num_questions={num_questions}"
        )
    order = rng.permutation(len(pool))[:num_questions]
    return [pool[i] for i in sorted(order)], captions


def shapes_majority_baseline(train_seed: int, num_scenes: int = 1000) -> MajorityBaseline:
    rng = np.random.default_rng(train_seed)
    examples = []
    for _ in range(num_scenes):
        scene = shapes.sample_scene(rng)
        examples += [(q.type, q.answer) for q in shapes.questions(scene, rng) if q.type != "caption"]
    return fit_majority(examples, source=f"shapes training split (seed {train_seed}, {num_scenes} scenes)")
