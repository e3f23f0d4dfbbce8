"""The ingest step runs once per distinct data section of the sweep's candidates (MM1's data-mixture
ablation): two mixtures, two ingests; a sweep over other sections, one ingest shared by every candidate."""

from __future__ import annotations

import json

from mm1 import storage
from mm1.config import loads
from mm1.workflow.outputs import IngestOutputs
from mm1.workflow.runner import run_workflow
from mm1.workflow.steps import workflow_steps
from mm1.workflow.sweep import candidates

SMALL = """
name: variants
storage: {{root: {root}}}
data:
  shapes: {{caption_samples: 40, interleaved_docs: 10, text_samples: 20, sft_samples: 12}}
  vocab_size: 320
sweep: {sweep}
"""


def ingest_only(tmp_path, sweep: str) -> tuple[dict, dict[str, str]]:
    """The ingest manifest, and each candidate's dataset key found the way training steps find it."""
    wf = loads(SMALL.format(root=tmp_path, sweep=sweep))
    manifest = run_workflow(wf, workflow_steps(), until="ingest", log=lambda _: None)["ingest"]
    outputs = IngestOutputs.from_dict(manifest["outputs"])
    by_candidate = {}
    for cand in candidates(wf):
        [key] = [k for k, d in outputs.datasets.items() if d == outputs.for_candidate(cand)]
        by_candidate[cand.name] = key
    return manifest, by_candidate


def test_a_mixture_sweep_ingests_each_mixture(ray_session, tmp_path):
    manifest, by_candidate = ingest_only(tmp_path, "{data.mixture.captions: [0.2, 0.8]}")
    datasets = manifest["outputs"]["datasets"]
    assert len(datasets) == 2 and manifest["headline"]["datasets"] == 2
    assert sorted(by_candidate) == ["mixture.captions-0.2", "mixture.captions-0.8"]
    assert len(set(by_candidate.values())) == 2  # each candidate trains on its own mixture
    declared = {}
    for name, key in by_candidate.items():
        stats = json.loads(storage.read_text(datasets[key]["stats"]))
        declared[name] = stats["mixture"]["declared"]["captions"]
        assert datasets[key]["pretrain"] == str(tmp_path / "variants" / "ingest" / key / "pretrain")
        assert storage.list_files(datasets[key]["pretrain"], suffix=".parquet")
    assert declared == {"mixture.captions-0.2": 0.2, "mixture.captions-0.8": 0.8}


def test_a_sweep_over_training_keys_shares_one_ingest(ray_session, tmp_path):
    manifest, by_candidate = ingest_only(tmp_path, "{sft.lr: [0.001, 0.0005]}")
    datasets = manifest["outputs"]["datasets"]
    assert len(datasets) == 1 and len(by_candidate) == 2 and len(set(by_candidate.values())) == 1
    [dataset] = datasets.values()
    assert dataset["pretrain"] == str(tmp_path / "variants" / "ingest" / "pretrain")  # the step's own folder
