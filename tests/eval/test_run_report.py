"""The run report: content, self-containment, metrics-file handling, and rendering in headless Chromium."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm1.eval.report import (
    BASE_VALUE,
    MetricsFileError,
    ablation,
    read_metrics_file,
    write_report,
)
from mm1.eval.select import select_winner

METRIC = "shapes-vqa/overall"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _accuracy(size: int, connector: str, step: int) -> float:
    # Resolution moves the metric by 0.2, the connector by 0.02: the ablation must rank image_size first.
    return 0.3 + (0.2 if size == 64 else 0.0) + (0.02 if connector == "avgpool" else 0.0) + step / 300


def make_summary(root: Path) -> dict:
    candidates, evals = [], []
    for size in (32, 64):
        for connector in ("avgpool", "c-abstractor"):
            name = f"image_size-{size}__connector.type-{connector}"
            files = []
            for stage, steps, lr in (("pretrain", 40, 1e-3), ("sft", 20, 1e-4)):
                path = root / name / stage / "metrics.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                rows = [
                    {
                        "stage": stage,
                        "step": s,
                        "loss": 3 * math.exp(-s / 15) + size / 100,
                        "lr": lr * (1 - s / steps),
                    }
                    for s in range(1, steps + 1)
                ]
                path.write_text("".join(json.dumps(r) + "\n" for r in rows))
                files.append(str(path))
            candidates.append(
                {
                    "name": name,
                    "overrides": {"model.image_size": size, "model.connector.type": connector},
                    "metrics_files": files,
                }
            )
            for step in (10, 20):
                acc = _accuracy(size, connector, step)
                evals.append(
                    {
                        "candidate": name,
                        "checkpoint": f"{root}/sft/{name}/step_{step}",
                        "stage": "sft",
                        "step": step,
                        "prompt_style": "chat",
                        "metrics": {
                            METRIC: acc,
                            "shapes-vqa/count_all": acc - 0.1,
                            "shapes-vqa/exists": acc + 0.1,
                            "shapes-caption/cider": 2 * acc,
                        },
                    }
                )
    return {
        "name": "quickstart <sweep>",
        "description": "synthetic run for the report tests",
        "candidates": candidates,
        "eval": evals,
        "baselines": {METRIC: 0.31, "shapes-vqa/count_all": 0.25, "shapes-vqa/exists": 0.5},
        "baseline_source": "shapes training split (seed 0)",
        "selection": {"metric": METRIC, "mode": "max"},
        "step_times": {"ingest": 12.5, "pretrain": 310.2, "sft": 120.0, "evaluate": 40.0},
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("run")
    summary = make_summary(root)
    return write_report(root / "report", summary), summary


def _embedded_images(page: str) -> dict[str, bytes]:
    tags = re.findall(r'<img class="chart" id="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', page)
    return {name: base64.b64decode(data) for name, data in tags}


def test_writes_a_self_contained_page_with_the_pngs_beside_it(report):
    path, _ = report
    page = path.read_text()
    images = _embedded_images(page)
    assert set(images) == {"curves", "metric"}
    for name, data in images.items():
        assert data.startswith(PNG_MAGIC)
        assert (path.parent / f"{name}.png").read_bytes() == data  # the file beside is the embedded chart
        with Image.open(path.parent / f"{name}.png") as image:
            assert image.width > 400 and image.height > 200
    # Nothing loads from elsewhere: every src is inline data, no links or stylesheets.
    assert re.findall(r'src="(?!data:)', page) == []
    assert "href=" not in page and "http" not in page


def test_shows_winner_tables_baselines_and_ablation(report):
    path, summary = report
    page = path.read_text()
    winner = select_winner(summary["eval"], METRIC, "max")
    assert winner.result.candidate == "image_size-64__connector.type-avgpool"
    assert f"<b>{winner.result.candidate}</b> wins on <b>{METRIC}</b>" in page
    assert winner.result.checkpoint in page
    assert "quickstart &lt;sweep&gt;" in page  # escaped
    assert "(majority baseline)" in page and "0.310" in page
    assert "Majority baselines fitted on: shapes training split (seed 0)" in page
    assert "winner on shapes-vqa, per type" in page
    assert f"{winner.value - 0.31:+.3f}" in page  # the gain over the overall baseline
    assert "<b>model.image_size</b> moved it most (spread 0.200" in page
    assert "sft: chat" in page
    assert "0:08:03" in page  # 482.7 s of step wall time in all
    assert "Warnings" not in page


def test_a_given_winner_is_used_as_is(tmp_path):
    summary = make_summary(tmp_path)
    chosen = select_winner(summary["eval"], "shapes-caption/cider", "min").to_dict()
    summary["winner"] = chosen
    page = write_report(tmp_path / "out", summary).read_text()
    assert f"<b>{chosen['candidate']}</b> wins on <b>shapes-caption/cider</b>" in page


def test_minimal_summary_without_sweep_or_results(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"stage": "pretrain", "step": 1, "loss": 2.0, "lr": 0.001}\n')
    summary = {"name": "base-only", "candidates": [{"name": "base", "metrics_files": [str(metrics)]}]}
    path = write_report(tmp_path / "out", summary)
    page = path.read_text()
    assert "no winner was selected" in page and "no evaluation results" in page
    assert "Ablation" not in page
    assert set(_embedded_images(page)) == {"curves"}


def test_missing_files_become_warnings_and_missing_keys_errors(tmp_path):
    summary = make_summary(tmp_path)
    summary["candidates"][0]["metrics_files"] = [str(tmp_path / "nope.jsonl")]
    page = write_report(tmp_path / "out", summary).read_text()
    assert "metrics file not found" in page and "nope.jsonl" in page
    with pytest.raises(KeyError, match="'name'"):
        write_report(tmp_path / "out2", {"candidates": []})


def test_metrics_file_last_row_per_step_wins_and_truncated_tail_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"stage": "pretrain", "step": 1, "loss": 3.0, "lr": 1e-3},
        {"stage": "pretrain", "step": 2, "loss": 2.5, "lr": 1e-3},
        {"stage": "pretrain", "step": 2, "loss": 2.4, "lr": 1e-3},  # re-logged after a resume
        {"stage": "sft", "step": 1, "loss": 1.0, "lr": 1e-4},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "sft", "st')
    got, warnings = read_metrics_file(path)
    assert [(r["stage"], r["step"], r["loss"]) for r in got] == [
        ("pretrain", 1, 3.0),
        ("pretrain", 2, 2.4),
        ("sft", 1, 1.0),
    ]
    assert len(warnings) == 1 and "truncated last line (5)" in warnings[0]


def test_metrics_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"stage": "sft", "step": 1, "loss": 1}\nnot json\n{"stage": "sft", "step": 2, "loss": 1}\n'
    )
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl:2: not JSON"):
        read_metrics_file(path)
    path.write_text('{"stage": "sft", "loss": 1}\n')
    with pytest.raises(MetricsFileError, match=r":1: row lacks step"):
        read_metrics_file(path)


def test_diverged_loss_is_flagged(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "sft", "step": 1, "loss": 1.0}\n{"stage": "sft", "step": 2, "loss": NaN}\n')
    _, warnings = read_metrics_file(path)
    assert warnings == [f"{path}: loss is nan at sft step 2"]


def test_ablation_means_and_spread_by_hand():
    overrides = {
        "a": {"model.image_size": 32, "model.connector.type": "avgpool"},
        "b": {"model.image_size": 64, "model.connector.type": "avgpool"},
        "c": {"model.image_size": 64, "model.connector.type": "c-abstractor"},
        "d": {"model.image_size": 128},
    }
    best = {"a": 0.2, "b": 0.6, "c": 0.4, "d": math.nan}  # d has no result: left out
    ranked = ablation(overrides, best, ["model.connector.type", "model.image_size"])
    assert [a.key for a in ranked] == ["model.image_size", "model.connector.type"]
    size, connector = ranked
    assert size.means == {"32": (0.2, 1), "64": (pytest.approx(0.5), 2)}
    assert size.spread == pytest.approx(0.3)
    assert connector.means == {"avgpool": (pytest.approx(0.4), 2), "c-abstractor": (0.4, 1)}
    assert connector.spread == pytest.approx(0.0)
    only_base = ablation({"a": {}}, {"a": 0.5}, ["model.image_size"])
    assert only_base[0].means == {BASE_VALUE: (0.5, 1)}


# ---- headless Chromium ---------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (CI installs it via .ci/system-deps; apt-get install chromium)",
)


def _chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / "chromium-profile"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _rendered(dom: str) -> dict[str, str]:
    tags = re.findall(r"<img [^>]*>", dom)
    return {
        re.search(r'id="([^"]+)"', t).group(1): (
            re.search(r'data-rendered="([^"]+)"', t) or [None, "absent"]
        )[1]
        for t in tags
    }


@needs_chromium
def test_charts_render_in_headless_chromium(report, tmp_path):
    path, _ = report
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", path.as_uri())
    rendered = _rendered(dom)
    assert set(rendered) == {"curves", "metric"}
    for name, size in rendered.items():
        width, height = (int(v) for v in size.split("x"))  # "failed" or "absent" would not parse
        with Image.open(path.parent / f"{name}.png") as image:
            assert (width, height) == image.size  # decoded at the PNG's own size
    assert '<p class="warn">chart failed' not in dom

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1200,2000", f"--screenshot={shot}", path.as_uri())
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert pixels.shape == (2000, 1200, 3)
    non_white = (pixels.min(axis=2) < 235).mean()
    assert non_white > 0.03  # text alone covers less; the charts push it up
    # matplotlib's default blue (#1f77b4), used by the curves and the bars, must be on screen.
    blue = (np.abs(pixels - np.array([31, 119, 180])).max(axis=2) < 8).sum()
    assert blue > 2000


@needs_chromium
def test_a_broken_chart_is_detected_in_chromium(report, tmp_path):
    path, _ = report
    page = path.read_text()
    broken = re.sub(r'(id="metric"[^>]*src="data:image/png;base64,)[^"]+', r"\1AAAAbroken", page)
    target = tmp_path / "broken.html"
    target.write_text(broken)
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", target.as_uri())
    assert _rendered(dom)["metric"] == "failed"
    assert '<p class="warn">chart failed to load: shapes-vqa/overall per candidate</p>' in dom


def test_kshot_scores_get_a_table_with_a_column_per_k(tmp_path):
    summary = make_summary(tmp_path)
    for i, row in enumerate(summary["eval"]):
        row["metrics"] |= {f"vqav2-kshot/overall@{k}": 0.1 * i + k / 100 for k in (0, 4, 8)}
        row["metrics"] |= {f"vqav2-kshot/yes_no@{k}": 0.5 for k in (0, 4, 8)}  # per type: no table of its own
    page = write_report(tmp_path / "out", summary).read_text()
    assert "<caption>vqav2-kshot/overall by k (k-shot)</caption>" in page
    assert '<th class="num">k=0</th><th class="num">k=4</th><th class="num">k=8</th>' in page
    assert "vqav2-kshot/yes_no by k" not in page
    first = summary["eval"][0]["metrics"]
    assert f'<td class="num">{first["vqav2-kshot/overall@4"]:.3f}</td>' in page
