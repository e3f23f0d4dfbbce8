"""The evaluate step end to end on Ray, with a tiny random-init checkpoint (no model stubs).

A random model's answers are wrong, so nothing here depends on answer quality: every prompt is answered
exactly once, the metrics are the ones the predictions files imply, k-shot demonstrations come from the held
out pool and never show the query, results.json and the tables are written, and two runs agree exactly.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
from eval_helpers import save_tiny_checkpoint, write_coco_and_vqav2

from mm1 import config
from mm1.eval.cider import cider_d
from mm1.eval.evaluate import EvalSpec, evaluate_candidates
from mm1.eval.heldout import SPLIT_TYPES
from mm1.eval.items import is_split
from mm1.eval.select import select_winner
from mm1.eval.table import BASELINE_LABEL
from mm1.eval.vqa import answer_score

SMALL = [
    "evaluate.num_scenes=10",
    "evaluate.num_questions=16",
    "evaluate.batch_size=8",
    "evaluate.max_new_tokens=6",
]
KSHOT = [0, 2]


def _workflow(*overrides: str) -> config.Workflow:
    return config.loads("name: eval-test\n", overrides=[*SMALL, *overrides])


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mm1"))


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> dict[str, str]:
    return write_coco_and_vqav2(tmp_path_factory.mktemp("coco"), num_images=3)


@pytest.fixture(scope="module")
def all_benchmarks(real_files) -> config.Workflow:
    return _workflow(
        "evaluate.benchmarks=[shapes-vqa, shapes-caption, shapes-kshot, coco-caption, vqav2]",
        f"evaluate.kshot={KSHOT}",
        "sft.enabled=false",
        *(f"evaluate.{k}={v}" for k, v in real_files.items()),
    )


def _run(wf, checkpoint: str, out: Path) -> tuple[dict, list[str]]:
    candidates = {"tiny": {"checkpoints": [{"step": 3, "uri": checkpoint}]}}
    lines: list[str] = []
    result = evaluate_candidates(EvalSpec.of(wf), candidates, candidates, out, log=lines.append)
    return result, lines


@pytest.fixture(scope="module")
def first_run(ray_session, all_benchmarks, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-1")
    result, lines = _run(all_benchmarks, checkpoint, out)
    return result, lines, out


def test_one_row_per_checkpoint_with_every_benchmark_metric(first_run, real_files):
    result, _, out = first_run
    (row,) = result["outputs"]["results"]
    assert (row["candidate"], row["checkpoint"], row["step"], row["stage"]) == (
        "tiny",
        row["checkpoint"],
        3,
        "pretrain",
    )
    predictions = _read_jsonl(out / "predictions-tiny-pretrain-3.jsonl")
    shapes_types = {p["type"] for p in predictions if p["benchmark"] == "shapes-vqa"}
    vqav2_types = {p["type"] for p in predictions if p["benchmark"] == "vqav2"}
    assert vqav2_types <= {"yes_no", "number", "other"} and len(vqav2_types) >= 2
    assert set(row["metrics"]) == (
        {"shapes-vqa/overall", "shapes-caption/cider", "coco-caption/cider", "vqav2/overall"}
        | {f"shapes-vqa/{t}" for t in shapes_types}
        | {f"vqav2/{t}" for t in vqav2_types}
        | {f"shapes-kshot/cider@{k}" for k in KSHOT}
    )
    # k-shot scores belong to the pre-trained checkpoint, which this row is.
    assert row["kshot"] == {
        "checkpoint": row["checkpoint"],
        "step": 3,
        "stage": "pretrain",
        "prompt_style": "document",
    }
    assert row["prompt_style"] == "document"
    for name, value in row["metrics"].items():
        assert math.isfinite(value) and value >= 0, name
        if "cider" not in name:
            assert value <= 1, name


def test_every_prompt_is_answered_exactly_once(first_run, real_files):
    result, _, out = first_run
    predictions = _read_jsonl(out / "predictions-tiny-pretrain-3.jsonl")
    counts = Counter((p["benchmark"], p["shots"], p["key"]) for p in predictions)
    assert set(counts.values()) == {1}
    per_benchmark = Counter((b, s) for b, s, _ in counts)
    num_questions = len(json.loads(Path(real_files["vqav2_questions"]).read_text())["questions"])
    assert per_benchmark == {
        ("shapes-vqa", None): 16 + 10 * len(SPLIT_TYPES),  # + one question per scene of each split type
        ("shapes-caption", None): 10,
        ("shapes-kshot", 0): 10,
        ("shapes-kshot", 2): 10,
        ("coco-caption", None): 3,
        ("vqav2", None): num_questions,
    }
    assert all(isinstance(p["prediction"], str) for p in predictions)
    assert len(list(out.glob("predictions-*.jsonl"))) == 1  # chat and k-shot prompts shared one model load


def test_metrics_are_what_the_predictions_imply(first_run):
    result, _, out = first_run
    metrics = result["outputs"]["results"][0]["metrics"]
    predictions = _read_jsonl(out / "predictions-tiny-pretrain-3.jsonl")

    def rows(benchmark: str, shots=None) -> list[dict]:
        return [p for p in predictions if p["benchmark"] == benchmark and p["shots"] == shots]

    for bench in ("shapes-vqa", "vqav2"):
        # overall: the main questions; split types (count_kind.uniform, ...) are scored apart
        scores = [
            answer_score(p["prediction"], p["references"]) for p in rows(bench) if not is_split(p["type"])
        ]
        assert metrics[f"{bench}/overall"] == pytest.approx(sum(scores) / len(scores), abs=1e-12)
    for split in SPLIT_TYPES:
        picked = [p for p in rows("shapes-vqa") if p["type"] == split]
        scores = [answer_score(p["prediction"], p["references"]) for p in picked]
        assert len(picked) == 10 and metrics[f"shapes-vqa/{split}"] == pytest.approx(
            sum(scores) / 10, abs=1e-12
        )
    for bench, shots, name in [
        ("shapes-caption", None, "shapes-caption/cider"),
        ("coco-caption", None, "coco-caption/cider"),
        *(("shapes-kshot", k, f"shapes-kshot/cider@{k}") for k in KSHOT),
    ]:
        picked = rows(bench, shots)
        expected = cider_d(
            {p["key"]: p["references"] for p in picked}, {p["key"]: p["prediction"] for p in picked}
        )
        assert metrics[name] == pytest.approx(expected.score, abs=1e-12)


def test_kshot_demonstrations_come_from_the_pool_and_never_show_the_query(first_run):
    result, _, out = first_run
    kshot = [
        p for p in _read_jsonl(out / "predictions-tiny-pretrain-3.jsonl") if p["benchmark"] == "shapes-kshot"
    ]
    assert result["outputs"]["kshot"]["shots"] == KSHOT
    pool = result["outputs"]["kshot"]["demo_pools"]["shapes-kshot"]
    for p in kshot:
        assert len(p["demos"]) == p["shots"] == len(set(p["demos"]))
        assert all(d.startswith("d") and 0 <= int(d[1:]) < pool for d in p["demos"])
        assert p["key"] not in p["demos"]
    two_shot = [tuple(p["demos"]) for p in kshot if p["shots"] == 2]
    assert len(set(two_shot)) > 1  # drawn per query, not one fixed set


def test_results_json_and_the_printed_tables(first_run):
    result, lines, out = first_run
    outputs = result["outputs"]
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(outputs))
    assert result["headline"] == {
        "best shapes-vqa/overall": outputs["results"][0]["metrics"]["shapes-vqa/overall"]
    }
    text = "\n".join(lines)
    lines = text.splitlines()  # a table is logged as one multi-line message
    baseline_rows = [line for line in lines if BASELINE_LABEL in line]
    overall = outputs["baseline"]["metrics"]["shapes-vqa/overall"]
    assert any(f"{overall:.3f}" in line for line in baseline_rows)  # the majority baseline beside the score
    for name in ("shapes-vqa", "shapes-caption", "shapes-kshot", "coco-caption", "vqav2"):
        assert any(line.strip() == name for line in lines), name  # one titled table per benchmark
    assert "shapes-vqa per type: tiny (pretrain step 3)" in text
    assert "vqav2 per type" in text
    assert set(outputs["benchmarks"]) == {
        "shapes-vqa",
        "shapes-caption",
        "shapes-kshot",
        "coco-caption",
        "vqav2",
    }
    assert outputs["benchmarks"]["shapes-vqa"]["max_new_tokens"] == 6  # min(max_new_tokens, the answer cap)
    counts = outputs["benchmarks"]["shapes-vqa"]["questions"]  # the split sizes are stated in the results
    assert counts["shapes-vqa/overall"] == 16 and all(counts[f"shapes-vqa/{t}"] == 10 for t in SPLIT_TYPES)
    # Each split has its own baseline, printed on its row of the per-type table beside the score.
    base = outputs["baseline"]["metrics"]
    for split in SPLIT_TYPES:
        (row,) = [line for line in lines if line.split()[:1] == [split]]
        assert row.split()[2] == f"{base[f'shapes-vqa/{split}']:.3f}" and row.split()[-1] == "10"


def test_a_second_run_gives_identical_answers_and_metrics(first_run, all_benchmarks, checkpoint, tmp_path):
    result, _, out = first_run
    again, _ = _run(all_benchmarks, checkpoint, tmp_path)
    assert again["outputs"]["results"] == result["outputs"]["results"]
    name = "predictions-tiny-pretrain-3.jsonl"
    assert (tmp_path / name).read_text() == (out / name).read_text()


def test_after_sft_kshot_scores_come_from_the_pretrained_checkpoint(ray_session, checkpoint, tmp_path):
    # A copy stands for the SFT checkpoint: a different URI, so a different job.
    sft_uri = str(shutil.copytree(checkpoint, tmp_path / "sft-step-5"))
    wf = _workflow("evaluate.benchmarks=[shapes-vqa, shapes-kshot]", "evaluate.kshot=[1]")
    trained = {"tiny": {"checkpoints": [{"step": 5, "uri": sft_uri}]}}
    pretrained = {
        "tiny": {"checkpoints": [{"step": 2, "uri": "/never/evaluated"}, {"step": 3, "uri": checkpoint}]}
    }
    out = tmp_path / "out"
    result = evaluate_candidates(EvalSpec.of(wf), trained, pretrained, out, log=lambda *_: None)
    (row,) = result["outputs"]["results"]
    assert (row["stage"], row["checkpoint"], row["step"]) == ("sft", sft_uri, 5)
    assert row["kshot"] == {
        "checkpoint": checkpoint,
        "step": 3,
        "stage": "pretrain",
        "prompt_style": "document",
    }
    assert "prompt_style" not in row  # the report lists prompt styles by the row's stage: this row is SFT
    assert {p["benchmark"] for p in _read_jsonl(out / "predictions-tiny-sft-5.jsonl")} == {"shapes-vqa"}
    assert {p["benchmark"] for p in _read_jsonl(out / "predictions-tiny-pretrain-3.jsonl")} == {
        "shapes-kshot"
    }
    winner = select_winner(result["outputs"]["results"], "shapes-kshot/cider@1")
    assert winner.result.checkpoint == sft_uri  # selection ranks SFT rows by their pre-trained k-shot score


@pytest.mark.parametrize(
    ("benchmark", "missing"),
    [("coco-caption", "evaluate.coco_annotations"), ("vqav2", "evaluate.vqav2_questions")],
)
def test_a_real_benchmark_without_its_files_fails_before_any_work(benchmark, missing, tmp_path):
    # The workflow is rejected when it is loaded, long before training or evaluation start.
    with pytest.raises(config.ConfigError, match=missing):
        _workflow(f"evaluate.benchmarks=[{benchmark}]", f"select.metric={benchmark}/overall")
