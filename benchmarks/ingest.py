"""Data pipeline throughput: the Ray Data training loader vs a plain single-process loop, same work.

Both read the ingest shards of the same generated Shapes corpus and do: read parquet -> pack -> decode PNG ->
resize (mm1.data.preprocess) -> normalize (to_pixel_values) -> batch (collate_packed). The Ray pipeline is
`build_train_dataset(...).iter_torch_batches(collate_fn=collate_packed)`, measured with 1 and 2 CPUs (a fresh
`ray.init(num_cpus=N)` each), after one warm-up epoch that starts the workers.

    .venv/bin/python benchmarks/ingest.py [--scale 1.0] [--epochs 2] [--image-size 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray starts its workers at nice 15 (so drivers stay responsive). On a shared machine that starves them next
# to other users' nice-0 processes while the plain loop runs at nice 0: same priority for both, to compare.
os.environ.setdefault("RAY_worker_niceness", "0")

import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from mm1.config import Workflow  # noqa: E402
from mm1.data.ingest import run_ingest  # noqa: E402
from mm1.data.loader import build_train_dataset, collate_packed, pack_spec, pack_table, shard_files  # noqa: E402
from mm1.data.shapes_cli import SIZE_FIELDS  # noqa: E402


def _init(cpus: int) -> None:
    ray.shutdown()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its descendants (Ray's raylet, GCS and workers): a
    measure of the work done that a busy shared machine does not distort the way it distorts wall time."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier and p not in tree]
        tree.update(children)
        frontier = children
    return sum(cpu.get(p, 0.0) for p in tree)


def plain_loop(shard_dir: str, args: argparse.Namespace) -> dict:
    spec = pack_spec(shard_dir, image_tokens_per_image=args.tokens, seq_len=args.seq_len, max_images=4)
    samples = rows = images = 0
    start, cpu = time.perf_counter(), time.process_time()  # this process only (Ray idles meanwhile)
    for path in shard_files(shard_dir):
        table = pq.read_table(path, columns=["input_ids", "labels", "images"])
        for offset in range(0, table.num_rows, 256):
            packed = pack_table(table.slice(offset, 256), spec, args.image_size, 1)
            for b in range(0, len(packed["num_tokens"]), args.batch_size):
                batch = collate_packed({k: v[b : b + args.batch_size] for k, v in packed.items()})
                rows += batch["input_ids"].shape[0]
                images += batch["pixel_values"].shape[0]
            samples += int(packed["num_samples"].sum())
    return {
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
        "samples": samples,
        "rows": rows,
        "images": images,
    }


def ray_epoch(shard_dir: str, args: argparse.Namespace) -> dict:
    ds = build_train_dataset(
        shard_dir,
        image_size=args.image_size,
        image_grid=1,
        image_tokens_per_image=args.tokens,
        seq_len=args.seq_len,
        max_images=4,
        seed=0,
    )
    samples = rows = images = 0
    start, cpu = time.perf_counter(), tree_cpu_seconds()
    for batch in ds.iter_batches(batch_size=args.batch_size, batch_format="numpy", prefetch_batches=4):
        samples += int(batch["num_samples"].sum())
        tensors = collate_packed(batch)
        rows += tensors["input_ids"].shape[0]
        images += tensors["pixel_values"].shape[0]
    return {
        "seconds": time.perf_counter() - start,
        "cpu": tree_cpu_seconds() - cpu,
        "samples": samples,
        "rows": rows,
        "images": images,
    }


def _rate(r: dict) -> str:
    s = r["seconds"]
    return (
        f"{r['samples'] / s:8.0f} samples/s {r['rows'] / s:7.0f} rows/s {r['images'] / s:8.0f} images/s "
        f"| {1000 * r['cpu'] / r['samples']:6.2f} CPU-s per 1k samples"
    )


def main() -> None:
    # The consumer runs torch single-threaded, as in a Ray Train worker with cpus_per_worker=1 (Ray sets
    # OMP_NUM_THREADS from the worker's CPUs). With 2 intra-op threads on a 2-core box that Ray workers
    # also use, to_pixel_values' parallel regions stall (measured: 30x slower), for both loops alike.
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the default Shapes sizes")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per setting (after a warm-up)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16, help="image tokens per image")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", default="", help="keep the corpus and shards here (default: a temp dir)")
    args = parser.parse_args()

    if args.workdir:
        work = Path(args.workdir)
    else:  # the corpus and shards are only this run's
        work = Path(tempfile.mkdtemp(prefix="mm1-bench-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    wf = Workflow(name="bench")
    for field in SIZE_FIELDS:
        setattr(wf.data.shapes, field, max(1, round(getattr(wf.data.shapes, field) * args.scale)))
    _init(2)
    start = time.perf_counter()
    stats = run_ingest(wf.data, work, progress=False)
    print(
        f"ingest (2 CPUs, includes Ray worker start-up): {time.perf_counter() - start:.1f}s for "
        f"{stats['records_read']} records -> {stats['pretrain']['samples']} pre-training samples"
    )
    shard_dir = str(work / "pretrain")

    plain_loop(shard_dir, args)  # warm the page cache and imports
    plain: list[dict] = []
    results: dict[int, list[dict]] = {}
    for cpus in (1, 2):
        _init(cpus)
        ray_epoch(shard_dir, args)  # warm-up: start workers, import modules
        results[cpus] = []
        for _ in range(args.epochs):  # interleaved, so both see the same machine load
            plain.append(plain_loop(shard_dir, args))
            results[cpus].append(ray_epoch(shard_dir, args))
    ray.shutdown()
    best_plain = min(plain, key=lambda r: r["seconds"])
    best = {cpus: min(runs, key=lambda r: r["seconds"]) for cpus, runs in results.items()}
    print(f"plain loop (1 process)   {_rate(best_plain)}")
    for cpus, r in best.items():
        print(f"ray data, {cpus} CPU(s)       {_rate(r)}")
    ratio = (best[2]["samples"] / best[2]["seconds"]) / (best_plain["samples"] / best_plain["seconds"])
    cpu_plain = best_plain["cpu"] / best_plain["samples"]
    cpu_ray = best[2]["cpu"] / best[2]["samples"]
    print(
        f"CPU work per sample, ray(2 CPUs) / plain: {cpu_ray / cpu_plain:.2f}x "
        f"(on an idle 2-core machine the ratio can reach about 2 / that = {2 * cpu_plain / cpu_ray:.2f}x)"
    )
    print(
        f"ratio ray(2 CPUs) / plain loop: {ratio:.2f}x  (2 CPUs / 1 CPU: "
        f"{best[1]['seconds'] / best[2]['seconds']:.2f}x); best of {args.epochs} epochs each, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
