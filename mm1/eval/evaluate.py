"""The evaluate step: every candidate's checkpoints x the workflow's benchmarks, on Ray.

Each checkpoint to run is one job: its tasks (prompts) go through a Ray Data actor pool
(mm1.eval.answerer), and jobs run concurrently, as many at a time as the cluster's CPUs hold their actors.
Chat prompts use the SFT template (mm1.data.chat through the processor): evaluation sees what SFT taught
and what serving will send. Benchmarks, prompts and scoring: mm1.eval.benchmarks.

k-shot benchmarks (`shapes-kshot`, `shapes-vqa-kshot`, `coco-caption-kshot`, `vqav2-kshot`) are for
*pre-trained* checkpoints, as MM1 reports few-shot results for pre-trained models and zero-shot ones for SFT
models: document prompts (`<s><image>caption ... <image>`, or `<image>question: Q answer: A ...`,
mm1.eval.kshot) with demonstrations from each benchmark's held-out pool (mm1.eval.benchmarks), scored per k.
Their metrics (`shapes-kshot/cider@K`, `vqav2-kshot/overall@K`, ...) are attached to the candidate's result
rows, so `select` can rank by them like any metric and every row has the same keys:
- SFT disabled: the rows are the pre-trained checkpoints, each scored k-shot itself (one model load per
  checkpoint does both its chat and k-shot prompts);
- SFT enabled: each SFT row carries the k-shot scores of its candidate's last pre-trained checkpoint (the one
  SFT started from), named in the row's `kshot` record; the SFT checkpoints are not prompted k-shot.

Outputs (results.json and the step manifest):
    results:   [{candidate, checkpoint, step, stage, metrics, [kshot: {checkpoint, step, stage,
                 prompt_style}], [prompt_style]}]   # prompt_style: only on pre-trained rows with k-shot
    baseline:  {source, answers, metrics}          # Shapes majority answers, keyed like shapes-vqa metrics
    num_questions, num_captions, pretrained: {candidate: last pre-trained checkpoint URI},
    benchmarks: {name: {kind, items, max_new_tokens, source, [questions: {METRIC: count}] (VQA),
                [shots, demo_pool, pool_source]}},
    kshot: {shots, prompt_style, seed, scored, demo_pools: {name: size}} | null, seconds
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm1.config import EvaluateConfig, SelectConfig, Workflow
from mm1.eval.answerer import Answer, Task, answer_tasks
from mm1.eval.baselines import MajorityBaseline, baseline_scores
from mm1.eval.benchmarks import (
    ANSWER_MAX_NEW_TOKENS,
    Benchmark,
    build_benchmarks,
    headline_base,
    headline_metrics,
    question_counts,
    score,
)
from mm1.eval.heldout import shapes_heldout, shapes_majority_baseline
from mm1.eval.items import EvalItem
from mm1.eval.select import CandidateResult, rank_results
from mm1.eval.table import kshot_table, metric_table, per_type_table

KSHOT_STYLE = "document"
Checkpoint = dict[str, Any]  # {"step": int, "uri": str} as the train steps record them


@dataclass(frozen=True)
class EvalSpec:
    """What the evaluate step reads: its own sections, the Shapes seed its majority baseline is fitted with,
    and, from its input, the stage the trained runs finished and whether they trained on GPUs."""

    evaluate: EvaluateConfig
    select: SelectConfig
    shapes_seed: int
    stage: str = "sft"  # sft | pretrain (SFT disabled)
    use_gpu: bool = False  # checkpoints are evaluated where they were trained

    @classmethod
    def of(cls, wf: Workflow) -> EvalSpec:
        """From a whole workflow (what its training steps would hand the evaluate step)."""
        last = wf.sft if wf.sft.enabled else wf.pretrain
        stage = "sft" if wf.sft.enabled else "pretrain"
        return cls(wf.evaluate, wf.select, wf.data.shapes.seed, stage, last.use_gpu)


@dataclass
class Job:
    """One checkpoint to prompt: its tasks, and the benchmarks they come from."""

    uri: str
    label: str  # names its predictions file
    tasks: list[Task] = field(default_factory=list)
    benchmarks: list[Benchmark] = field(default_factory=list)

    def add(self, benchmark: Benchmark) -> None:
        if benchmark not in self.benchmarks:
            self.benchmarks.append(benchmark)
            self.tasks += _tasks(benchmark)


@dataclass
class Plan:
    rows: list[tuple[str, Checkpoint]]  # (candidate, checkpoint) per result row
    jobs: dict[str, Job]  # checkpoint URI -> what to prompt it with
    kshot_source: dict[str, Checkpoint]  # row checkpoint URI -> the pre-trained checkpoint scored k-shot


def _checkpoints_to_evaluate(spec: EvalSpec, entry: dict[str, Any]) -> list[Checkpoint]:
    checkpoints = entry["checkpoints"]
    return checkpoints if spec.evaluate.checkpoints == "all" else checkpoints[-1:]


def _tasks(benchmark: Benchmark) -> list[Task]:
    limit = benchmark.max_new_tokens
    if benchmark.kshot:
        question = benchmark.kind == "vqa"  # a k-shot VQA prompt ends with the query's question
        return [
            Task(
                benchmark.task_key(it, k),
                it.image,
                it.prompt if question else "",
                shots=k,
                query=it.key,
                max_new_tokens=limit,
                pool=benchmark.name,
                task=benchmark.kind,
            )
            for k in benchmark.shots
            for it in benchmark.items
        ]
    return [Task(benchmark.task_key(it), it.image, it.prompt, max_new_tokens=limit) for it in benchmark.items]


def plan_jobs(
    spec: EvalSpec,
    trained: dict[str, dict[str, Any]],
    pretrained: dict[str, dict[str, Any]],
    benchmarks: list[Benchmark],
) -> Plan:
    """Which checkpoint answers which benchmark; one job per checkpoint URI, so one model load each."""
    stage = spec.stage
    rows = [
        (name, ckpt)
        for name, entry in sorted(trained.items())
        for ckpt in _checkpoints_to_evaluate(spec, entry)
    ]
    jobs: dict[str, Job] = {}
    kshot_source: dict[str, Checkpoint] = {}

    def job(candidate: str, job_stage: str, ckpt: Checkpoint) -> Job:
        label = f"{candidate.replace('/', '_')}-{job_stage}-{ckpt['step']}"
        return jobs.setdefault(ckpt["uri"], Job(ckpt["uri"], label))

    for name, ckpt in rows:
        for bench in benchmarks:
            if not bench.kshot:
                job(name, stage, ckpt).add(bench)
                continue
            if stage == "pretrain":
                source = ckpt
            elif pretrained.get(name, {}).get("checkpoints"):
                source = pretrained[name]["checkpoints"][-1]  # the checkpoint SFT started from
            else:
                raise KeyError(
                    f"{bench.name} needs candidate {name!r}'s pre-trained checkpoints; none were given"
                )
            kshot_source[ckpt["uri"]] = source
            job(name, "pretrain", source).add(bench)
    return Plan(rows, jobs, kshot_source)


def _write_predictions(path: Path, job: Job, answers: dict[str, Answer]) -> None:
    """One JSON line per task: what was asked, the references, the answer (and k-shot demonstrations)."""
    with open(path, "w") as f:
        for bench in job.benchmarks:
            for shots in bench.shots or (None,):
                for it in bench.items:
                    answer = answers[bench.task_key(it, shots)]
                    row = {
                        "benchmark": bench.name,
                        "shots": shots,
                        "key": it.key,
                        "type": it.type,
                        # k-shot: the query's text after its image (a VQA question; nothing for captions)
                        "prompt": it.prompt if shots is None or bench.kind == "vqa" else "",
                        "references": list(it.references),
                        "prediction": answer.prediction,
                    }
                    if shots is not None:
                        row["demos"] = list(answer.demos)
                    f.write(json.dumps(row) + "\n")


def run_jobs(spec: EvalSpec, jobs: list[Job], out_dir: Path, log=print) -> dict[str, dict[str, str]]:
    """checkpoint URI -> {task key: prediction}; jobs run side by side as far as the cluster's CPUs go."""
    import ray

    ev = spec.evaluate
    use_gpu = spec.use_gpu

    def run(job: Job) -> dict[str, str]:
        started = time.perf_counter()
        answers = answer_tasks(
            job.uri,
            job.tasks,
            batch_size=ev.batch_size,
            num_actors=ev.num_actors,
            demo_pools={b.name: list(b.pool) for b in job.benchmarks if b.kshot},
            kshot_seed=ev.seed,
            use_gpu=use_gpu,
        )
        _write_predictions(out_dir / f"predictions-{job.label}.jsonl", job, answers)
        log(f"[evaluate] {job.label}: {len(job.tasks)} prompts in {time.perf_counter() - started:.1f}s")
        return {key: answer.prediction for key, answer in answers.items()}

    # Each job holds num_actors CPUs (GPUs); more jobs at once than the cluster holds would only queue.
    resources = ray.cluster_resources() if ray.is_initialized() else {}
    slots = int(resources.get("GPU" if use_gpu else "CPU", 1))
    workers = max(1, min(len(jobs), slots // max(1, ev.num_actors)))
    ordered = sorted(jobs, key=lambda j: (-len(j.tasks), j.label))  # longest first
    with ThreadPoolExecutor(max_workers=workers) as executor:
        return dict(zip((j.uri for j in ordered), executor.map(run, ordered), strict=True))


def score_rows(
    plan: Plan, benchmarks: list[Benchmark], stage: str, predictions: dict[str, dict[str, str]]
) -> list[dict[str, Any]]:
    results = []
    for name, ckpt in plan.rows:
        result: dict[str, Any] = {
            "candidate": name,
            "checkpoint": ckpt["uri"],
            "step": ckpt["step"],
            "stage": stage,
        }
        metrics: dict[str, float] = {}
        for bench in benchmarks:
            if not bench.kshot:
                metrics |= score(bench, predictions[ckpt["uri"]])
                continue
            source = plan.kshot_source[ckpt["uri"]]
            metrics |= score(bench, predictions[source["uri"]])
            result["kshot"] = {
                "checkpoint": source["uri"],
                "step": source["step"],
                "stage": "pretrain",
                "prompt_style": KSHOT_STYLE,
            }
            if stage == "pretrain":
                result["prompt_style"] = KSHOT_STYLE  # the report lists k-shot prompt styles by stage
        results.append(result | {"metrics": metrics})
    return results


def evaluate_candidates(
    spec: EvalSpec,
    trained: dict[str, dict[str, Any]],
    pretrained: dict[str, dict[str, Any]],
    out_dir: Path,
    log=print,
) -> dict[str, Any]:
    """Scores every (candidate, checkpoint); returns {"outputs": ..., "headline": ...} for the step manifest."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev, stage = spec.evaluate, spec.stage
    questions, captions = shapes_heldout(ev.num_scenes, ev.num_questions, ev.seed)
    benchmarks = build_benchmarks(ev, (questions, captions))
    kshot = [b for b in benchmarks if b.kshot]
    plan = plan_jobs(spec, trained, pretrained, benchmarks)

    listed = ", ".join(
        f"{b.name} {len(b.items)}" + (f" x k={list(b.shots)}" if b.shots else "") for b in benchmarks
    )
    total = sum(len(j.tasks) for j in plan.jobs.values())
    log(
        f"[evaluate] {len(plan.rows)} checkpoint(s) to score, {len(plan.jobs)} to prompt, {total} prompts: {listed}"
    )
    log(
        f"[evaluate] answers stop at {min(ev.max_new_tokens, ANSWER_MAX_NEW_TOKENS)} new tokens, captions at {ev.max_new_tokens}"
    )
    predictions = run_jobs(spec, list(plan.jobs.values()), out_dir, log)
    results = score_rows(plan, benchmarks, stage, predictions)

    baseline = shapes_majority_baseline(spec.shapes_seed)
    baseline_metrics = _baseline_metrics(baseline, questions)
    summary = {
        "results": results,
        "baseline": {"source": baseline.source, "answers": baseline.answers, "metrics": baseline_metrics},
        "num_questions": len(questions),
        "num_captions": len(captions),
        "pretrained": {name: entry["checkpoints"][-1]["uri"] for name, entry in pretrained.items()},
        "benchmarks": {b.name: _describe(b) for b in benchmarks},
        "kshot": None
        if not kshot
        else {
            "shots": list(kshot[0].shots),
            "prompt_style": KSHOT_STYLE,
            "demo_pools": {b.name: len(b.pool) for b in kshot},
            "seed": ev.seed,
            "scored": "each pre-trained row itself"
            if stage == "pretrain"
            else "each candidate's last pre-trained checkpoint",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    print_tables(results, baseline_metrics, benchmarks, spec.select.metric, spec.select.mode, log)
    metric = spec.select.metric
    values = [r["metrics"].get(metric, math.nan) for r in results]
    finite = [v for v in values if not math.isnan(v)]
    best = (min if spec.select.mode == "min" else max)(finite) if finite else math.nan
    return {"outputs": summary, "headline": {f"best {metric}": best}}


def _baseline_metrics(baseline: MajorityBaseline, questions: list[EvalItem]) -> dict[str, float]:
    references = {q.key: q.answer for q in questions}
    return baseline_scores(baseline, references, {q.key: q.type for q in questions}).as_metrics("shapes-vqa")


def _describe(b: Benchmark) -> dict[str, Any]:
    described = {
        "kind": b.kind,
        "items": len(b.items),
        "max_new_tokens": b.max_new_tokens,
        "source": b.source,
    }
    if b.kind == "vqa":  # per metric, e.g. shapes-vqa/count_kind.uniform (a split, mm1.eval.heldout)
        described["questions"] = question_counts(b)
    if b.kshot:
        described |= {"shots": list(b.shots), "demo_pool": len(b.pool), "pool_source": b.pool_source}
    return described


def print_tables(
    results: list[dict[str, Any]],
    baselines: dict[str, float],
    benchmarks: list[Benchmark],
    metric: str,
    mode: str,
    log=print,
) -> None:
    """One metric table per benchmark (baseline row first; a k-shot benchmark's columns are k=0, k=4, ...),
    then per-type tables of the best checkpoint."""
    for bench in benchmarks:
        if bench.kshot:
            log(kshot_table(results, headline_base(bench), bench.shots, title=bench.name).to_text())
        else:
            log(metric_table(results, headline_metrics(bench), baselines, title=f"{bench.name}").to_text())
    parsed = [CandidateResult.from_dict(r) for r in results]
    try:
        best = rank_results(parsed, metric, mode)[0]  # type: ignore[arg-type]
    except (KeyError, ValueError) as exc:
        log(f"[evaluate] no per-type table: cannot rank by {metric!r} ({exc})")
        return
    if math.isnan(best.metrics[metric]):
        return
    for bench in benchmarks:
        if (
            bench.kind == "vqa"
            and not bench.kshot
            and any(m.startswith(f"{bench.name}/") and m != f"{bench.name}/overall" for m in best.metrics)
        ):
            title = (
                f"{bench.name} per type: {best.candidate} ({best.stage} step {best.step}), best by {metric}"
            )
            table = per_type_table(
                best.metrics, baselines, bench.name, title=title, counts=question_counts(bench)
            )
            log(table.to_text())
