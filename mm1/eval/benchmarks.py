"""The workflow's benchmarks as lists of items, how each is asked, and how its answers are scored.

| benchmark          | items                                  | prompt                        | metrics            |
|--------------------|----------------------------------------|-------------------------------|--------------------|
| shapes-vqa         | held-out Shapes questions + splits     | chat: `<image>\\n{question}`  | /overall, /TYPE    |
| shapes-caption     | one held-out Shapes scene per item     | chat: `<image>\\ndescribe ...`| /cider             |
| shapes-kshot       | the same scenes                        | document, k demonstrations    | /cider@K           |
| shapes-vqa-kshot   | the same questions                     | document, k demonstrations    | /overall@K, /TYPE@K|
| coco-caption       | COCO caption annotations + images      | chat: `<image>\\ndescribe ...`| /cider             |
| coco-caption-kshot | the same, less the demonstration pool  | document, k demonstrations    | /cider@K           |
| vqav2              | VQAv2 questions + annotations + images | chat: `<image>\\n{question}`  | /overall, /TYPE    |
| vqav2-kshot        | the same, less the demonstration pool  | document, k demonstrations    | /overall@K, /TYPE@K|
(metrics are BENCHMARK/METRIC: `shapes-vqa/overall`, `coco-caption-kshot/cider@4`, `vqav2-kshot/yes_no@8`)

Shapes VQA also asks `count_kind` and `exists` split questions, one per held-out scene and split
(mm1.eval.heldout): `shapes-vqa/count_kind.present`, `shapes-vqa/count_kind.uniform`, `shapes-vqa/exists.present`,
`shapes-vqa/exists.uniform` (and `...@K` k-shot). They are scored apart: `overall`, `count_kind` and `exists`
are over the main `evaluate.num_questions` questions only (mm1.eval.items.score_questions).

k-shot benchmarks (mm1.registry `kshot=True`) are asked once per k in `evaluate.kshot` with k demonstrations
(mm1.eval.kshot: `<image>caption ...<image>` for captions, `<image>question: Q answer: A ... <image>question:
Q answer:` for VQA); every metric gets the suffix `@K`. Their demonstrations come from a pool no query uses:
- Shapes: `evaluate.kshot_pool` (at least 4 x max k) scenes rendered from a stream of `evaluate.seed` that
  never yields an evaluated scene (mm1.eval.heldout);
- COCO / VQAv2: `evaluate.kshot_pool` images held out of the given file, drawn with `evaluate.seed` from its
  sorted image paths (`split_demo_pool`). Every item about a held-out image is a demonstration (a COCO image
  shows its first caption, a VQAv2 question its most frequent human answer) and never a query; the other
  items are the queries. So the demonstrations never show a query image, and a query gets the same ones in
  every run and for every checkpoint. `coco-caption` and `vqav2` (zero-shot) still ask every item.

VQA scores: exact match after VQAv2 normalization for one reference (Shapes), the 10-answer leave-one-out
accuracy for VQAv2 (mm1.eval.vqa). Captions: CIDEr-D over the whole benchmark (mm1.eval.cider), so
checkpoints are comparable only on the same items, which every checkpoint gets.

Generation length: short answers (VQA) stop at ANSWER_MAX_NEW_TOKENS, captions at `evaluate.max_new_tokens`.
Shapes answers are one word and VQAv2's one to three; a rambling model would otherwise hold a whole batch
for the full caption budget, and an answer that long would not match anyway.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mm1.config import EvaluateConfig
from mm1.eval.cider import cider_d
from mm1.eval.coco import read_coco_captions, read_vqav2
from mm1.eval.heldout import shapes_demo_pool, shapes_demo_questions, shapes_heldout
from mm1.eval.items import EvalItem, is_split, score_questions
from mm1.eval.kshot import CAPTION_INSTRUCTION, Demo
from mm1.registry import BENCHMARKS, missing_benchmark_files

TaskKind = Literal["vqa", "caption"]
ANSWER_MAX_NEW_TOKENS = 8
MIN_SHAPES_POOL_PER_SHOT = 4  # a Shapes demonstration pool holds at least 4 x max k scenes


@dataclass(frozen=True)
class Benchmark:
    name: str  # the metric prefix
    kind: TaskKind
    items: list[EvalItem]
    max_new_tokens: int
    shots: tuple[int, ...] = ()  # k-shot only: the k values (empty: a zero-shot chat benchmark)
    source: str = ""  # where the items came from, for results.json
    pool: tuple[Demo, ...] = ()  # k-shot only: the demonstrations, none about a query's image
    pool_source: str = ""  # where the demonstrations came from, for results.json

    @property
    def kshot(self) -> bool:
        return bool(self.shots)

    def task_key(self, item: EvalItem, shots: int | None = None) -> str:
        """Unique among all tasks one checkpoint answers."""
        return f"{self.name}@{shots}:{item.key}" if shots is not None else f"{self.name}:{item.key}"


def split_demo_pool(
    items: Sequence[EvalItem], pool_images: int, seed: int, name: str
) -> tuple[list[EvalItem], list[EvalItem]]:
    """(queries, demonstration items): `pool_images` images drawn with `seed` from the items' sorted image
    paths; every item about one of them is a demonstration, every other item a query."""
    images = sorted({str(it.image) for it in items})
    if not 1 <= pool_images < len(images):
        raise ValueError(
            f"{name}: evaluate.kshot_pool={pool_images} must hold between 1 and {len(images) - 1} of the "
            f"{len(images)} images of its file, leaving the others as queries"
        )
    held = set(random.Random(f"{seed}:{name}:demo-pool").sample(images, pool_images))
    queries = [it for it in items if str(it.image) not in held]
    demos = [it for it in items if str(it.image) in held]
    return queries, demos


def _majority_answer(references: Sequence[str]) -> str:
    return Counter(references).most_common(1)[0][0]  # ties: the first given, as Counter keeps order


def _as_demo(item: EvalItem, kind: str) -> Demo:
    if kind == "vqa":  # several questions per image: the image path says which image a demo shows
        return Demo(item.key, item.image, _majority_answer(item.references), item.prompt, str(item.image))
    return Demo(item.key, item.image, item.references[0], image_key=str(item.image))


def build_benchmarks(
    ev: EvaluateConfig, shapes: tuple[list[EvalItem], list[EvalItem]] | None = None
) -> list[Benchmark]:
    """The benchmarks `evaluate.benchmarks` names (mm1.registry.BENCHMARKS), in that order, with their items
    (and k-shot demonstration pools) loaded.

    `shapes`: the held-out Shapes (questions, captions) if the caller already has them.
    """
    answer_tokens = min(ev.max_new_tokens, ANSWER_MAX_NEW_TOKENS)
    questions, captions = shapes or shapes_heldout(ev.num_scenes, ev.num_questions, ev.seed)
    shapes_source = f"held-out Shapes scenes (seed {ev.seed}, {ev.num_scenes} scenes)"
    split_counts = Counter(q.type for q in questions if is_split(q.type))
    vqa_source = shapes_source + (
        f"; {len(questions) - split_counts.total()} questions + split questions "
        + ", ".join(f"{t} {n}" for t, n in sorted(split_counts.items()))
        if split_counts
        else ""
    )
    read: dict[str, list[EvalItem]] = {}  # a file read once, whether zero-shot, k-shot or both ask it

    def items_of(data: str) -> tuple[list[EvalItem], str]:
        if data == "coco":
            if data not in read:
                items = read_coco_captions(ev.coco_annotations, ev.coco_images)
                read[data] = [
                    EvalItem(i.key, i.image, CAPTION_INSTRUCTION, i.references, i.type) for i in items
                ]
            return read[data], ev.coco_annotations
        if data == "vqav2":
            if data not in read:
                read[data] = read_vqav2(ev.vqav2_questions, ev.vqav2_annotations, ev.vqav2_images)
            return read[data], ev.vqav2_questions
        raise ValueError(f"unknown benchmark data {data!r}")

    out: list[Benchmark] = []
    for name in ev.benchmarks:
        spec = BENCHMARKS.get(name)
        if spec is None:
            raise ValueError(
                f"unknown benchmark {name!r} in evaluate.benchmarks; expected one of: {', '.join(BENCHMARKS)}"
            )
        lacking = missing_benchmark_files(name, ev)
        if lacking:
            raise ValueError(f"{name} is listed in evaluate.benchmarks but {', '.join(lacking)} is empty")
        shots: tuple[int, ...] = ()
        if spec.kshot:
            shots = tuple(sorted(set(ev.kshot)))
            if not shots or min(shots) < 0:
                raise ValueError(f"evaluate.kshot must list k >= 0 for {name}, got {ev.kshot}")
        pool: list[Demo] = []
        pool_source = ""
        if spec.data == "shapes":
            items, source = (questions, vqa_source) if spec.kind == "vqa" else (captions, shapes_source)
            if spec.kshot:
                scenes = max(ev.kshot_pool, MIN_SHAPES_POOL_PER_SHOT * max(shots))
                pool = (shapes_demo_questions if spec.kind == "vqa" else shapes_demo_pool)(ev.seed, scenes)
                pool_source = f"{scenes} Shapes scenes no query shows (seed {ev.seed})"
        else:
            items, source = items_of(spec.data)
            if spec.kshot:
                items, held = split_demo_pool(items, ev.kshot_pool, ev.seed, name)
                pool = [_as_demo(it, spec.kind) for it in held]
                pool_source = f"{ev.kshot_pool} images held out of {source} (seed {ev.seed}), never queried"
        if spec.kshot and len(pool) < max(shots):
            raise ValueError(
                f"{name}: the demonstration pool holds {len(pool)} demonstrations, fewer than k={max(shots)}; "
                "raise evaluate.kshot_pool"
            )
        tokens = answer_tokens if spec.kind == "vqa" else ev.max_new_tokens
        out.append(Benchmark(name, spec.kind, items, tokens, shots, source, tuple(pool), pool_source))  # type: ignore[arg-type]
    if len({b.name for b in out}) != len(out):
        raise ValueError(f"evaluate.benchmarks lists a benchmark twice: {ev.benchmarks}")
    return out


def score(benchmark: Benchmark, predictions: dict[str, str]) -> dict[str, float]:
    """Metrics of one checkpoint on `benchmark`; `predictions` maps task keys (Benchmark.task_key) to answers.

    Every item must have been answered: a missing answer is an evaluation bug, not a wrong answer.
    k-shot benchmarks: every metric once per k, named METRIC@K.
    """

    def answers(shots: int | None = None) -> dict[str, str]:
        keys = {item.key: benchmark.task_key(item, shots) for item in benchmark.items}
        missing = [k for k in keys.values() if k not in predictions]
        if missing:
            raise KeyError(f"{benchmark.name}: {len(missing)} item(s) were not answered, e.g. {missing[:3]}")
        return {item_key: predictions[task_key] for item_key, task_key in keys.items()}

    references = {item.key: list(item.references) for item in benchmark.items}

    def scored(shots: int | None) -> dict[str, float]:
        if benchmark.kind == "vqa":
            single = {k: refs[0] if len(refs) == 1 else refs for k, refs in references.items()}
            types = {item.key: item.type for item in benchmark.items}
            metrics = score_questions(answers(shots), single, types).as_metrics(benchmark.name)
            metrics.pop(f"{benchmark.name}/all", None)  # no answer types: overall says it all
            return metrics
        return {f"{benchmark.name}/cider": cider_d(references, answers(shots)).score}

    if not benchmark.kshot:
        return scored(None)
    return {f"{m}@{k}": v for k in benchmark.shots for m, v in scored(k).items()}


def question_counts(benchmark: Benchmark) -> dict[str, int]:
    """A VQA benchmark's number of questions per metric (BENCHMARK/TYPE, BENCHMARK/overall: the questions whose
    type is not a split); empty for a caption benchmark."""
    if benchmark.kind != "vqa":
        return {}
    types = Counter(item.type for item in benchmark.items)
    main = sum(n for t, n in types.items() if not is_split(t))
    return {f"{benchmark.name}/{t}": n for t, n in sorted(types.items())} | {
        f"{benchmark.name}/overall": main
    }


def headline_base(benchmark: Benchmark) -> str:
    """The metric that summarizes `benchmark`, without any @K: BENCHMARK/overall or BENCHMARK/cider."""
    return f"{benchmark.name}/{'overall' if benchmark.kind == 'vqa' else 'cider'}"


def headline_metrics(benchmark: Benchmark) -> list[str]:
    """The metric names that summarize `benchmark` (the per-type scores are left to the per-type table)."""
    base = headline_base(benchmark)
    return [f"{base}@{k}" for k in benchmark.shots] if benchmark.kshot else [base]
