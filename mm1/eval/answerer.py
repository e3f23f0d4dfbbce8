"""Answering prompts with one checkpoint on a Ray Data actor pool.

`answer_tasks` turns a checkpoint's tasks into a dataset whose rows are whole generation batches, made here
on the driver (tasks sorted so a batch holds one prompt kind and similar lengths), and maps them through
`CheckpointAnswerer` actors that load the checkpoint once and build each prompt with the checkpoint's own
processor: chat prompts through `MM1Processor.encode_chat` (the SFT template serving also uses), k-shot
document prompts (captions or VQA) through `mm1.eval.kshot.build_kshot_prompt`, with demonstrations from the
pool of the task's benchmark (`demo_pools`, by benchmark name). Shipping ready batches, rather than letting
Ray Data cut batches from blocks, makes the batches (and so the padded greedy answers) the same in every
run. The dataset shows in the Ray dashboard, one per checkpoint; `num_actors` scales it out.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mm1.data import chat
from mm1.data.chat import IMAGE
from mm1.eval.kshot import Demo


@dataclass(frozen=True)
class Task:
    key: str  # unique among one checkpoint's tasks
    image: bytes | str  # the query image: encoded bytes or a path the actors can read
    text: str = ""  # chat prompts: the user's text after the <image> marker; k-shot VQA: the question
    shots: int | None = None  # k-shot document prompt with this many demonstrations; None: a chat prompt
    query: str = ""  # k-shot: the query's own key, which the demonstrations are drawn for (never itself)
    max_new_tokens: int = 24
    pool: str = ""  # k-shot: the demonstration pool (its benchmark's name) in `demo_pools`
    task: str = "caption"  # k-shot: caption | vqa (mm1.eval.kshot.KShotTask)


@dataclass(frozen=True)
class Answer:
    prediction: str
    demos: tuple[str, ...] = ()  # k-shot: keys of the demonstrations the prompt showed, in order


def image_identity(image: bytes | str) -> str:
    """Equal for the same image: a digest of encoded bytes, or the path itself."""
    return hashlib.sha1(image).hexdigest() if isinstance(image, bytes) else str(image)


def make_batches(tasks: Sequence[Task], batch_size: int) -> list[list[Task]]:
    """Batches of one prompt kind (chat, or k-shot with one k) and length budget; the questions about one
    image side by side, so a batch encodes that image once (mm1.eval.generation)."""

    def kind(t: Task) -> tuple[bool, int, int, str]:
        return (t.shots is not None, t.shots or 0, t.max_new_tokens, t.pool)

    batches: list[list[Task]] = []
    for task in sorted(tasks, key=lambda t: (kind(t), image_identity(t.image), t.key)):
        if batches and kind(batches[-1][0]) == kind(task) and len(batches[-1]) < batch_size:
            batches[-1].append(task)
        else:
            batches.append([task])
    return batches


class CheckpointAnswerer:
    """A Ray Data actor: holds one checkpoint; each input row is one pickled batch of `Task`s."""

    def __init__(
        self,
        checkpoint: str,
        batch_size: int,
        demo_pools: Mapping[str, Sequence[Demo]] | None = None,
        kshot_seed: int = 0,
        device: str = "cpu",
        threads: int = 1,
    ):
        import torch

        from mm1.model.loading import load_for_inference

        # One thread per actor: every actor holds one CPU, and on a busy machine more threads than cores
        # made generation ~10x slower here (OpenMP spinning), not faster.
        torch.set_num_threads(threads)
        self.model, self.processor = load_for_inference(checkpoint, device=device)
        self.batch_size = batch_size
        self.pools = {name: list(pool) for name, pool in (demo_pools or {}).items()}
        self.kshot_seed = kshot_seed
        self._demo_pixels: dict[Any, Any] = {}  # the pool's images recur across prompts: preprocess once

    def _pixels(self, key: Hashable, image: Any, cache: dict[Hashable, Any]):
        if key not in cache:
            cache[key] = self.processor.images_to_pixel_values([image])
        return cache[key]

    def _prompt(self, task: Task, batch_pixels: dict[Hashable, Any]):
        """The generation prompt of `task` and the keys of its demonstrations; `batch_pixels` shares decoded
        query images within a batch."""
        import torch

        from mm1.eval.generation import IdsPrompt
        from mm1.eval.kshot import build_kshot_prompt

        processor = self.processor
        query_key = ("query", image_identity(task.image))
        query_pixels = self._pixels(query_key, task.image, batch_pixels)
        if task.shots is None:
            turns = [{"role": "user", "content": f"{IMAGE}\n{task.text}"}]
            ids = chat.encode_prompt(processor.tokenizer, turns, processor.image_tokens_per_image).input_ids
            prompt = IdsPrompt(
                ids, query_pixels, tuple(processor.stop_token_ids()), task.max_new_tokens, (query_key,)
            )
            return prompt, ()
        if task.pool not in self.pools:
            raise KeyError(
                f"task {task.key} names demonstration pool {task.pool!r}; have {sorted(self.pools)}"
            )
        prompt = build_kshot_prompt(
            processor.tokenizer,
            Demo(task.query, task.image, "", question=task.text, image_key=image_identity(task.image)),
            self.pools[task.pool],
            task.shots,
            self.kshot_seed,
            processor.image_tokens_per_image,
            style="document",
            task=task.task,  # type: ignore[arg-type]
        )
        # Pixels are shared by image, not by demonstration: VQA demonstrations may show one image twice.
        keys = [("demo", image_identity(d.image)) for d in prompt.demos]
        pixels = [
            self._pixels(k, d.image, self._demo_pixels) for k, d in zip(keys, prompt.demos, strict=True)
        ]
        ids_prompt = IdsPrompt(
            prompt.input_ids,
            torch.cat([*pixels, query_pixels]),
            tuple(prompt.stop_token_ids),
            task.max_new_tokens,
            (*keys, query_key),
        )
        return ids_prompt, tuple(str(d.key) for d in prompt.demos)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from mm1.eval.generation import generate_from_ids

        tasks: list[Task] = [t for blob in batch["tasks"] for t in pickle.loads(blob)]
        batch_pixels: dict[Hashable, Any] = {}
        built = [self._prompt(t, batch_pixels) for t in tasks]
        answers = generate_from_ids(self.model, self.processor, [p for p, _ in built], self.batch_size)
        # The demonstrations each prompt showed (k-shot), so the predictions file can be audited.
        demos = [json.dumps(list(keys)) for _, keys in built]
        return {
            "key": np.array([t.key for t in tasks], dtype=object),
            "prediction": np.array(answers, dtype=object),
            "demos": np.array(demos, dtype=object),
        }


def answer_tasks(
    checkpoint: str,
    tasks: Sequence[Task],
    *,
    batch_size: int,
    num_actors: int = 1,
    demo_pools: Mapping[str, Sequence[Demo]] | None = None,
    kshot_seed: int = 0,
    use_gpu: bool = False,
) -> dict[str, Answer]:
    """task key -> the checkpoint's answer, for every task exactly once (raises otherwise).

    `use_gpu`: each actor holds one GPU and generates there (in bf16 where supported, as loading decides).
    """
    import ray.data

    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("task keys must be unique")
    if not tasks:
        return {}
    batches = make_batches(tasks, batch_size)
    # Pickled, because a batch mixes bytes and paths and Arrow columns want one type.
    rows = [{"tasks": pickle.dumps(b)} for b in batches]
    dataset = ray.data.from_items(rows).map_batches(
        CheckpointAnswerer,
        batch_size=1,  # one row is already a full generation batch
        compute=ray.data.ActorPoolStrategy(size=max(1, min(num_actors, len(rows)))),
        num_cpus=1,
        num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs={
            "checkpoint": checkpoint,
            "batch_size": batch_size,
            # Only the pools these tasks draw from travel to the actors.
            "demo_pools": {
                name: list(pool)
                for name, pool in (demo_pools or {}).items()
                if any(t.shots is not None and t.pool == name for t in tasks)
            },
            "kshot_seed": kshot_seed,
            "device": "cuda" if use_gpu else "cpu",
        },
    )
    answers: dict[str, Answer] = {}
    for row in dataset.iter_rows():
        if row["key"] in answers:
            raise RuntimeError(f"{checkpoint}: task {row['key']} was answered twice")
        answers[row["key"]] = Answer(row["prediction"], tuple(json.loads(row["demos"])))
    missing = set(keys) - set(answers)
    if missing:
        raise RuntimeError(f"{checkpoint}: {len(missing)} task(s) got no answer, e.g. {sorted(missing)[:3]}")
    return answers
