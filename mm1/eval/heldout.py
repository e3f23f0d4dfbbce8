"""The held-out Shapes benchmark: scenes from a seed never used for training, their questions and captions.

The training corpus is generated from `data.shapes.seed` (0 by default); evaluation uses `evaluate.seed`, and
the config's default keeps them apart. The majority baselines are fitted on a training split generated with
the training seed, never on the evaluated questions.

k-shot demonstrations come from a third set of scenes, `shapes_demo_pool`, drawn from a stream derived from
`evaluate.seed` (numpy's `default_rng([seed, 1])`, independent of `default_rng(seed)`): no demonstration is
an evaluated scene, so a query can never see its own caption, nor another query's. `shapes_demo_questions`
asks questions about the same pool scenes (k-shot VQA).
"""

from __future__ import annotations

import io

import numpy as np

from mm1.data import shapes
from mm1.eval.baselines import MajorityBaseline, fit_majority
from mm1.eval.items import EvalItem
from mm1.eval.kshot import Demo

DEMO_POOL_STREAM = 1  # default_rng([evaluate.seed, DEMO_POOL_STREAM]) renders the demonstration pool


def _png(scene: shapes.Scene) -> bytes:
    buffer = io.BytesIO()
    shapes.render(scene).save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_heldout(num_scenes: int, num_questions: int, seed: int) -> tuple[list[EvalItem], list[EvalItem]]:
    """(questions, captions): `num_questions` questions drawn evenly from all scenes, one caption per scene.

    Keys: `s{scene}q{question}` for questions, `s{scene}` for captions.
    """
    rng = np.random.default_rng(seed)
    scenes = [shapes.sample_scene(rng) for _ in range(num_scenes)]
    images = [_png(scene) for scene in scenes]
    pool: list[EvalItem] = []
    captions: list[EvalItem] = []
    for i, (scene, image) in enumerate(zip(scenes, images, strict=True)):
        for j, q in enumerate(shapes.questions(scene, rng)):
            if q.type == "caption":
                captions.append(EvalItem(f"s{i}", image, q.question, (q.answer,), "caption"))
            else:
                pool.append(EvalItem(f"s{i}q{j}", image, q.question, (q.answer,), q.type))
    if len(pool) < num_questions:
        raise ValueError(
            f"{num_scenes} held-out scenes give only {len(pool)} questions; raise evaluate.num_scenes "
            f"to get evaluate.num_questions={num_questions}"
        )
    order = rng.permutation(len(pool))[:num_questions]
    return [pool[i] for i in sorted(order)], captions


def shapes_demo_pool(seed: int, num_scenes: int) -> list[Demo]:
    """k-shot demonstrations: (PNG, canonical caption) of scenes no evaluation query uses; keys `d{i}`."""
    rng = np.random.default_rng([seed, DEMO_POOL_STREAM])
    scenes = [shapes.sample_scene(rng) for _ in range(num_scenes)]
    return [Demo(f"d{i}", _png(scene), shapes.caption(scene)) for i, scene in enumerate(scenes)]


def shapes_demo_questions(seed: int, num_scenes: int) -> list[Demo]:
    """k-shot VQA demonstrations: the questions (not captions) about `shapes_demo_pool`'s scenes, answered;
    keys `d{i}q{j}`, image key `d{i}`."""
    rng = np.random.default_rng([seed, DEMO_POOL_STREAM])
    scenes = [shapes.sample_scene(rng) for _ in range(num_scenes)]
    question_rng = np.random.default_rng([seed, DEMO_POOL_STREAM, 1])
    demos: list[Demo] = []
    for i, scene in enumerate(scenes):
        image = _png(scene)
        for j, q in enumerate(shapes.questions(scene, question_rng)):
            if q.type != "caption":
                demos.append(Demo(f"d{i}q{j}", image, q.answer, question=q.question, image_key=f"d{i}"))
    return demos


def shapes_majority_baseline(train_seed: int, num_scenes: int = 1000) -> MajorityBaseline:
    rng = np.random.default_rng(train_seed)
    examples = []
    for _ in range(num_scenes):
        scene = shapes.sample_scene(rng)
        examples += [(q.type, q.answer) for q in shapes.questions(scene, rng) if q.type != "caption"]
    return fit_majority(examples, source=f"shapes training split (seed {train_seed}, {num_scenes} scenes)")
