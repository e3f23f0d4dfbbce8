"""The workflow's benchmarks as lists of items, how each is asked, and how its answers are scored.

| benchmark      | items                                   | prompt                         | metrics                     |
|----------------|-----------------------------------------|--------------------------------|-----------------------------|
| shapes-vqa     | held-out Shapes questions               | chat: `<image>\\n{question}`   | shapes-vqa/overall, /TYPE   |
| shapes-caption | one held-out Shapes scene per item      | chat: `<image>\\ndescribe ...` | shapes-caption/cider        |
| shapes-kshot   | the same scenes, pre-trained checkpoint | document, k demonstrations     | shapes-kshot/cider@K        |
| coco-caption   | COCO caption annotations + images       | chat: `<image>\\ndescribe ...` | coco-caption/cider          |
| vqav2          | VQAv2 questions + annotations + images  | chat: `<image>\\n{question}`   | vqav2/overall, /ANSWER_TYPE |

VQA scores: exact match after VQAv2 normalization for one reference (Shapes), the 10-answer leave-one-out
accuracy for VQAv2 (mm1.eval.vqa). Captions: CIDEr-D over the whole benchmark (mm1.eval.cider), so
checkpoints are comparable only on the same items, which every checkpoint gets.

Generation length: short answers (VQA) stop at ANSWER_MAX_NEW_TOKENS, captions at `evaluate.max_new_tokens`.
Shapes answers are one word and VQAv2's one to three; a rambling model would otherwise hold a whole batch
for the full caption budget, and an answer that long would not match anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mm1.config import EvaluateConfig
from mm1.eval.cider import cider_d
from mm1.eval.coco import read_coco_captions, read_vqav2
from mm1.eval.heldout import shapes_heldout
from mm1.eval.items import EvalItem
from mm1.eval.kshot import CAPTION_INSTRUCTION
from mm1.eval.vqa import score_vqa
from mm1.registry import BENCHMARKS, missing_benchmark_files

TaskKind = Literal["vqa", "caption", "kshot"]
ANSWER_MAX_NEW_TOKENS = 8


@dataclass(frozen=True)
class Benchmark:
    name: str  # the metric prefix
    kind: TaskKind
    items: list[EvalItem]
    max_new_tokens: int
    shots: tuple[int, ...] = ()  # k-shot only: the k values
    source: str = ""  # where the items came from, for results.json

    def task_key(self, item: EvalItem, shots: int | None = None) -> str:
        """Unique among all tasks one checkpoint answers."""
        return f"{self.name}@{shots}:{item.key}" if shots is not None else f"{self.name}:{item.key}"


def build_benchmarks(
    ev: EvaluateConfig, shapes: tuple[list[EvalItem], list[EvalItem]] | None = None
) -> list[Benchmark]:
    """The benchmarks `evaluate.benchmarks` names (mm1.registry.BENCHMARKS), in that order, with their items
    loaded.

    `shapes`: the held-out Shapes (questions, captions) if the caller already has them.
    """
    answer_tokens = min(ev.max_new_tokens, ANSWER_MAX_NEW_TOKENS)
    shapes_source = f"held-out Shapes scenes (seed {ev.seed}, {ev.num_scenes} scenes)"
    questions, captions = shapes or shapes_heldout(ev.num_scenes, ev.num_questions, ev.seed)
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
        if spec.kind == "kshot":
            shots = tuple(sorted(set(ev.kshot)))
            if not shots or min(shots) < 0:
                raise ValueError(f"evaluate.kshot must list k >= 0 for {name}, got {ev.kshot}")
        if name == "coco-caption":
            items = read_coco_captions(ev.coco_annotations, ev.coco_images)
            items = [EvalItem(i.key, i.image, CAPTION_INSTRUCTION, i.references, i.type) for i in items]
            source = ev.coco_annotations
        elif name == "vqav2":
            items = read_vqav2(ev.vqav2_questions, ev.vqav2_annotations, ev.vqav2_images)
            source = ev.vqav2_questions
        else:  # a Shapes benchmark: held-out questions, or held-out scenes to caption
            items, source = (questions if spec.kind == "vqa" else captions), shapes_source
        tokens = answer_tokens if spec.kind == "vqa" else ev.max_new_tokens
        out.append(Benchmark(name, spec.kind, items, tokens, shots, source))  # type: ignore[arg-type]
    if len({b.name for b in out}) != len(out):
        raise ValueError(f"evaluate.benchmarks lists a benchmark twice: {ev.benchmarks}")
    return out


def score(benchmark: Benchmark, predictions: dict[str, str]) -> dict[str, float]:
    """Metrics of one checkpoint on `benchmark`; `predictions` maps task keys (Benchmark.task_key) to answers.

    Every item must have been answered: a missing answer is an evaluation bug, not a wrong answer.
    """

    def answers(shots: int | None = None) -> dict[str, str]:
        keys = {item.key: benchmark.task_key(item, shots) for item in benchmark.items}
        missing = [k for k in keys.values() if k not in predictions]
        if missing:
            raise KeyError(f"{benchmark.name}: {len(missing)} item(s) were not answered, e.g. {missing[:3]}")
        return {item_key: predictions[task_key] for item_key, task_key in keys.items()}

    references = {item.key: list(item.references) for item in benchmark.items}
    if benchmark.kind == "vqa":
        single = {k: refs[0] if len(refs) == 1 else refs for k, refs in references.items()}
        types = {item.key: item.type for item in benchmark.items}
        metrics = score_vqa(answers(), single, types).as_metrics(benchmark.name)
        metrics.pop(f"{benchmark.name}/all", None)  # no answer types: overall says it all
        return metrics
    if benchmark.kind == "caption":
        return {f"{benchmark.name}/cider": cider_d(references, answers()).score}
    return {f"{benchmark.name}/cider@{k}": cider_d(references, answers(k)).score for k in benchmark.shots}


def headline_metrics(benchmark: Benchmark) -> list[str]:
    """The metric names that summarize `benchmark` (the per-type scores are left to the per-type table)."""
    if benchmark.kind == "vqa":
        return [f"{benchmark.name}/overall"]
    if benchmark.kind == "caption":
        return [f"{benchmark.name}/cider"]
    return [f"{benchmark.name}/cider@{k}" for k in benchmark.shots]
