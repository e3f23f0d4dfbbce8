"""The workflow's steps: ingest -> pretrain -> sft -> evaluate -> select -> deploy -> report.

Each step is a function of (config, upstream manifests) that writes only under its own folder. Heavy modules
are imported inside the steps so `mm1 validate` and `mm1 status` stay fast.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mm1 import storage
from mm1.workflow.fingerprint import stable_hash
from mm1.workflow.outputs import (
    Checkpoint,
    Dataset,
    EvalOutputs,
    IngestOutputs,
    ReportOutputs,
    SelectOutputs,
    TrainedRun,
    TrainOutputs,
    group_units,
    projected_overrides,
)
from mm1.workflow.runner import Step, StepContext, StepResult
from mm1.workflow.sweep import Candidate, candidates

if TYPE_CHECKING:
    from mm1.eval.run_summary import RunSummary

# Settings that do not change what a training run computes: changing them continues the same run (the last
# three change how it is computed, not what, up to rounding).
_CONTINUABLE = (
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "max_failures",
    "activation_checkpointing",
    "compile",
    "cpu_offload",
)


# ------------------------------------------------------------------------------------------------ ingest


# What each step reads of the workflow; a unit of a step is a distinct setting of its keys and its ancestors'.
INGEST_READS = ("data",)
PRETRAIN_READS = ("model", "pretrain", "packing.seq_len", "packing.max_images")
SFT_READS = ("sft",)
PRETRAIN_UNIT = INGEST_READS + PRETRAIN_READS
SFT_UNIT = PRETRAIN_UNIT + SFT_READS


def data_variants(wf: Any) -> dict[str, Candidate]:
    """The distinct `data` sections among the candidates (a sweep over data.* makes several), by unit."""
    return group_units(candidates(wf), INGEST_READS)


def run_ingest(ctx: StepContext) -> StepResult:
    """One ingest per distinct data section; a single one writes the step's folder itself, several write a
    subfolder each (named by their unit). Outputs name locations in the run folder, so a training step on any
    node (or a later driver) reads them."""
    from mm1.data.ingest import run_ingest as ingest

    variants = data_variants(ctx.wf)
    datasets: dict[str, Dataset] = {}
    totals: dict[str, int] = {}
    for unit, cand in variants.items():
        out, out_uri = (
            (ctx.out, ctx.out_uri)
            if len(variants) == 1
            else (ctx.out / unit, storage.join(ctx.out_uri, unit))
        )
        if len(variants) > 1:
            ctx.log(f"[ingest] {unit}")
        stats = ingest(cand.workflow.data, out, out_uri)
        datasets[unit] = Dataset(
            pretrain=storage.join(out_uri, "pretrain"),
            sft=storage.join(out_uri, "sft"),
            tokenizer=storage.join(out_uri, "tokenizer"),
            stats=storage.join(out_uri, "stats.json"),
        )
        for figure in ("records_kept", "records_dropped", "tokens", "images"):
            totals[figure] = totals.get(figure, 0) + stats.get(figure, 0)
    headline = {"datasets": len(datasets), **totals} if len(datasets) > 1 else totals
    return StepResult(outputs=IngestOutputs(list(INGEST_READS), datasets), headline=headline)


# ------------------------------------------------------------------------------------------------ training


def concurrent_runs(candidates: int, cpus: float, cpus_per_run: float) -> int:
    """How many candidates train at once. One CPU stays free for Ray Data's read and pack tasks: trainers
    holding every CPU would starve their own input. A run that alone needs more still runs, one at a time."""
    per_run = max(cpus_per_run, 1e-9)
    return max(1, min(candidates, int(max(cpus - 1, per_run) // per_run)))


def should_materialize(mode: str, estimate_bytes: int, budget_bytes: float) -> bool:
    """`packing.materialize`: always, never, or (auto) when the estimate fits the budget."""
    return mode == "always" or (mode == "auto" and estimate_bytes <= budget_bytes)


def _lineage(stage_name: str, wf: Any, parent: str) -> str:
    """Identity of a training run minus the settings a run can be continued under (e.g. more steps)."""
    stage = {k: v for k, v in dataclasses.asdict(getattr(wf, stage_name)).items() if k not in _CONTINUABLE}
    model = dataclasses.asdict(wf.model)
    data = {"seq_len": wf.packing.seq_len, "max_images": wf.packing.max_images}
    return stable_hash({"stage": stage, "model": model, "data": data, "parent": parent})[:10]


def _train_units(ctx: StepContext, stage_name: str, unit_reads: tuple[str, ...]) -> StepResult:
    """One Ray Train run per unit of the stage (candidates sharing every setting the stage and its
    ancestors read share the run)."""
    import ray

    from mm1.data.loader import build_train_dataset, packed_bytes_estimate
    from mm1.stage_images import stage_images
    from mm1.train.launch import check_resumable, fit_stage

    ingest = ctx.inputs("ingest", IngestOutputs)
    parents = ctx.inputs("pretrain", TrainOutputs) if stage_name == "sft" else None
    ray_storage = storage.join(ctx.out_uri, "ray")
    units = group_units(candidates(ctx.wf), unit_reads)
    stage_cfg = getattr(ctx.wf, stage_name)
    cpus = ray.cluster_resources().get("CPU", 1)
    per_run = stage_cfg.num_workers * stage_cfg.cpus_per_worker
    concurrent = concurrent_runs(len(units), cpus, per_run)
    shared = len(candidates(ctx.wf)) - len(units)
    ctx.log(
        f"[{stage_name}] {len(units)} run(s), {concurrent} at a time"
        + (
            f" ({shared} candidate(s) share a run: they differ only in keys this stage does not read)"
            if shared
            else ""
        )
    )
    store_budget = ray.cluster_resources().get("object_store_memory", 0) / 4 / concurrent

    def train_one(unit: str, cand: Candidate) -> tuple[str, TrainedRun]:
        wf = cand.workflow
        stage = getattr(wf, stage_name)
        parent = parents.for_candidate(cand) if parents else None
        data = ingest.for_candidate(cand)
        stats = json.loads(storage.read_text(data.stats))
        # A pre-training run descends from its data (the data section's hash), SFT from its pre-training run.
        parent_key = parent.run_path if parent else stable_hash(dataclasses.asdict(wf.data))
        run_name = f"{unit}-{_lineage(stage_name, wf, parent_key)}"
        check_resumable(ray_storage, run_name, stage_name, stage.steps)  # before packing the data
        images = stage_images(wf, stage_name)  # this stage's resolution, splitting and sequence length
        dataset = build_train_dataset(
            getattr(data, stage_name),
            tokenizer=data.tokenizer,
            image_size=images.size,
            image_grid=images.grid,
            image_layouts=images.layouts,
            image_tokens_per_image=images.tokens_per_image,
            seq_len=images.seq_len,
            max_images=images.max_images,
            seed=stage.seed,
        )
        dataset.set_name(f"{wf.run_name}-{stage_name}-{unit}")  # how it reads in the Ray dashboard
        estimate = packed_bytes_estimate(
            stats.get(stage_name, {}).get("tokens", 0),
            stats.get("images", 0),
            seq_len=images.seq_len,
            image_size=images.size,
            crops=images.crops,
        )
        materialized = should_materialize(wf.packing.materialize, estimate, store_budget)
        if materialized:
            dataset = dataset.materialize()  # packed once; every pass then reads the object store
        ctx.log(
            f"[{stage_name}:{unit}] packed rows {'materialized' if materialized else 'streamed'} "
            f"(estimate {estimate / 2**20:.0f} MiB, budget {store_budget / 2**20:.0f} MiB, "
            f"packing.materialize={wf.packing.materialize})"
        )
        metrics_path = ctx.out / "metrics" / f"{unit}.jsonl"
        # Rank 0 appends each step's row to a live file only where the driver can see it (a local run
        # folder); the driver writes the checkpoint's history there at the end either way.
        live_metrics = None if ctx.rundir.remote else str(metrics_path)
        outcome = fit_stage(
            stage_name=stage_name,
            stage=stage,
            label=f"{stage_name}:{unit}",
            run_name=run_name,
            storage_path=ray_storage,
            dataset=dataset,
            model_cfg=wf.model,
            tokenizer_dir=data.tokenizer,
            images=images,
            init_checkpoint=parent.last.uri if parent else None,
            metrics_path=live_metrics,
            run=wf.run_name,
            candidate=unit,
        )
        if not outcome.checkpoints or outcome.checkpoints[-1]["step"] != stage.steps:
            raise RuntimeError(
                f"{stage_name} run '{unit}' ended without a checkpoint at step {stage.steps} "
                f"(found: {[c['step'] for c in outcome.checkpoints]})"
            )
        # The checkpoint's history is authoritative: steps after the last checkpoint of a killed run are gone.
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in outcome.history))
        return unit, TrainedRun(
            overrides=projected_overrides(cand, unit_reads),
            run_path=outcome.run_path,
            checkpoints=[Checkpoint(int(c["step"]), c["uri"]) for c in outcome.checkpoints],
            metrics=storage.join(ctx.out_uri, "metrics", metrics_path.name),
            final_loss=outcome.history[-1]["loss"] if outcome.history else None,
            mean_data_wait_fraction=_mean_tail(outcome.history, "data_wait_fraction"),
            tokens_per_s=_mean_tail(outcome.history, "tokens_per_s"),
            trainable_params=outcome.trainable_params,
        )

    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        runs = dict(pool.map(lambda item: train_one(*item), units.items()))
    losses = [r.final_loss for r in runs.values() if r.final_loss is not None]
    headline: dict[str, Any] = {"runs": len(runs), "best_final_loss": min(losses) if losses else None}
    waits = [r.mean_data_wait_fraction for r in runs.values() if r.mean_data_wait_fraction is not None]
    if waits:
        headline["data_wait_fraction"] = max(waits)
    outputs = TrainOutputs(stage_name, list(unit_reads), runs, use_gpu=stage_cfg.use_gpu)
    return StepResult(outputs=outputs, headline=headline)


def _mean_tail(history: list[dict[str, Any]], key: str) -> float | None:
    """Mean over the second half of the run (steady state, after warm-up and first-batch latency)."""
    values = [row[key] for row in history[len(history) // 2 :] if key in row]
    return sum(values) / len(values) if values else None


def run_pretrain(ctx: StepContext) -> StepResult:
    return _train_units(ctx, "pretrain", PRETRAIN_UNIT)


def run_sft(ctx: StepContext) -> StepResult:
    if not ctx.wf.sft.enabled:
        ctx.log("[sft] disabled: the pre-trained checkpoints go on to evaluation")
        parents = ctx.inputs("pretrain", TrainOutputs)
        return StepResult(outputs=parents, headline={"skipped": "sft.enabled=false"})
    return _train_units(ctx, "sft", SFT_UNIT)


# ------------------------------------------------------------------------------------------------ evaluation


def trained_by_candidate(ctx: StepContext, step: str) -> dict[str, dict[str, Any]]:
    """Each candidate's run of a training step, by candidate name (what evaluation and the report list)."""
    outputs = ctx.inputs(step, TrainOutputs)
    return {c.name: dataclasses.asdict(outputs.for_candidate(c)) for c in candidates(ctx.wf)}


