"""The held-out Shapes benchmark: scenes from a seed never used for training, their questions and captions.

The training corpus is generated from `data.shapes.seed` (0 by default); evaluation uses `evaluate.seed`, and
the config's default keeps them apart. The majority baselines are fitted on a training split generated with
the training seed, never on the evaluated questions.

Kind splits (issue 18): the main questions (one per type per scene, `mm1.data.shapes.questions`, then
`num_questions` drawn from them) ask `count_kind` and `exists` about a present kind half the time, far more
often than a uniformly drawn kind would be (about 13% of the 18 colour-shape pairs are in a scene), which can
hide a model that does not count or find the kind asked about. So every held-out scene also gets one question
of each split type (`SPLIT_TYPES`), each about its own kind (`mm1.data.shapes.kind_questions`):
| type                 | kind asked about                                       | answers        |
|----------------------|--------------------------------------------------------|----------------|
| `count_kind.present` | uniform over the distinct kinds in the scene           | `1`..`4`       |
| `count_kind.uniform` | uniform over all 18 colour-shape pairs (mostly absent) | mostly `0`     |
| `exists.present`     | uniform over the distinct kinds in the scene           | `yes`          |
| `exists.uniform`     | uniform over all 18 colour-shape pairs (mostly absent) | mostly `no`    |
`num_scenes` questions per split (keys `s{scene}-{type}`), drawn from their own stream
(`default_rng([seed, SPLIT_STREAM])`), so the main questions are the same with or without them. Split types
are scored apart (mm1.eval.items): `count_kind`, `exists` and `overall` keep their definitions over the main
questions. Their majority baselines are fitted the same way on the training split's scenes. `exists.present`'s
majority answer is `yes` on every question (baseline 1.0): read it with `exists.uniform`, as a pair.

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
from mm1.eval.items import EvalItem, split_type
from mm1.eval.kshot import Demo

DEMO_POOL_STREAM = 1  # default_rng([evaluate.seed, DEMO_POOL_STREAM]) renders the demonstration pool
SPLIT_STREAM = 2  # default_rng([seed, SPLIT_STREAM]) draws the kinds the split questions ask about
SPLIT_BASES = ("count_kind", "exists")  # the types with kind splits, as `shapes.kind_questions` returns them
SPLIT_TYPES = tuple(split_type(base, draw) for base in SPLIT_BASES for draw in shapes.KIND_DRAWS)


def kind_split_questions(scene: shapes.Scene, rng: np.random.Generator) -> list[shapes.Question]:
    """One question of each split type (`SPLIT_TYPES`) about `scene`, typed `BASE.DRAW`, in that order."""
    out = []
    for draw in shapes.KIND_DRAWS:
        for q in shapes.kind_questions(scene, rng, draw):
            out.append(shapes.Question(split_type(q.type, draw), q.question, q.answer))
    return sorted(out, key=lambda q: SPLIT_TYPES.index(q.type))


def _png(scene: shapes.Scene) -> bytes:
    buffer = io.BytesIO()
    shapes.render(scene).save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_heldout(num_scenes: int, num_questions: int, seed: int) -> tuple[list[EvalItem], list[EvalItem]]:
    """(questions, captions): `num_questions` questions drawn evenly from all scenes, then `num_scenes`
    questions of each split type (one per scene, see the module docstring); one caption per scene.

    Keys: `s{scene}q{question}` for questions, `s{scene}-{type}` for split questions, `s{scene}` for captions.
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
    split_rng = np.random.default_rng([seed, SPLIT_STREAM])
    splits = [
        EvalItem(f"s{i}-{q.type}", image, q.question, (q.answer,), q.type)
        for i, (scene, image) in enumerate(zip(scenes, images, strict=True))
        for q in kind_split_questions(scene, split_rng)
    ]
    return [pool[i] for i in sorted(order)] + splits, captions


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
    """Majority answers of a training split: `num_scenes` scenes drawn with the training seed, one question per
    type (`shapes.questions`, as the corpus generator asks them) and one per split type, its kinds drawn as
    the held-out split questions draw theirs (from the stream `[train_seed, SPLIT_STREAM]`)."""
    rng = np.random.default_rng(train_seed)
    split_rng = np.random.default_rng([train_seed, SPLIT_STREAM])
    examples = []
    for _ in range(num_scenes):
        scene = shapes.sample_scene(rng)
        examples += [(q.type, q.answer) for q in shapes.questions(scene, rng) if q.type != "caption"]
        examples += [(q.type, q.answer) for q in kind_split_questions(scene, split_rng)]
    return fit_majority(
        examples,
        source=(
            f"shapes training split (seed {train_seed}, {num_scenes} scenes; {', '.join(SPLIT_TYPES)}: "
            "one question each per scene, kinds drawn as in the held-out splits)"
        ),
    )
