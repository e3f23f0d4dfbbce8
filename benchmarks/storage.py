"""The reduced quick start on a two-node `ray start` cluster, run folder on a local disk vs in an S3 bucket.

Both runs go to the same cluster (its nodes share this machine's disk, so a local root works too) with the
same overrides as `make test`'s cluster test; the S3 side is moto's standalone server on this machine, reached
through AWS_ENDPOINT_URL like any S3-compatible store. Prints each run's wall time (submit to job done), the
ratio S3 / local, each step's wall time from its manifest, and the bytes each step left in the bucket.

    .venv/bin/python benchmarks/storage.py [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the cluster and S3-server helpers the tests use

from quickstart_overrides import QUICKSTART, REDUCED  # noqa: E402
from ray_cluster import Cluster, free_ports, new_cluster_env, submit  # noqa: E402
from s3_server import start_s3_server  # noqa: E402

from mm1 import storage  # noqa: E402
from mm1.workflow.steps import STEP_NAMES  # noqa: E402

OVERRIDES = [*REDUCED, "sweep={}", "pretrain.num_workers=2", "pretrain.placement_strategy=SPREAD"]


def one_run(cluster: Cluster, root: str, port: int) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    proc = submit(
        cluster.address, cluster.env, QUICKSTART, [*OVERRIDES, f"storage.root={root}", f"deploy.port={port}"]
    )
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"the run on {root} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    run = storage.join(root, "quickstart")
    steps = {s: json.loads(storage.read_text(f"{run}/{s}/manifest.json"))["duration_s"] for s in STEP_NAMES}
    return wall, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="pairs of runs (local, then S3), best of each")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mm1-bench-storage-"))
    server_proc, server = start_s3_server(work / "moto.log")
    os.environ.update(server.env)
    env, token = new_cluster_env()
    cluster = Cluster(env, token, isolate=False)
    try:
        cluster.start()
        port = free_ports(1)[0]  # one port for every run: Serve keeps the HTTP options it first started with
        results: dict[str, list[tuple[float, dict[str, float]]]] = {"local": [], "s3": []}
        for n in range(args.runs):
            for kind in ("local", "s3"):
                root = str(work / f"runs-{n}") if kind == "local" else f"{server.new_bucket()}/runs"
                results[kind].append(one_run(cluster, root, port))
                print(f"run {n} {kind}: {results[kind][-1][0]:.1f} s", flush=True)
                if kind == "s3":
                    usage = server.usage(f"{root}/quickstart")
                    print(
                        "  bytes in the bucket per step: "
                        + ", ".join(f"{k} {v:,}" for k, v in sorted(usage.items()))
                    )
        best = {kind: min(runs, key=lambda r: r[0]) for kind, runs in results.items()}
        print(f"\n{'step':<10} {'local s':>9} {'s3 s':>9}")
        for step in STEP_NAMES:
            print(f"{step:<10} {best['local'][1][step]:>9.1f} {best['s3'][1][step]:>9.1f}")
        local, s3 = best["local"][0], best["s3"][0]
        print(f"{'wall':<10} {local:>9.1f} {s3:>9.1f}   s3 / local = {s3 / local:.2f}x (submit to job done)")
    finally:
        cluster.kill()
        server_proc.terminate()


if __name__ == "__main__":
    main()