def run_evaluate(ctx: StepContext) -> StepResult:
    from mm1.eval.evaluate import EvalSpec, evaluate_candidates

    wf, trained = ctx.wf, ctx.inputs("sft", TrainOutputs)
    spec = EvalSpec(wf.evaluate, wf.select, wf.data.shapes.seed, trained.stage, trained.use_gpu)
    results = evaluate_candidates(
        spec, trained_by_candidate(ctx, "sft"), trained_by_candidate(ctx, "pretrain"), ctx.out, log=ctx.log
    )
    return StepResult(outputs=EvalOutputs.from_dict(results["outputs"]), headline=results["headline"])


def run_select(ctx: StepContext) -> StepResult:
    from mm1 import metrics
    from mm1.eval.select import select_winner

    evaluation = ctx.inputs("evaluate", EvalOutputs)
    for result in evaluation.results:
        for name, value in result["metrics"].items():
            if value is not None:
                metrics.eval_score(ctx.wf.name, result["candidate"], name, value)
    winner = select_winner(evaluation.results, ctx.wf.select.metric, ctx.wf.select.mode, out_dir=ctx.out)
    record = winner.to_dict()
    margin = record["margin_over_other_candidate"]
    ctx.log(
        f"[select] winner {record['candidate']} step {record['step']}: {record['metric']} = {record['value']:.4f}"
        + (f" (ahead of the next candidate by {margin:.4f})" if margin is not None else "")
    )
    headline = {"winner": record["candidate"], record["metric"]: record["value"]}
    return StepResult(outputs=SelectOutputs(record), headline=headline)


