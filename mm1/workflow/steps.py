"""The workflow's steps: ingest -> pretrain -> sft -> evaluate -> select -> deploy -> report.

Each step is a function of (config, upstream manifests) that writes only under its own folder. Heavy modules
are imported inside the steps so `mm1 validate` and `mm1 status` stay fast.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mm1 import storage
from mm1.workflow.fingerprint import stable_hash
from mm1.workflow.runner import Step, StepContext, StepResult
from mm1.workflow.sweep import Candidate, candidates

# Settings that do not change what a training run computes: changing them continues the same run.
_CONTINUABLE = ("steps", "checkpoint_every", "keep_checkpoints", "log_every", "max_failures")


def image_tokens_per_image(model_cfg: Any) -> int:
    from mm1.data.preprocess import crops_per_image

    return model_cfg.connector.num_tokens * crops_per_image(model_cfg.image_grid)


# ------------------------------------------------------------------------------------------------ ingest


INGEST_OUTPUTS = ("pretrain", "sft", "tokenizer", "stats.json")


def data_variants(wf: Any) -> dict[str, tuple[Any, list[str]]]:
    """The distinct `data` sections among the candidates (a sweep over data.* makes several): a key naming
    each (a hash of the section) -> (a workflow with it, the candidates that train on it)."""
    variants: dict[str, tuple[Any, list[str]]] = {}
    for cand in candidates(wf):
        key = "data-" + stable_hash(dataclasses.asdict(cand.workflow.data))[:10]
        variants.setdefault(key, (cand.workflow, []))[1].append(cand.name)
    return variants


def run_ingest(ctx: StepContext) -> StepResult:
    """One ingest per distinct data section; a single one writes the step's folder itself, several write a
    subfolder each. Outputs name locations in the run folder, so a training step on any node (or a later
    driver) reads them: {"datasets": {key: {pretrain, sft, tokenizer, stats.json}}, "candidates": {name: key}}."""
    from mm1.data.ingest import run_ingest as ingest

    variants = data_variants(ctx.wf)
    datasets: dict[str, dict[str, str]] = {}
    totals: dict[str, int] = {}
    for key, (wf, names) in variants.items():
        out, out_uri = (
            (ctx.out, ctx.out_uri) if len(variants) == 1 else (ctx.out / key, storage.join(ctx.out_uri, key))
        )
        if len(variants) > 1:
            ctx.log(f"[ingest] {key} for candidate(s) {', '.join(names)}")
        stats = ingest(wf, out, out_uri)
        datasets[key] = {name: storage.join(out_uri, name) for name in INGEST_OUTPUTS}
        for figure in ("records_kept", "records_dropped", "tokens", "images"):
            totals[figure] = totals.get(figure, 0) + stats.get(figure, 0)
    by_candidate = {name: key for key, (_, names) in variants.items() for name in names}
    headline = {"datasets": len(datasets), **totals} if len(datasets) > 1 else totals
    return StepResult(outputs={"datasets": datasets, "candidates": by_candidate}, headline=headline)


def candidate_dataset(ingest: dict[str, Any], candidate: str) -> tuple[str, dict[str, str]]:
    """(the dataset's key, its locations) a candidate trains on, from the ingest step's manifest."""
    key = ingest["outputs"]["candidates"][candidate]
    return key, ingest["outputs"]["datasets"][key]


# ------------------------------------------------------------------------------------------------ training


def concurrent_runs(candidates: int, cpus: float, cpus_per_run: float) -> int:
    """How many candidates train at once. One CPU stays free for Ray Data's read and pack tasks: trainers
    holding every CPU would starve their own input. A run that alone needs more still runs, one at a time."""
    per_run = max(cpus_per_run, 1e-9)
    return max(1, min(candidates, int(max(cpus - 1, per_run) // per_run)))


def should_materialize(mode: str, estimate_bytes: int, budget_bytes: float) -> bool:
    """`packing.materialize`: always, never, or (auto) when the estimate fits the budget."""
    return mode == "always" or (mode == "auto" and estimate_bytes <= budget_bytes)


def _lineage(ctx: StepContext, stage_name: str, cand: Candidate, parent: str) -> str:
    """Identity of a training run minus the settings a run can be continued under (e.g. more steps)."""
    wf = cand.workflow
    stage = {k: v for k, v in dataclasses.asdict(getattr(wf, stage_name)).items() if k not in _CONTINUABLE}
    model = dataclasses.asdict(wf.model)
    data = {"seq_len": wf.packing.seq_len, "max_images": wf.packing.max_images}
    return stable_hash({"stage": stage, "model": model, "data": data, "parent": parent})[:10]


def _train_candidates(
    ctx: StepContext, stage_name: str, parents: dict[str, dict[str, Any]] | None
) -> StepResult:
    import ray

    from mm1.data.loader import build_train_dataset, packed_bytes_estimate
    from mm1.data.preprocess import crops_per_image
    from mm1.train.launch import fit_stage

    ingest = ctx.upstream["ingest"]
    ray_storage = storage.join(ctx.out_uri, "ray")
    cands = candidates(ctx.wf)
    stage_cfg = getattr(ctx.wf, stage_name)
    cpus = ray.cluster_resources().get("CPU", 1)
    per_run = stage_cfg.num_workers * stage_cfg.cpus_per_worker
    concurrent = concurrent_runs(len(cands), cpus, per_run)
    ctx.log(f"[{stage_name}] {len(cands)} candidate(s), {concurrent} at a time")
    store_budget = ray.cluster_resources().get("object_store_memory", 0) / 4 / concurrent

    def train_one(cand: Candidate) -> tuple[str, dict[str, Any]]:
        wf = cand.workflow
        stage = getattr(wf, stage_name)
        parent_entry = (parents or {}).get(cand.name)
        data_key, data = candidate_dataset(ingest, cand.name)
        shard_dir, tokenizer = data[stage_name], data["tokenizer"]
        stats = json.loads(storage.read_text(data["stats.json"]))
        # A pre-training run descends from its data (the data section's hash), SFT from its pre-training run.
        parent_key = parent_entry["run_path"] if parent_entry else data_key
        run_name = f"{cand.name}-{_lineage(ctx, stage_name, cand, parent_key)}"
        dataset = build_train_dataset(
            shard_dir,
            tokenizer=tokenizer,
            image_size=wf.model.image_size,
            image_grid=wf.model.image_grid,
            image_tokens_per_image=image_tokens_per_image(wf.model),
            seq_len=wf.packing.seq_len,
            max_images=wf.packing.max_images,
            seed=stage.seed,
        )
        dataset.set_name(f"{wf.run_name}-{stage_name}-{cand.name}")  # how it reads in the Ray dashboard
        estimate = packed_bytes_estimate(
            stats.get(stage_name, {}).get("tokens", 0),
            stats.get("images", 0),
            seq_len=wf.packing.seq_len,
            image_size=wf.model.image_size,
            crops=crops_per_image(wf.model.image_grid),
        )
        materialized = should_materialize(wf.packing.materialize, estimate, store_budget)
        if materialized:
            dataset = dataset.materialize()  # packed once; every pass then reads the object store
        ctx.log(
            f"[{stage_name}:{cand.name}] packed rows {'materialized' if materialized else 'streamed'} "
            f"(estimate {estimate / 2**20:.0f} MiB, budget {store_budget / 2**20:.0f} MiB, "
            f"packing.materialize={wf.packing.materialize})"
        )
        metrics_path = ctx.out / "metrics" / f"{cand.name}.jsonl"
        # Rank 0 appends each step's row to a live file only where the driver can see it (a local run
        # folder); the driver writes the checkpoint's history there at the end either way.
        live_metrics = None if ctx.rundir.remote else str(metrics_path)
        outcome = fit_stage(
            stage_name=stage_name,
            stage=stage,
            label=f"{stage_name}:{cand.name}",
            run_name=run_name,
            storage_path=ray_storage,
            dataset=dataset,
            model_cfg=dataclasses.asdict(wf.model),
            tokenizer_dir=tokenizer,
            seq_len=wf.packing.seq_len,
            init_checkpoint=parent_entry["checkpoints"][-1]["uri"] if parent_entry else None,
            metrics_path=live_metrics,
            run=wf.run_name,
            candidate=cand.name,
        )
        if not outcome.checkpoints or outcome.checkpoints[-1]["step"] != stage.steps:
            raise RuntimeError(
                f"{stage_name} of candidate '{cand.name}' ended without a checkpoint at step {stage.steps} "
                f"(found: {[c['step'] for c in outcome.checkpoints]})"
            )
        # The checkpoint's history is authoritative: steps after the last checkpoint of a killed run are gone.
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in outcome.history))
        return cand.name, {
            "overrides": cand.overrides,
            "run_path": outcome.run_path,
            "checkpoints": outcome.checkpoints,
            "metrics": storage.join(ctx.out_uri, "metrics", metrics_path.name),
            "final_loss": outcome.history[-1]["loss"] if outcome.history else None,
            "mean_data_wait_fraction": _mean_tail(outcome.history, "data_wait_fraction"),
            "tokens_per_s": _mean_tail(outcome.history, "tokens_per_s"),
        }

    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        results = dict(pool.map(train_one, cands))
    best = min(
        results.values(), key=lambda r: r["final_loss"] if r["final_loss"] is not None else float("inf")
    )
    headline = {"candidates": len(results), "best_final_loss": best["final_loss"]}
    waits = [
        r["mean_data_wait_fraction"] for r in results.values() if r["mean_data_wait_fraction"] is not None
    ]
    if waits:
        headline["data_wait_fraction"] = max(waits)
    return StepResult(outputs={"candidates": results}, headline=headline)


def _mean_tail(history: list[dict[str, Any]], key: str) -> float | None:
    """Mean over the second half of the run (steady state, after warm-up and first-batch latency)."""
    values = [row[key] for row in history[len(history) // 2 :] if key in row]
    return sum(values) / len(values) if values else None


def run_pretrain(ctx: StepContext) -> StepResult:
    return _train_candidates(ctx, "pretrain", parents=None)


def run_sft(ctx: StepContext) -> StepResult:
    parents = ctx.upstream["pretrain"]["outputs"]["candidates"]
    if not ctx.wf.sft.enabled:
        ctx.log("[sft] disabled: the pre-trained checkpoints go on to evaluation")
        return StepResult(outputs={"candidates": parents}, headline={"skipped": "sft.enabled=false"})
    return _train_candidates(ctx, "sft", parents=parents)


# ------------------------------------------------------------------------------------------------ evaluation


def run_evaluate(ctx: StepContext) -> StepResult:
    from mm1.eval.evaluate import evaluate_candidates

    trained = ctx.upstream["sft"]["outputs"]["candidates"]
    pretrained = ctx.upstream["pretrain"]["outputs"]["candidates"]
    results = evaluate_candidates(ctx.wf, trained, pretrained, ctx.out, log=ctx.log)
    return StepResult(outputs=results["outputs"], headline=results["headline"])


def run_select(ctx: StepContext) -> StepResult:
    from mm1.eval.select import select_winner

    evaluation = ctx.upstream["evaluate"]["outputs"]
    from mm1 import metrics

    for result in evaluation["results"]:
        for name, value in result["metrics"].items():
            if value is not None:
                metrics.eval_score(ctx.wf.name, result["candidate"], name, value)
    winner = select_winner(evaluation["results"], ctx.wf.select.metric, ctx.wf.select.mode, out_dir=ctx.out)
    record = winner.to_dict()
    margin = record["margin_over_other_candidate"]
    ctx.log(
        f"[select] winner {record['candidate']} step {record['step']}: {record['metric']} = {record['value']:.4f}"
        + (f" (ahead of the next candidate by {margin:.4f})" if margin is not None else "")
    )
    headline = {"winner": record["candidate"], record["metric"]: record["value"]}
    return StepResult(outputs={"winner": record}, headline=headline)


def run_deploy(ctx: StepContext) -> StepResult:
    winner = ctx.upstream["select"]["outputs"]["winner"]
    if ctx.wf.cluster.backend == "k8s" and ctx.wf.deploy.enabled:
        # On Kubernetes the winner is served by a RayService of its own, outliving this job's cluster.
        from mm1.k8s.submit import apply_service

        url = apply_service(ctx.wf, winner["checkpoint"])
        return StepResult(
            outputs={"url": url, "model": ctx.wf.deploy.model_name or ctx.wf.name}, headline={"endpoint": url}
        )
    from services.deploy import deploy_winner

    endpoint = deploy_winner(ctx.wf, winner, ctx.out, log=ctx.log)
    return StepResult(outputs=endpoint, headline={"endpoint": endpoint.get("url", "")})


def build_run_summary(ctx: StepContext) -> dict[str, Any]:
    """The report's input (schema in mm1.eval.report) from the upstream manifests."""
    up = ctx.upstream
    pretrained = up["pretrain"]["outputs"]["candidates"]
    trained = up["sft"]["outputs"]["candidates"]
    evaluation = up["evaluate"]["outputs"]
    candidates_ = []
    for name, entry in pretrained.items():
        files = [entry["metrics"]]
        if ctx.wf.sft.enabled and name in trained:
            files.append(trained[name]["metrics"])
        candidates_.append({"name": name, "overrides": entry["overrides"], "metrics_files": files})
    return {
        "name": ctx.wf.run_name,
        "description": ctx.wf.description,
        "candidates": candidates_,
        "eval": evaluation["results"],
        "baselines": evaluation["baseline"]["metrics"],
        "baseline_source": evaluation["baseline"]["source"],
        "selection": {"metric": ctx.wf.select.metric, "mode": ctx.wf.select.mode},
        "winner": up["select"]["outputs"]["winner"],
        "sweep_keys": list(ctx.wf.sweep),
        "step_times": {name: m.get("duration_s") for name, m in up.items()},
    }


def run_report(ctx: StepContext) -> StepResult:
    from mm1.eval.report import write_report

    page = write_report(ctx.out, build_run_summary(ctx))
    return StepResult(outputs={"html": str(page)}, headline={"report": str(page)}, figures=[str(page)])


def workflow_steps() -> list[Step]:
    return [
        # A step's keys are what it reads (packing.materialize changes how rows are held, not what they
        # are, so no step lists it); sweep entries under a step's keys join its fingerprint (runner).
        Step("ingest", (), ("data",), run_ingest),
        Step(
            "pretrain",
            ("ingest",),
            ("model", "pretrain", "sweep", "packing.seq_len", "packing.max_images"),
            run_pretrain,
            reset_on_rerun=False,
        ),
        Step("sft", ("pretrain",), ("sft",), run_sft, reset_on_rerun=False),
        # The baseline comes from the Shapes seed; the headline and the tables from the select section.
        Step("evaluate", ("sft",), ("evaluate", "select", "data.shapes.seed"), run_evaluate),
        Step("select", ("evaluate",), ("select",), run_select),
        Step("deploy", ("select",), ("deploy",), run_deploy, always_run=True),
        Step("report", ("select",), ("report", "description", "sweep"), run_report),
    ]


STEP_NAMES = [s.name for s in workflow_steps()]
