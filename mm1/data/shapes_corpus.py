"""Write the Shapes world in the real corpus formats (MM1.md), so ingest reads it like any other corpus.

Layout under `out_dir`:
    captions/00000.tar        webdataset: KEY.jpg + KEY.txt + KEY.json, files of a key adjacent
    interleaved/00000.parquet OBELICS-style: images (PNG bytes) / texts lists, metadata JSON string
    text/00000.jsonl          {"text": ...} per line
    sft/00000.json            LLaVA conversations; images under sft/images/00000/ (paths relative to the JSON)
Each shard is a pure function of (seed, corpus, shard index), so shards can be written in parallel (Ray tasks
when Ray is initialized) and the corpus is identical either way. `out_dir` is any mm1.storage location: for an
object store each task writes its shard on its own disk and uploads it (tasks may run on any node).
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mm1 import storage
from mm1.config import ShapesConfig
from mm1.data import shapes
from mm1.data.chat import IMAGE
from mm1.data.images import png_encode

SHARD_SIZES = {"captions": 1000, "interleaved": 200, "text": 1000, "sft": 1000}
CORPUS_IDS = {"captions": 1, "interleaved": 2, "text": 3, "sft": 4, "eval": 5}
JPEG_QUALITY = 95
MANIFEST = "shapes.json"


def _rng(seed: int, corpus: str, shard: int) -> np.random.Generator:
    return np.random.default_rng([seed, CORPUS_IDS[corpus], shard])


def _jpeg(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards for the same seed
    tar.addfile(info, io.BytesIO(data))


def write_caption_shard(path: Path, rng: np.random.Generator, count: int, shard: int) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            key = f"{shard:05d}{i:04d}"
            scene = shapes.sample_scene(rng)
            text = shapes.caption(scene) if rng.random() < 0.5 else shapes.paraphrase(scene, rng)
            meta = {
                "key": key,
                "caption": text,
                "canonical_caption": shapes.caption(scene),
                "width": shapes.CANVAS,
                "height": shapes.CANVAS,
                "url": None,
                "scene": scene.to_dict(),
            }
            _add_member(tar, f"{key}.jpg", _jpeg(shapes.render(scene)))
            _add_member(tar, f"{key}.txt", text.encode())
            _add_member(tar, f"{key}.json", json.dumps(meta).encode())


OBELICS_SCHEMA = pa.schema(
    [
        ("images", pa.list_(pa.binary())),
        ("texts", pa.list_(pa.string())),
        ("metadata", pa.string()),
        ("general_metadata", pa.string()),
    ]
)


def write_interleaved_shard(path: Path, rng: np.random.Generator, count: int, shard: int) -> None:
    rows: dict[str, list] = {name: [] for name in OBELICS_SCHEMA.names}
    for d in range(count):
        # (image, text, metadata) per index: exactly one of image/text is set
        entries: list[tuple[bytes | None, str | None, dict | None]] = []
        for _ in range(int(rng.integers(2, 6))):
            scene = shapes.sample_scene(rng)
            text = (None, shapes.describe_sentence(scene, rng), None)
            meta = {"scene": scene.to_dict(), "canonical_caption": shapes.caption(scene)}
            image = (png_encode(shapes.render(scene)), None, meta)
            entries += [text, image] if rng.random() < 0.5 else [image, text]
        rows["images"].append([e[0] for e in entries])
        rows["texts"].append([e[1] for e in entries])
        rows["metadata"].append(json.dumps([e[2] for e in entries]))
        rows["general_metadata"].append(json.dumps({"url": f"shapes://doc/{shard}/{d}"}))
    pq.write_table(pa.table(rows, schema=OBELICS_SCHEMA), path)


def write_text_shard(path: Path, rng: np.random.Generator, count: int, shard: int) -> None:
    lines = [json.dumps({"text": t}) for t in shapes.text_sentences(rng, count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def sft_turns(
    scene: shapes.Scene,
    rng: np.random.Generator,
    min_turns: int = 1,
    max_turns: int = 3,
    pool: str = "per-type",
    type_weights: dict[str, float] | None = None,
) -> list[dict]:
    """`min_turns` to `max_turns` question/answer turns (as many as the scene's question pool holds, at
    most) in random order, in LLaVA form (the image before the first question). `pool`: "per-type" draws
    from one question per type (`shapes.questions`), "every" from all of them (`shapes.every_question`).
    `type_weights` makes a question's chance of being drawn proportional to its type's weight (default 1)."""
    table = (shapes.every_question if pool == "every" else shapes.questions)(scene, rng)
    wanted = int(rng.integers(min_turns, max_turns + 1))
    weights = np.array([float((type_weights or {}).get(q.type, 1.0)) for q in table])
    if type_weights and weights.any():  # a scene whose every question weighs 0 keeps its whole pool
        table = [q for q, w in zip(table, weights, strict=True) if w > 0]
        weights = weights[weights > 0]
        picks = rng.choice(len(table), size=min(len(table), wanted), replace=False, p=weights / weights.sum())
    else:
        picks = rng.choice(len(table), size=min(len(table), wanted), replace=False)
    turns = []
    for n, i in enumerate(picks):
        question = table[int(i)].question
        turns.append({"from": "human", "value": f"{IMAGE}\n{question}" if n == 0 else question})
        turns.append({"from": "gpt", "value": table[int(i)].answer})
    return turns


def write_sft_shard(
    path: Path,
    rng: np.random.Generator,
    count: int,
    shard: int,
    turns: tuple[int, int] = (1, 3),
    pool: str = "per-type",
    type_weights: dict[str, float] | None = None,
) -> None:
    image_dir = path.parent / "images" / f"{shard:05d}"
    image_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        scene = shapes.sample_scene(rng)
        relative = f"images/{shard:05d}/{i:06d}.png"
        (path.parent / relative).write_bytes(png_encode(shapes.render(scene)))
        entries.append(
            {
                "id": f"{shard:05d}-{i:06d}",
                "image": relative,
                "conversations": sft_turns(scene, rng, *turns, pool, type_weights),
            }
        )
    path.write_text(json.dumps(entries), encoding="utf-8")


WRITERS: dict[str, tuple[Callable, str]] = {
    "captions": (write_caption_shard, "tar"),
    "interleaved": (write_interleaved_shard, "parquet"),
    "text": (write_text_shard, "jsonl"),
    "sft": (write_sft_shard, "json"),
}


def _write_shard(out_dir: str, corpus: str, shard: int, count: int, cfg: ShapesConfig) -> str:
    writer, ext = WRITERS[corpus]
    relative = f"{corpus}/{shard:05d}.{ext}"
    extra = (
        {
            "turns": (cfg.sft_min_turns, cfg.sft_max_turns),
            "pool": cfg.sft_questions,
            "type_weights": dict(cfg.sft_type_weights),
        }
        if corpus == "sft"
        else {}
    )
    if not storage.is_remote(out_dir):
        path = Path(out_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path, _rng(cfg.seed, corpus, shard), count, shard, **extra)
        return str(path)
    with tempfile.TemporaryDirectory() as tmp:  # the shard (and its SFT images) written here, then uploaded
        path = Path(tmp) / relative
        path.parent.mkdir(parents=True)
        writer(path, _rng(cfg.seed, corpus, shard), count, shard, **extra)
        storage.copy_tree(str(path.parent), storage.join(out_dir, corpus))
    return storage.join(out_dir, relative)


def _plan(cfg: ShapesConfig) -> list[tuple[str, int, int]]:
    """(corpus, shard index, samples) for every shard."""
    totals = {
        "captions": cfg.caption_samples,
        "interleaved": cfg.interleaved_docs,
        "text": cfg.text_samples,
        "sft": cfg.sft_samples,
    }
    plan = []
    for corpus, total in totals.items():
        size = SHARD_SIZES[corpus]
        for shard, start in enumerate(range(0, total, size)):
            plan.append((corpus, shard, min(size, total - start)))
    return plan


def write_shapes_corpora(
    out_dir: str | Path, cfg: ShapesConfig, parallel: bool | None = None
) -> dict[str, list[str]]:
    """Generate the Shapes corpora in the real formats; returns corpus -> shard locations.

    `parallel=None` uses Ray tasks when Ray is initialized (shards are independent). A folder that already
    holds this exact configuration (its `shapes.json` matches) is reused, not rewritten.
    """
    out = storage.absolute(str(out_dir))
    plan = _plan(cfg)
    manifest = storage.join(out, MANIFEST)
    wanted = {"version": 1, "config": asdict(cfg)}
    if storage.is_file(manifest):
        previous = json.loads(storage.read_text(manifest))
        if previous.get("identity") == wanted:
            return previous["files"]
    if parallel is None:
        import ray

        parallel = ray.is_initialized()
    if parallel:
        import ray

        task = ray.remote(num_cpus=1)(_write_shard)
        paths = ray.get([task.remote(out, c, s, n, cfg) for c, s, n in plan])
    else:
        paths = [_write_shard(out, c, s, n, cfg) for c, s, n in plan]
    result: dict[str, list[str]] = {c: [] for c in WRITERS}
    for (corpus, _, _), path in zip(plan, paths, strict=True):
        result[corpus].append(path)
    storage.write_text(manifest, json.dumps({"identity": wanted, "files": result}, indent=1))
    return result


# --------------------------------------------------------------------------------------- evaluation


def write_shapes_eval(
    out_dir: str | Path, num_scenes: int, seed: int, paraphrases: int = 2
) -> dict[str, Path]:
    """Held-out Shapes scenes as COCO caption + VQAv2 files (read them with mm1.eval.coco).

    References per image: the canonical caption first, then `paraphrases` paraphrases. One question per
    applicable type per scene; each VQAv2 annotation repeats the single true answer 10 times.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, CORPUS_IDS["eval"]])
    coco = {"images": [], "annotations": []}
    vqa_q = {"data_subtype": "shapes", "questions": []}
    vqa_a = {"data_subtype": "shapes", "annotations": []}
    for image_id in range(num_scenes):
        scene = shapes.sample_scene(rng)
        name = f"shapes_{image_id:012d}.png"
        (out / "images" / name).write_bytes(png_encode(shapes.render(scene)))
        coco["images"].append({"id": image_id, "file_name": name, "width": 128, "height": 128})
        refs = [shapes.caption(scene)] + [shapes.paraphrase(scene, rng) for _ in range(paraphrases)]
        for ref in refs:
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": image_id, "caption": ref})
        for q in shapes.questions(scene, rng):
            if q.type == "caption":
                continue
            qid = image_id * 10 + shapes.QUESTION_TYPES.index(q.type)
            vqa_q["questions"].append({"question_id": qid, "image_id": image_id, "question": q.question})
            vqa_a["annotations"].append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "question_type": q.type,
                    "answer_type": "number" if q.type.startswith("count") else "other",
                    "multiple_choice_answer": q.answer,
                    "answers": [{"answer": q.answer, "answer_id": i + 1} for i in range(10)],
                }
            )
    paths = {
        "coco_annotations": out / "captions.json",
        "vqav2_questions": out / "questions.json",
        "vqav2_annotations": out / "annotations.json",
        "images": out / "images",
    }
    paths["coco_annotations"].write_text(json.dumps(coco))
    paths["vqav2_questions"].write_text(json.dumps(vqa_q))
    paths["vqav2_annotations"].write_text(json.dumps(vqa_a))
    return paths
