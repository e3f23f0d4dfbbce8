"""Fixtures for the training tests: one tiny Shapes ingest per test module, and a tiny model to train on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import WORKFLOW, Ingested


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, ray_session) -> Ingested:
    """Shapes corpora -> tokenizer + pre-training shards, once per test module (~25 s here)."""
    from mm1.config import loads
    from mm1.data.ingest import run_ingest

    wf = loads(WORKFLOW)
    out = Path(tmp_path_factory.mktemp("ingest"))
    run_ingest(wf.data, out, progress=False)
    return Ingested(str(out / "pretrain"), str(out / "tokenizer"), wf.model)
