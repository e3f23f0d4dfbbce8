"""Rules a workflow must follow that types alone cannot express; each failure names the offending key.

Names are checked against mm1.registry (freezable parts, benchmarks and the files a benchmark reads), the
cluster and serving rules live with their sections (mm1.config_cluster, mm1.config_serving).
"""

from __future__ import annotations

from mm1.config_cluster import check_cluster, check_storage
from mm1.config_sections import TrainConfig, Workflow
from mm1.config_serving import serving_problems
from mm1.config_validate import SchemaChecker
from mm1.model_checks import model_problems, stage_image_problems
from mm1.registry import BENCHMARKS, FREEZABLE_PARTS, missing_benchmark_files

# Keys that moved to another section: the old spelling gets an error that names the new one.
MOVED_KEYS = {
    "data.seq_len": "packing.seq_len",
    "data.max_images": "packing.max_images",
    "data.materialize": "packing.materialize",
}


def check_moved_keys(document: dict, checker: SchemaChecker) -> None:
    sweep = document.get("sweep") if isinstance(document.get("sweep"), dict) else {}
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".", 1)
        if isinstance(document.get(section), dict) and key in document[section]:
            checker.fail(old, f"moved to {new}: write it under `{new.split('.')[0]}:`")
        if old in sweep:
            checker.fail(f"sweep.{old}", f"moved to {new}: sweep over {new}")


def check_semantics(wf: Workflow, checker: SchemaChecker) -> None:
    """Every cross-field rule of the workflow, section by section (the sweep is checked by mm1.config)."""
    if not wf.name.strip():
        checker.fail("name", "must not be empty")
    check_storage(wf.storage, checker)
    check_data(wf, checker)
    for key, message in model_problems(wf.model, wf.data.tokenizer):
        checker.fail(key, message)
    for key, message in stage_image_problems(wf):
        checker.fail(key, message)
    for stage_name in ("pretrain", "sft"):
        check_stage(stage_name, getattr(wf, stage_name), checker)
    check_evaluation(wf, checker)
    for key, message in serving_problems(wf.deploy):
        checker.fail(f"deploy.{key}", message)
    check_cluster(wf.cluster, checker)


def check_data(wf: Workflow, checker: SchemaChecker) -> None:
    fail = checker.fail
    weights = wf.data.mixture
    if min(weights.interleaved, weights.captions, weights.text) < 0 or (
        weights.interleaved + weights.captions + weights.text <= 0
    ):
        fail("data.mixture", "weights must be >= 0 and sum to more than 0")
    turns = wf.data.shapes
    if not 1 <= turns.sft_min_turns <= turns.sft_max_turns:
        fail(
            "data.shapes.sft_min_turns",
            f"must be at least 1 and at most sft_max_turns ({turns.sft_max_turns}), got {turns.sft_min_turns}",
        )
    for key, message in _type_weight_problems(turns.sft_type_weights):
        fail(f"data.shapes.sft_type_weights{key}", message)
    if wf.packing.seq_len < 32:
        fail("packing.seq_len", f"must be at least 32, got {wf.packing.seq_len}")
    if wf.packing.max_images < 1:
        fail("packing.max_images", f"must be at least 1, got {wf.packing.max_images}")
    if not 0 <= wf.data.max_bad_fraction <= 1:
        fail("data.max_bad_fraction", f"must be between 0 and 1, got {wf.data.max_bad_fraction}")


def _type_weight_problems(weights: dict[str, float]) -> list[tuple[str, str]]:
    """(key suffix, message) for each weight that names no SFT question type or is negative."""
    from mm1.data.shapes import QUESTION_TYPES

    problems = [
        (f".{name}", f"is not a Shapes question type; expected one of {', '.join(QUESTION_TYPES)}")
        for name in weights
        if name not in QUESTION_TYPES
    ]
    problems += [(f".{name}", f"must be 0 or more, got {w}") for name, w in weights.items() if w < 0]
    if weights and not problems and all(weights.get(t, 1.0) == 0 for t in QUESTION_TYPES):
        problems.append(("", "leaves every question type out; give at least one a weight above 0"))
    return problems


