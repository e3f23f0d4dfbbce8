"""The cluster story end to end: a two-node `ray start` cluster whose nodes share no disk, the run folder, the
corpora and the benchmark files in an S3 bucket (the session's real S3-compatible server), a reduced quick
start submitted with `mm1 submit`; then the head node lost in the middle of pre-training and the run resumed
on a fresh cluster from its checkpoints in the bucket."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from openai import OpenAI
from quickstart_overrides import QUICKSTART, REDUCED
from ray_cluster import Cluster, free_ports, new_cluster_env, submission_id, submit

from mm1 import storage
from mm1.config import ShapesConfig
from mm1.data.shapes_corpus import write_shapes_corpora, write_shapes_eval
from mm1.workflow.steps import STEP_NAMES

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(s3_server):
    env, token = new_cluster_env()  # the S3 variables are in this process's environment: the nodes get them
    nodes = Cluster(env, token)
    try:
        yield nodes.start()
    finally:
        nodes.kill()


def upload_inputs(s3_server, bucket: str, tmp_path: Path) -> list[str]:
    """Shapes corpora (the reduced quick start's sizes) and COCO/VQAv2 files, uploaded to the bucket; the
    overrides that point the workflow at them."""
    corpora = write_shapes_corpora(
        tmp_path / "corpora",
        ShapesConfig(caption_samples=300, interleaved_docs=60, text_samples=100, sft_samples=300),
        parallel=False,
    )
    s3_server.upload(tmp_path / "corpora", f"{bucket}/corpora")
    bench = write_shapes_eval(tmp_path / "bench", num_scenes=4, seed=77)
    s3_server.upload(tmp_path / "bench", f"{bucket}/bench")
    assert set(corpora) == {"captions", "interleaved", "text", "sft"}
    return [
        f"data.corpora.captions=[{bucket}/corpora/captions]",
        f"data.corpora.interleaved=[{bucket}/corpora/interleaved/*.parquet]",
        f"data.corpora.text=[{bucket}/corpora/text]",
        f"data.corpora.sft=[{bucket}/corpora/sft/00000.json]",
        "evaluate.benchmarks=[shapes-vqa,coco-caption,vqav2]",
        *(
            f"evaluate.{key}={bucket}/bench/{Path(bench[name]).name}"
            for key, name in (
                ("coco_annotations", "coco_annotations"),
                ("coco_images", "images"),
                ("vqav2_questions", "vqav2_questions"),
                ("vqav2_annotations", "vqav2_annotations"),
                ("vqav2_images", "images"),
            )
        ),
    ]


def job_of(cluster: Cluster, stdout: str) -> dict:
    sid = submission_id(stdout)
    return next(j for j in cluster.get("/api/jobs/") if j.get("submission_id") == sid)


def train_worker_nodes(cluster: Cluster, job_id: str) -> set[str]:
    actors = cluster.get(
        "/api/v0/actors?detail=1&limit=1000&filter_keys=class_name&filter_predicates=%3D"
        "&filter_values=RayTrainWorker"
    )["data"]["result"]["result"]
    return {a["node_id"] for a in actors if a.get("job_id") == job_id}


def test_object_store_run_on_nodes_that_share_no_disk(cluster, s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    port = free_ports(1)[0]
    overrides = [
        *REDUCED,
        *upload_inputs(s3_server, bucket, tmp_path),
        f"storage.root={bucket}/runs",
        "sweep={}",
        "pretrain.num_workers=2",
        "pretrain.placement_strategy=SPREAD",
        f"deploy.port={port}",
    ]
    started = time.perf_counter()
    proc = submit(cluster.address, cluster.env, QUICKSTART, overrides)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:]
    job = job_of(cluster, proc.stdout)
    assert job["status"] == "SUCCEEDED" and job["metadata"]["run_dir"] == f"{bucket}/runs/quickstart"
    assert len(train_worker_nodes(cluster, job["job_id"])) == 2  # pre-training ran on both nodes

    run = f"{bucket}/runs/quickstart"
    for step in STEP_NAMES:  # every step's manifest and outputs are in the bucket
        manifest = json.loads(storage.read_text(f"{run}/{step}/manifest.json"))
        assert manifest["status"] == "done", step
    ingest = json.loads(storage.read_text(f"{run}/ingest/manifest.json"))
    [dataset] = ingest["outputs"]["datasets"].values()  # one data section: the step's folder itself
    assert dataset["pretrain"] == f"{run}/ingest/pretrain"
    assert ingest["headline"]["records_dropped"] == 0 and ingest["headline"]["records_kept"] == 760
    assert storage.list_files(f"{run}/ingest/pretrain", suffix=".parquet")
    winner = json.loads(storage.read_text(f"{run}/select/manifest.json"))["outputs"]["winner"]
    assert winner["checkpoint"].startswith(f"{run}/sft/ray/")
    assert storage.is_file(f"{winner['checkpoint']}/model.safetensors")
    evaluation = json.loads(storage.read_text(f"{run}/evaluate/manifest.json"))["outputs"]
    scored = evaluation["results"][0]["metrics"]
    assert "coco-caption/cider" in scored and "vqav2/overall" in scored  # benchmark files read from s3
    assert storage.is_file(f"{run}/report/report.html")

    # The deploy step served the winner straight from the bucket; the endpoint outlives the job.
    endpoint = json.loads(storage.read_text(f"{run}/deploy/manifest.json"))["outputs"]
    assert endpoint["url"] == f"http://127.0.0.1:{port}/v1" and endpoint["sample"]["answer"] is not None
    reply = OpenAI(base_url=endpoint["url"], api_key="unused").chat.completions.create(
        model=endpoint["model"], messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None

    usage = s3_server.usage(run)
    print(f"\ns3 cluster run: {wall:.1f} s wall; bytes in the bucket per step: {usage}")
    assert usage["ingest"] > 0 and usage["pretrain"] > usage["ingest"] // 100

    # A rerun skips every step that has something to skip (deploy always serves anew).
    again = submit(cluster.address, cluster.env, QUICKSTART, overrides)
    assert again.returncode == 0, again.stdout[-8000:]
    for step in STEP_NAMES:
        if step != "deploy":
            assert f"[{step}] skipped: unchanged" in again.stdout, step


def checkpoint_names(ray_runs: str) -> set[str]:
    """Checkpoint folders of the Ray Train runs under `ray_runs`, by name."""
    names = {storage.name(c) for run in storage.list_dirs(ray_runs) for c in storage.list_dirs(run)}
    return {name for name in names if re.fullmatch(r"checkpoint_\d+", name)}


def registered_step(ray_runs: str) -> int:
    """The step of the newest checkpoint Ray Train has registered (its snapshot in the bucket), 0 if none.

    A checkpoint folder exists before the controller registers it, and only registered ones are resumed from.
    """
    newest = 0
    for run in storage.list_dirs(ray_runs):
        snapshot = storage.join(run, "checkpoint_manager_snapshot.json")
        if not storage.is_file(snapshot):
            continue
        try:
            latest = json.loads(storage.read_text(snapshot)).get("latest_checkpoint_result") or {}
        except json.JSONDecodeError:  # read while the controller rewrote it
            continue
        match = re.fullmatch(r"checkpoint_(\d+)", latest.get("checkpoint_dir_name", ""))
        newest = max(newest, int(match.group(1)) if match else 0)
    return newest


def test_a_lost_head_resumes_from_the_checkpoints_in_the_bucket(s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    overrides = [
        *REDUCED,
        f"storage.root={bucket}/runs",
        "sweep={}",
        "pretrain.num_workers=2",
        "pretrain.placement_strategy=SPREAD",
        "pretrain.steps=40",
        "pretrain.checkpoint_every=5",
        "pretrain.keep_checkpoints=3",
        "sft.enabled=false",
        "deploy.enabled=false",
    ]
    ray_runs = f"{bucket}/runs/quickstart/pretrain/ray"
    env, token = new_cluster_env()
    first = Cluster(env, token).start()
    try:
        proc = submit(first.address, env, QUICKSTART, overrides, follow=False)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
        # Kill once Ray Train has registered step 10's checkpoint in the bucket (its snapshot says so).
        deadline = time.monotonic() + 600
        while (registered := registered_step(ray_runs)) < 10:
            assert time.monotonic() < deadline, "pre-training never registered step 10's checkpoint"
            time.sleep(0.5)
    finally:
        assert first.kill() > 0  # the head and its worker, kill -9: their disks (tmpfs) are gone too
    saved = sorted(int(name.split("_")[1]) for name in checkpoint_names(ray_runs))
    assert saved and saved[-1] < 40

    second = Cluster(*new_cluster_env()).start()  # a fresh head: nothing of the old one's disk
    try:
        proc = submit(second.address, second.env, QUICKSTART, overrides)
        assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:]
    finally:
        second.kill()
    assert "[ingest] skipped: unchanged" in proc.stdout
    resumed_at = int(proc.stdout.split("[pretrain:base] resumed at step ")[1].split(";")[0])
    # From the newest checkpoint Ray Train had registered (a newer folder may be one it never registered).
    assert resumed_at in saved and resumed_at >= registered >= 10
    metrics = storage.read_text(f"{bucket}/runs/quickstart/pretrain/metrics/base.jsonl")
    history = [json.loads(line) for line in metrics.splitlines()]
    steps = [row["step"] for row in history]
    assert steps == list(range(1, 41))  # each step once: none repeated beyond the last checkpoint
    resumed = [row for row in history if "resumed_from" in row]
    assert [(r["step"], r["resumed_from"]) for r in resumed] == [(resumed_at + 1, resumed_at)]
    print(f"\nhead lost after checkpoint {saved[-1]}; the fresh cluster resumed at step {resumed_at}")