def run_deploy(ctx: StepContext) -> StepResult:
    # The backend decides how: a Serve app on this Ray (local, Ray cluster) or a RayService (Kubernetes).
    from mm1.workflow.backends import backend

    winner = ctx.upstream["select"]["outputs"]["winner"]
    endpoint = backend(ctx.wf.cluster.backend).deploy(ctx.wf, winner, ctx.out, log=ctx.log)
    return StepResult(outputs=endpoint, headline={"endpoint": endpoint.get("url", "")})


def build_run_summary(ctx: StepContext) -> RunSummary:
    """The report's input from the upstream manifests."""
    from mm1.eval.run_summary import CandidateCurves, RunSummary

    up = ctx.upstream
    pretrained = ctx.inputs("pretrain", TrainOutputs)
    trained = ctx.inputs("sft", TrainOutputs)
    evaluation = ctx.inputs("evaluate", EvalOutputs)
    curves = []
    for cand in candidates(ctx.wf):
        files = [pretrained.for_candidate(cand).metrics]
        if trained.stage == "sft":
            files.append(trained.for_candidate(cand).metrics)
        curves.append(CandidateCurves(cand.name, cand.overrides, files))
    return RunSummary(
        name=ctx.wf.run_name,
        description=ctx.wf.description,
        candidates=curves,
        eval=evaluation.results,
        baselines=evaluation.baseline.metrics,
        baseline_source=evaluation.baseline.source,
        selection={"metric": ctx.wf.select.metric, "mode": ctx.wf.select.mode},
        winner=ctx.inputs("select", SelectOutputs).winner,
        sweep_keys=list(ctx.wf.sweep),
        step_times={name: m.get("duration_s") for name, m in up.items()},
    )


def run_report(ctx: StepContext) -> StepResult:
    from mm1.eval.report import write_report

    page = write_report(ctx.out, build_run_summary(ctx))
    return StepResult(outputs=ReportOutputs(str(page)), headline={"report": str(page)}, figures=[str(page)])


def workflow_steps() -> list[Step]:
    return [
        # A step's keys are what it reads (packing.materialize changes how rows are held, not what they
        # are, so no step lists it); sweep entries under a step's keys join its fingerprint (runner).
        Step("ingest", (), INGEST_READS, run_ingest),
        Step(
            "pretrain",
            ("ingest",),
            PRETRAIN_READS,
            run_pretrain,
            reset_on_rerun=False,
        ),
        Step("sft", ("pretrain",), SFT_READS, run_sft, reset_on_rerun=False),
        # The baseline comes from the Shapes seed; the headline and the tables from the select section.
        Step("evaluate", ("sft",), ("evaluate", "select", "data.shapes.seed"), run_evaluate),
        Step("select", ("evaluate",), ("select",), run_select),
        Step("deploy", ("select",), ("deploy",), run_deploy, always_run=True),
        Step("report", ("select",), ("report", "description", "sweep"), run_report),
    ]


STEP_NAMES = [s.name for s in workflow_steps()]