def check_stage(stage_name: str, stage: TrainConfig, checker: SchemaChecker) -> None:
    fail = checker.fail
    for key in ("steps", "batch_size", "grad_accum", "num_workers", "checkpoint_every", "keep_checkpoints"):
        if getattr(stage, key) < 1:
            fail(f"{stage_name}.{key}", f"must be at least 1, got {getattr(stage, key)}")
    if stage.shuffle_buffer < 0:
        fail(f"{stage_name}.shuffle_buffer", f"must be 0 (off) or more rows, got {stage.shuffle_buffer}")
    if stage.batch_size % (stage.num_workers * stage.grad_accum):
        fail(
            f"{stage_name}.batch_size",
            f"{stage.batch_size} must be divisible by num_workers x grad_accum "
            f"= {stage.num_workers} x {stage.grad_accum}",
        )
    for i, part in enumerate(stage.freeze):
        if part not in FREEZABLE_PARTS:
            fail(
                f"{stage_name}.freeze[{i}]",
                f"'{part}' is not a model part; expected one of: {', '.join(FREEZABLE_PARTS)}",
            )
    check_lora(stage_name, stage, checker)
    if stage.precision == "bf16" and not stage.use_gpu:
        fail(
            f"{stage_name}.precision",
            "bf16 needs use_gpu: true (on CPU bf16 is emulated, ~400x slower); use fp32",
        )
    if stage.strategy == "fsdp" and not stage.use_gpu:
        fail(f"{stage_name}.strategy", "fsdp needs use_gpu: true; use ddp on CPU")
    if stage.cpu_offload and stage.strategy != "fsdp":
        fail(
            f"{stage_name}.cpu_offload",
            f"needs strategy: fsdp (FSDP2's CPU offload of the sharded states), got strategy: {stage.strategy}",
        )


def check_lora(stage_name: str, stage: TrainConfig, checker: SchemaChecker) -> None:
    """A stage's LoRA section: off at r = 0; on, adapters need targets inside parts that are not frozen.
    Whether the targets name existing layers is checked when the model is built (mm1.model.lora)."""
    fail, lora, key = checker.fail, stage.lora, f"{stage_name}.lora"
    if lora.r < 0:
        fail(f"{key}.r", f"must be 0 (off) or at least 1, got {lora.r}")
    if lora.r < 1:
        return
    if lora.alpha <= 0:
        fail(f"{key}.alpha", f"must be more than 0, got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        fail(f"{key}.dropout", f"must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules:
        fail(f"{key}.target_modules", "must name at least one Linear layer (e.g. [q_proj, v_proj])")
    for i, name in enumerate(lora.target_modules):
        if not name.strip():
            fail(f"{key}.target_modules[{i}]", "must not be empty")
    if not lora.parts:
        fail(f"{key}.parts", f"must name at least one part; expected some of: {', '.join(FREEZABLE_PARTS)}")
    for i, part in enumerate(lora.parts):
        if part not in FREEZABLE_PARTS:
            fail(
                f"{key}.parts[{i}]",
                f"'{part}' is not a model part; expected one of: {', '.join(FREEZABLE_PARTS)}",
            )
        elif part in stage.freeze:
            fail(
                f"{key}.parts[{i}]",
                f"'{part}' is also in {stage_name}.freeze: a frozen part gets no adapters; remove it from one",
            )


def check_evaluation(wf: Workflow, checker: SchemaChecker) -> None:
    """The benchmarks exist and have their files; select ranks by a metric of one of them."""
    fail = checker.fail
    for i, bench in enumerate(wf.evaluate.benchmarks):
        if bench not in BENCHMARKS:
            fail(
                f"evaluate.benchmarks[{i}]",
                f"unknown benchmark '{bench}'; expected one of: {', '.join(BENCHMARKS)}",
            )
    for i, bench in enumerate(wf.evaluate.benchmarks):
        for key in missing_benchmark_files(bench, wf.evaluate):
            fail(f"evaluate.benchmarks[{i}]", f"benchmark '{bench}' needs {key} (a path)")
    metric_bench = wf.select.metric.split("/", 1)[0]
    if "/" not in wf.select.metric or metric_bench not in wf.evaluate.benchmarks:
        fail(
            "select.metric",
            f"'{wf.select.metric}' must be BENCHMARK/METRIC with BENCHMARK one of evaluate.benchmarks "
            f"({', '.join(wf.evaluate.benchmarks)}), e.g. shapes-vqa/overall",
        )
    elif metric_bench in BENCHMARKS:
        problem = _metric_problem(metric_bench, wf.select.metric.split("/", 1)[1], wf.evaluate.kshot)
        if problem:
            fail("select.metric", f"'{wf.select.metric}': {problem}")


def _metric_problem(benchmark: str, metric: str, kshot: list[int]) -> str | None:
    """Why `metric` is not one `benchmark` reports (None if it is): a typo here would only surface at the
    select step, after every candidate has trained."""
    spec = BENCHMARKS[benchmark]
    name, at, shots = metric.partition("@")
    known = spec.metrics()
    if spec.kshot:
        examples = ", ".join(f"{(known or ('overall',))[0]}@{k}" for k in kshot)
        if not at or shots not in {str(k) for k in kshot}:
            return (
                f"{benchmark} reports each metric once per evaluate.kshot value, as METRIC@K: e.g. {examples}"
            )
    elif at:
        return f"{benchmark} is zero-shot: its metrics have no @K"
    if known is not None and name not in known:
        return f"{benchmark} reports {', '.join(known)}{' (each @K)' if spec.kshot else ''}; not '{name}'"
    return None
