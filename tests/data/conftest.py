"""One small Shapes ingest shared by the ingest and loader tests (Ray from tests/conftest.py's ray_session)."""

from __future__ import annotations

import pytest

from mm1.config import Workflow


def small_workflow(seed: int = 0) -> Workflow:
    wf = Workflow(name="data-tests")
    wf.data.shapes.caption_samples = 120
    wf.data.shapes.interleaved_docs = 40
    wf.data.shapes.text_samples = 60
    wf.data.shapes.sft_samples = 80
    wf.data.shapes.seed = seed
    wf.data.vocab_size = 400
    return wf


@pytest.fixture(scope="session")
def shapes_ingest(ray_session, tmp_path_factory):
    from mm1.data.ingest import run_ingest

    out = tmp_path_factory.mktemp("ingest")
    stats = run_ingest(small_workflow().data, out, progress=False)
    return out, stats
