"""Training telemetry, end to end: during a real Ray Train fit (2 workers, a tiny model) every worker's
mm1_train_* gauges reach this node's Prometheus endpoint, tagged with run/stage/candidate/rank, and move."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_scrape import Sample, metrics_port, scrape, select
from train_helpers import SEQ_LEN

from mm1 import metrics
from mm1.config import TrainConfig
from mm1.train.launch import fit_stage

pytestmark = pytest.mark.e2e
TAGS = {"run": "telemetry-test", "stage": "pretrain", "candidate": "connector.type-avgpool"}


def _fit(ingested, tmp_path, stage: TrainConfig) -> None:
    fit_stage(
        stage_name=TAGS["stage"],
        stage=stage,
        label="telemetry",
        run_name="telemetry",
        storage_path=str(tmp_path / "ray"),
        dataset=ingested.dataset(),
        model_cfg=ingested.model_cfg,
        tokenizer_dir=ingested.tokenizer_dir,
        seq_len=SEQ_LEN,
        run=TAGS["run"],
        candidate=TAGS["candidate"],
    )


def _scrape_while(thread: threading.Thread, port: int) -> list[list[Sample]]:
    """Our run's mm1_train_* samples, one list per scrape, until the fit ends."""
    scrapes = []
    while thread.is_alive():
        scrapes.append([s for s in scrape(port) if s.name.startswith("ray_mm1_train_") and _ours(s)])
        time.sleep(0.5)
    return scrapes


def _ours(sample: Sample) -> bool:
    return TAGS.items() <= sample.labels.items()


def _steps_by_rank(scrapes: list[list[Sample]]) -> dict[str, list[float]]:
    """Distinct values of mm1_train_step each rank showed, in scrape order."""
    seen: dict[str, list[float]] = {}
    for samples in scrapes:
        for s in select(samples, metrics.exported_name("mm1_train_step")):
            values = seen.setdefault(s.labels["rank"], [])
            if not values or values[-1] != s.value:
                values.append(s.value)
    return seen


def test_every_worker_exports_moving_training_gauges(ingested, tmp_path, ray_session):
    stage = TrainConfig(
        steps=8,
        batch_size=4,
        lr=1e-3,
        warmup_steps=2,
        checkpoint_every=8,  # one checkpoint, at the end: the fit is mostly steps (~2 s each here)
        log_every=1,
        num_workers=2,
        cpus_per_worker=1,
        max_failures=0,
    )
    port = metrics_port()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _fit(ingested, tmp_path, stage)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    fit = threading.Thread(target=run, daemon=True)
    fit.start()
    scrapes = _scrape_while(fit, port)
    fit.join()
    if errors:
        raise errors[0]

    steps = _steps_by_rank(scrapes)
    print(f"mm1_train_step seen by rank over {len(scrapes)} scrapes: {steps}")
    assert set(steps) == {"0", "1"}, f"each worker exports its own gauges, tagged by rank: {steps}"
    for rank, values in steps.items():
        assert len(values) >= 2 and values == sorted(values), f"rank {rank}'s step did not rise: {values}"
        assert all(1 <= v <= stage.steps for v in values), values
    exported = {s.name for samples in scrapes for s in samples}
    expected = {metrics.exported_name(name) for name in metrics.TRAIN_ROW_METRICS.values()}
    assert expected <= exported, f"missing: {expected - exported}"
    losses = [s.value for samples in scrapes for s in select(samples, "ray_mm1_train_loss")]
    assert losses and all(0 < v < 100 for v in losses), losses
    lrs = [s.value for samples in scrapes for s in select(samples, "ray_mm1_train_lr")]
    assert lrs and all(0 < v <= 1e-3 for v in lrs), lrs
    waits = [s.value for samples in scrapes for s in select(samples, "ray_mm1_train_data_wait_fraction")]
    assert waits and all(0 <= v <= 1 for v in waits), waits
