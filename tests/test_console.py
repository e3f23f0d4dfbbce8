"""The console: one line per progress event (a live bar on a terminal), Ray's chatter in the run's log file."""

from __future__ import annotations

import io

from mm1.console import Console, step_line

ROW = {"loss": 5.28891, "lr": 4.3e-4, "tokens_per_s": 1990.4, "data_wait_fraction": 0.008}
RAY_NOISE = [
    "Reporting training result 1: TrainingReport(checkpoint=Checkpoint(filesystem=local, path=/x))",
    "[2026-12-06 23:36:34,225 E 22238 22353] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher'",
    "Writing model shards: 100%|##########| 1/1 [00:00<00:00, 75.15it/s]",
]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def console(tmp_path, live: bool, verbose: bool = False) -> tuple[Console, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    con = Console(tmp_path / "logs" / "ray.log", verbose=verbose, out=out, live=live)
    con._clock = clock
    return con, out, clock


def test_plain_lines_once_each_with_an_eta_and_ray_noise_in_the_file(tmp_path):
    con, out, clock = console(tmp_path, live=False)
    con.line("[pretrain] 1 run(s), 1 at a time")
    for step in (1, 2, 3, 4):
        con.worker_lines([step_line("pretrain:base", step, 4, ROW)], "RayTrainWorker", False)
        con.worker_lines(RAY_NOISE, "TrainController", True)
        clock.now += 10
    con.worker_lines(["[pretrain:base] resumed at step 0; lr=5e-4"], "RayTrainWorker", False)
    con.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[pretrain] 1 run(s), 1 at a time"
    steps = [line for line in lines if " loss " in line]
    assert len(steps) == len(set(steps)) == 4  # one line per event, none twice
    assert steps[0].endswith("ETA ?") and steps[1].endswith("ETA 0:00:20") and "ETA" not in steps[3]
    assert steps[0].startswith("[pretrain:base] step 1/4 loss 5.2889 lr 4.30e-04 tok/s 1990 wait 0.8%")
    assert lines[-1].startswith("[pretrain:base] resumed at step 0")
    assert not any(" E " in line or "TrainingReport" in line or "Writing" in line for line in lines)
    logged = (tmp_path / "logs" / "ray.log").read_text()
    assert all(noise in logged for noise in RAY_NOISE) and "(TrainController)" in logged


def test_a_live_bar_redraws_in_place_and_leaves_each_runs_last_step(tmp_path):
    con, out, clock = console(tmp_path, live=True)
    for step in (1, 2):
        for label in ("sft:a", "sft:b"):
            con.worker_lines([step_line(label, step, 2, ROW)], "RayTrainWorker", False)
        clock.now += 5
    con.line("[sft] done")
    con.close()
    text = out.getvalue()
    assert "\r\x1b[K[sft:a] 1/2 #####..... loss 5.289 ETA ? | [sft:b] 1/2" in text
    finished = [line for line in text.replace("\r\x1b[K", "\n").splitlines() if line.endswith("wait 0.8%")]
    assert sorted(finished) == sorted(
        [step_line("sft:a", 2, 2, ROW), step_line("sft:b", 2, 2, ROW)]
    )  # each run's last step stays on screen, once
    assert text.endswith("\x1b[K[sft] done\n")  # the bar is gone once no run is left


def test_a_restart_from_a_checkpoint_starts_the_eta_over(tmp_path):
    con, out, clock = console(tmp_path, live=False)
    for step in (1, 2, 3):
        con.worker_lines([step_line("pretrain:base", step, 10, ROW)], "w", False)
        clock.now += 1
    clock.now += 1000  # the run was lost and resumed from step 2's checkpoint
    con.worker_lines([step_line("pretrain:base", 3, 10, ROW)], "w", False)
    clock.now += 2
    con.worker_lines([step_line("pretrain:base", 4, 10, ROW)], "w", False)
    assert out.getvalue().splitlines()[-1].endswith("ETA 0:00:12")  # 2 s a step since the restart


def test_verbose_shows_ray_lines_too(tmp_path):
    con, out, _ = console(tmp_path, live=False, verbose=True)
    con.worker_lines(RAY_NOISE[:1], "RayTrainWorker", False)
    assert "(RayTrainWorker) Reporting training result 1" in out.getvalue()
