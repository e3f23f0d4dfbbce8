"""k-shot COCO captioning and VQAv2 (and Shapes VQA) on real files and a tiny checkpoint, end to end.

The benchmark files are COCO / VQAv2 JSON over real JPEGs (Shapes scenes written in those formats). What is
checked: the demonstration pool is held out of the file by image and never shows a query's image; a prompt
holds k image-text demonstrations, then the query; the metrics come per k; the same seed gives the same pool
and the same demonstrations for a query, for every checkpoint.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from eval_helpers import save_tiny_checkpoint, write_coco_and_vqav2

from mm1 import config
from mm1.data.chat import BOS, IMAGE
from mm1.eval.answerer import CheckpointAnswerer
from mm1.eval.benchmarks import build_benchmarks, split_demo_pool
from mm1.eval.cider import cider_d
from mm1.eval.evaluate import EvalSpec, _tasks, evaluate_candidates
from mm1.eval.kshot import VQA_TEMPLATE
from mm1.eval.table import kshot_table
from mm1.eval.vqa import answer_score

KSHOT = [0, 2]
BENCHMARKS = ["coco-caption-kshot", "vqav2-kshot", "shapes-vqa-kshot"]


def _workflow(files: dict[str, str], *overrides: str) -> config.Workflow:
    return config.loads(
        "name: kshot-test\n",
        overrides=[
            f"evaluate.benchmarks=[{', '.join(BENCHMARKS)}]",
            f"evaluate.kshot={KSHOT}",
            "evaluate.kshot_pool=3",
            "evaluate.num_scenes=6",
            "evaluate.num_questions=8",
            "evaluate.batch_size=8",
            "evaluate.max_new_tokens=6",
            "sft.enabled=false",
            f"select.metric=vqav2-kshot/overall@{KSHOT[-1]}",
            *(f"evaluate.{k}={v}" for k, v in files.items()),
            *overrides,
        ],
    )


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    return write_coco_and_vqav2(tmp_path_factory.mktemp("coco"), num_images=7)


@pytest.fixture(scope="module")
def wf(files) -> config.Workflow:
    return _workflow(files)


@pytest.fixture(scope="module")
def benchmarks(wf) -> dict:
    return {b.name: b for b in build_benchmarks(wf.evaluate)}


def test_the_pool_is_held_out_by_image_and_fixed_by_the_seed(wf, files, benchmarks):
    coco, vqav2 = benchmarks["coco-caption-kshot"], benchmarks["vqav2-kshot"]
    annotations = json.loads(Path(files["coco_annotations"]).read_text())
    for bench in (coco, vqav2):
        pool_images = {d.image for d in bench.pool}
        query_images = {it.image for it in bench.items}
        assert len(pool_images) == 3 and query_images and not pool_images & query_images
        assert {d.image_id for d in bench.pool} == pool_images  # demonstrations say which image they show
    assert len(coco.items) + len(coco.pool) == len(annotations["images"])  # every image: query or demo
    num_questions = len(json.loads(Path(files["vqav2_questions"]).read_text())["questions"])
    assert len(vqav2.items) + len(vqav2.pool) == num_questions
    for demo in vqav2.pool:  # the most frequent human answer (8 of the 10 in these files)
        assert demo.question and demo.caption != "unsure" and demo.caption == demo.caption.lower()
    by_id = {str(i["id"]): i for i in annotations["images"]}
    for demo in coco.pool:
        first = next(a["caption"] for a in annotations["annotations"] if str(a["image_id"]) == demo.key)
        assert demo.caption == first and demo.image.endswith(by_id[demo.key]["file_name"])
    again = {b.name: b for b in build_benchmarks(wf.evaluate)}
    assert again["coco-caption-kshot"].pool == coco.pool and again["vqav2-kshot"].items == vqav2.items
    other = {b.name: b for b in build_benchmarks(_workflow(files, "evaluate.seed=7").evaluate)}
    assert {d.key for d in other["coco-caption-kshot"].pool} != {d.key for d in coco.pool}


def test_a_pool_leaving_no_query_is_refused(benchmarks):
    items = benchmarks["coco-caption-kshot"].items
    with pytest.raises(ValueError, match="kshot_pool=4 must hold between 1 and 3"):
        split_demo_pool(items, 4, seed=0, name="coco-caption-kshot")


@pytest.fixture(scope="module")
def answerer(tmp_path_factory, benchmarks) -> CheckpointAnswerer:
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mm1"))
    pools = {name: list(b.pool) for name, b in benchmarks.items()}
    return CheckpointAnswerer(checkpoint, batch_size=8, demo_pools=pools, kshot_seed=11)


def _image_runs(ids: list[int], image_id: int) -> int:
    return sum(1 for i, t in enumerate(ids) if t == image_id and (i == 0 or ids[i - 1] != image_id))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_prompts_hold_k_demonstrations_then_the_query(answerer, benchmarks, name):
    bench = benchmarks[name]
    tokenizer = answerer.processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    image_tokens = answerer.processor.image_tokens_per_image
    pool = {d.key: d for d in bench.pool}
    items = {it.key: it for it in bench.items}
    for task in _tasks(bench):
        prompt, demo_keys = answerer._prompt(task, {})
        query = items[task.query]
        demos = [pool[k] for k in demo_keys]
        assert len(demos) == task.shots == len(set(demo_keys))
        assert all(d.image_id != query.image and d.image != query.image for d in demos)  # never the query
        ids = prompt.input_ids
        assert ids[0] == tokenizer.convert_tokens_to_ids(BOS)
        assert _image_runs(ids, image_id) == task.shots + 1 == len(prompt.image_keys)
        assert prompt.image_keys[-1][0] == "query"  # the query's image comes last
        assert prompt.pixel_values.shape[0] == task.shots + 1
        # Each demonstration's text follows its image, in order; the query's text (VQA) comes last.
        texts = [
            d.caption
            if bench.kind == "caption"
            else f"{VQA_TEMPLATE.format(question=d.question)} {d.caption}"
            for d in demos
        ]
        decoded = tokenizer.decode(ids)
        positions = [decoded.index(t) for t in texts]
        assert positions == sorted(positions)
        if bench.kind == "caption":
            assert ids[-image_tokens:] == [image_id] * image_tokens  # the model continues after the image
        else:
            tail = ids[len(ids) - ids[::-1].index(image_id) :]  # the text after the last image
            assert tokenizer.decode(tail).strip() == VQA_TEMPLATE.format(question=query.prompt)
    # Same seed, same query: the same demonstrations (what the actors of every checkpoint compute).
    task = _tasks(bench)[-1]
    assert answerer._prompt(task, {})[1] == answerer._prompt(task, {})[1]


@pytest.fixture(scope="module")
def evaluated(ray_session, wf, tmp_path_factory) -> tuple[dict, Path, list[str]]:
    # Two checkpoints (different weights): they must be asked with the same demonstrations.
    root = tmp_path_factory.mktemp("ckpts")
    candidates = {
        f"c{seed}": {"checkpoints": [{"step": 3, "uri": save_tiny_checkpoint(root / f"m{seed}", seed=seed)}]}
        for seed in (0, 1)
    }
    out = tmp_path_factory.mktemp("eval")
    lines: list[str] = []
    result = evaluate_candidates(EvalSpec.of(wf), candidates, candidates, out, log=lines.append)
    return result["outputs"], out, lines


def test_metrics_for_each_k_are_what_the_predictions_imply(evaluated, benchmarks):
    outputs, out, _ = evaluated
    assert len(outputs["results"]) == 2
    for row in outputs["results"]:
        predictions = _read_jsonl(out / f"predictions-{row['candidate']}-pretrain-3.jsonl")
        metrics = row["metrics"]
        for k in KSHOT:
            assert f"coco-caption-kshot/cider@{k}" in metrics
            assert f"vqav2-kshot/overall@{k}" in metrics and f"shapes-vqa-kshot/overall@{k}" in metrics
            picked = [p for p in predictions if p["benchmark"] == "coco-caption-kshot" and p["shots"] == k]
            expected = cider_d(
                {p["key"]: p["references"] for p in picked}, {p["key"]: p["prediction"] for p in picked}
            )
            assert metrics[f"coco-caption-kshot/cider@{k}"] == pytest.approx(expected.score, abs=1e-12)
            picked = [p for p in predictions if p["benchmark"] == "vqav2-kshot" and p["shots"] == k]
            scores = [answer_score(p["prediction"], p["references"]) for p in picked]
            assert metrics[f"vqav2-kshot/overall@{k}"] == pytest.approx(sum(scores) / len(scores), abs=1e-12)
            assert any(
                m.startswith("vqav2-kshot/") and m.endswith(f"@{k}") and "overall" not in m for m in metrics
            )
        assert not [m for m in metrics if "@" not in m]  # k-shot benchmarks only: every metric has its k
        counts = Counter((p["benchmark"], p["shots"]) for p in predictions)
        for name in BENCHMARKS:
            for k in KSHOT:
                assert counts[(name, k)] == len(benchmarks[name].items)
    assert outputs["kshot"]["demo_pools"] == {name: len(benchmarks[name].pool) for name in BENCHMARKS}
    assert outputs["benchmarks"]["vqav2-kshot"]["shots"] == KSHOT


def test_demonstrations_never_show_the_query_and_match_across_checkpoints(evaluated, benchmarks):
    _, out, _ = evaluated
    first, second = (_read_jsonl(out / f"predictions-c{s}-pretrain-3.jsonl") for s in (0, 1))
    for name, bench in benchmarks.items():
        pool = {d.key: d for d in bench.pool}
        items = {it.key: it for it in bench.items}
        for p in first:
            if p["benchmark"] != name:
                continue
            assert len(p["demos"]) == p["shots"]
            assert all(pool[k].image_id != items[p["key"]].image for k in p["demos"])
            if name == "vqav2-kshot":
                assert p["prompt"] == items[p["key"]].prompt  # the question is recorded with the answer
    demos = [{(p["benchmark"], p["shots"], p["key"]): p["demos"] for p in rows} for rows in (first, second)]
    assert demos[0] == demos[1]  # equal prompts for both checkpoints
    assert len({tuple(d) for (b, k, _), d in demos[0].items() if k == 2 and b == "coco-caption-kshot"}) > 1


def test_the_printed_tables_put_each_k_side_by_side(evaluated):
    outputs, _, lines = evaluated
    text = "\n".join(lines).splitlines()
    for name in BENCHMARKS:
        title = text.index(name)
        header = text[title + 1].split()
        assert header == ["candidate", "stage", "step", *(f"k={k}" for k in KSHOT)]
        assert text[title + 3].split()[:3] == ["c0", "pretrain", "3"]
    table = kshot_table(outputs["results"], "vqav2-kshot/overall", KSHOT)
    value = outputs["results"][0]["metrics"][f"vqav2-kshot/overall@{KSHOT[-1]}"]
    assert table.rows[0][-1] == f"{value:.3f}"
