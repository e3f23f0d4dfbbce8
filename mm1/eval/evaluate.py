"""The evaluate step: every candidate's checkpoints x the workflow's benchmarks, on Ray.

Generation runs in a Ray Data actor pool (`map_batches` with a class that loads the checkpoint once per
actor and answers a batch with one batched greedy `generate`), so it shows in the dashboard as a dataset per
checkpoint and scales with `evaluate.num_actors`. Checkpoints are evaluated concurrently.
Prompts use the SFT chat template (mm1.data.chat through the processor): evaluation sees exactly what SFT
taught and what serving will send.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mm1.config import Workflow
from mm1.data.chat import IMAGE
from mm1.eval.baselines import baseline_scores
from mm1.eval.cider import cider_d
from mm1.eval.heldout import HeldOutItem, shapes_heldout, shapes_majority_baseline
from mm1.eval.vqa import score_vqa


class CheckpointAnswerer:
    """A Ray Data actor: holds one checkpoint, answers batches of (image, prompt) greedily."""

    def __init__(self, checkpoint: str, max_new_tokens: int):
        import torch

        from mm1.model.loading import load_for_inference

        torch.set_num_threads(1)
        self.model, self.processor = load_for_inference(checkpoint)
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from mm1.model.loading import generate_answers

        chats = [
            ([{"role": "user", "content": f"{IMAGE}\n{prompt}"}], [bytes(image)])
            for image, prompt in zip(batch["image"], batch["prompt"], strict=True)
        ]
        answers = generate_answers(
            self.model, self.processor, chats, max_new_tokens=self.max_new_tokens, batch_size=len(chats)
        )
        return {"key": batch["key"], "prediction": np.array(answers, dtype=object)}


def answer_all(checkpoint: str, items: list[HeldOutItem], wf: Workflow) -> dict[str, str]:
    import ray.data

    rows = [{"key": it.key, "image": it.image, "prompt": it.prompt} for it in items]
    dataset = ray.data.from_items(rows).map_batches(
        CheckpointAnswerer,
        fn_constructor_kwargs={"checkpoint": checkpoint, "max_new_tokens": wf.evaluate.max_new_tokens},
        batch_size=wf.evaluate.batch_size,
        concurrency=wf.evaluate.num_actors,
        num_cpus=1,
    )
    return {row["key"]: row["prediction"] for row in dataset.iter_rows()}


def _checkpoints_to_evaluate(wf: Workflow, entry: dict[str, Any]) -> list[dict[str, Any]]:
    checkpoints = entry["checkpoints"]
    return checkpoints if wf.evaluate.checkpoints == "all" else checkpoints[-1:]


def evaluate_candidates(
    wf: Workflow,
    trained: dict[str, dict[str, Any]],
    pretrained: dict[str, dict[str, Any]],
    out_dir: Path,
    log=print,
) -> dict[str, Any]:
    """Scores every (candidate, checkpoint); returns {"outputs": ..., "headline": ...} for the step manifest."""
    unsupported = [b for b in wf.evaluate.benchmarks if b not in ("shapes-vqa", "shapes-caption")]
    if unsupported:
        log(f"[evaluate] not yet implemented, skipped: {', '.join(unsupported)}")
    questions, captions = shapes_heldout(wf.evaluate.num_scenes, wf.evaluate.num_questions, wf.evaluate.seed)
    items: list[HeldOutItem] = []
    if "shapes-vqa" in wf.evaluate.benchmarks:
        items += questions
    if "shapes-caption" in wf.evaluate.benchmarks:
        items += captions
    baseline = shapes_majority_baseline(wf.data.shapes.seed)
    references = {q.key: q.answer for q in questions}
    types = {q.key: q.type for q in questions}
    baseline_result = baseline_scores(baseline, references, types)
    stage = "sft" if wf.sft.enabled else "pretrain"
    jobs = [
        (name, ckpt)
        for name, entry in sorted(trained.items())
        for ckpt in _checkpoints_to_evaluate(wf, entry)
    ]
    log(f"[evaluate] {len(jobs)} checkpoint(s) x {len(items)} prompts ({len(questions)} questions)")

    def run(job: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        name, ckpt = job
        predictions = answer_all(ckpt["uri"], items, wf)
        metrics: dict[str, float] = {}
        if "shapes-vqa" in wf.evaluate.benchmarks:
            vqa = score_vqa({k: predictions[k] for k in references}, references, types)
            metrics |= vqa.as_metrics("shapes-vqa")
        if "shapes-caption" in wf.evaluate.benchmarks:
            cider = cider_d(
                {c.key: [c.answer] for c in captions}, {c.key: predictions[c.key] for c in captions}
            )
            metrics["shapes-caption/cider"] = cider.score
        safe = name.replace("/", "_")
        with open(out_dir / f"predictions-{safe}-{ckpt['step']}.jsonl", "w") as f:
            for it in items:
                f.write(
                    json.dumps(
                        {
                            "key": it.key,
                            "type": it.type,
                            "prompt": it.prompt,
                            "answer": it.answer,
                            "prediction": predictions[it.key],
                        }
                    )
                    + "\n"
                )
        return {
            "candidate": name,
            "checkpoint": ckpt["uri"],
            "step": ckpt["step"],
            "stage": stage,
            "metrics": metrics,
        }

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        results = list(pool.map(run, jobs))
    baseline_metrics = baseline_result.as_metrics("shapes-vqa")
    summary = {
        "results": results,
        "baseline": {"source": baseline.source, "answers": baseline.answers, "metrics": baseline_metrics},
        "num_questions": len(questions),
        "num_captions": len(captions),
        "pretrained": {name: entry["checkpoints"][-1]["uri"] for name, entry in pretrained.items()},
    }
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    _print_table(results, baseline_metrics, log)
    metric = wf.select.metric
    best = max((r["metrics"].get(metric, float("nan")) for r in results), default=float("nan"))
    return {"outputs": summary, "headline": {f"best {metric}": best}}


def _print_table(results: list[dict[str, Any]], baseline: dict[str, float], log) -> None:
    keys = sorted({k for r in results for k in r["metrics"]})
    width = max(len(k) for k in keys) if keys else 10
    header = (
        f"{'metric':<{width}}  " + "  ".join(f"{r['candidate'][:24]:>24}" for r in results) + "  majority"
    )
    log(header)
    for key in keys:
        cells = "  ".join(f"{r['metrics'].get(key, float('nan')):>24.3f}" for r in results)
        base = baseline.get(key)
        log(f"{key:<{width}}  {cells}  {base:>8.3f}" if base is not None else f"{key:<{width}}  {cells}")
