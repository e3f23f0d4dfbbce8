"""The reduced quick start the end-to-end tests run: small enough for CI, large enough that every step does
real work (two candidates, real Ray Train fits, real evaluation and serving)."""

from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "workflows" / "quickstart.yaml"

# Two candidates (a connector sweep) at one CPU each, so the sweep, selection and the ablation table are
# exercised and Ray Data keeps CPUs of its own in the 4-CPU test session.
REDUCED = [
    "sweep={model.connector.type: [avgpool, c-abstractor]}",
    "pretrain.cpus_per_worker=1",
    "sft.cpus_per_worker=1",
    "data.shapes.caption_samples=300",
    "data.shapes.interleaved_docs=60",
    "data.shapes.text_samples=100",
    "data.shapes.sft_samples=300",
    "pretrain.steps=6",
    "pretrain.checkpoint_every=3",
    "pretrain.warmup_steps=2",
    "pretrain.batch_size=4",
    "sft.steps=4",
    "sft.checkpoint_every=2",
    "sft.warmup_steps=1",
    "sft.batch_size=4",
    "evaluate.num_scenes=20",
    "evaluate.num_questions=40",
    "evaluate.max_new_tokens=8",
    "deploy.keep_serving=false",
]
