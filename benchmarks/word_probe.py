"""Can the quick start's image encoder read the Shapes word at a given resolution? A direct probe.

The `word` question (SHAPES.md: one of 12 words, 9-14 px of text on the 128 px canvas) stays near its
baseline in the workflows. This separates the encoder from the rest of MM1: the `tiny-cnn` preset's ResNet,
randomly initialized, is trained with a linear head straight on the word's identity (12-way, scenes that
carry a word), at each resolution asked for, and scored on held-out scenes. The head reads the encoder's
last feature map either through the connector's pooling (`avgpool` to 4x4, the quick start's 16 tokens, then
a max over the 16: position-free, as attention over image tokens can be) or through a max over every
feature position (the best case for a detector). Same seed, data and steps for every resolution; the ratio
printed is each resolution's held-out accuracy over the lowest one's.

    .venv/bin/python benchmarks/word_probe.py                       # 64 and 128 px, 600 steps each
    .venv/bin/python benchmarks/word_probe.py --sizes 64 128 --steps 300 --readout max

Measured on the 2-core CPU (2026-12-07, default settings): held-out accuracy after 100/200/300/600 steps,
64 px 0.08 / 0.10 / 0.14 / 0.33 (64 s), 128 px 0.32 / 0.93 / 0.99 / 1.00 (243 s; chance 0.08): 3.04x. With `--readout
max` (an earlier run of the same probe with another batch order): 64 px 0.76 after 600 steps, 128 px 1.00
after 200. The encoder reads the word at the canvas' 128 px within a few hundred steps of direct supervision,
and barely at 64 px.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mm1.data import shapes
from mm1.registry import PRESETS

POOLED_GRID = 4  # the quick start's avgpool connector: 4x4 = 16 image tokens


def word_scenes(count: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` rendered scenes that carry a word, resized to `size` px and normalized to [-1, 1]; labels are
    the word's index in the lexicon."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    while len(images) < count:
        scene = shapes.sample_scene(rng)
        if scene.word is None:
            continue
        image = shapes.render(scene)
        if size != image.width:
            image = image.resize((size, size), Image.BICUBIC)
        images.append(np.asarray(image))
        labels.append(shapes.WORDS.index(scene.word.text))
    pixels = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (pixels - 0.5) / 0.5, torch.tensor(labels)


class WordProbe(torch.nn.Module):
    def __init__(self, readout: str):
        from transformers import ResNetConfig, ResNetModel

        super().__init__()
        self.encoder = ResNetModel(ResNetConfig(**PRESETS["tiny-cnn"]["vision_config"]))
        self.readout = readout
        self.head = torch.nn.Linear(self.encoder.config.hidden_sizes[-1], len(shapes.WORDS))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.encoder(pixel_values=pixels).last_hidden_state  # [N, C, h, w]
        if self.readout == "avgpool":
            features = F.adaptive_avg_pool2d(features, POOLED_GRID)
        return self.head(features.amax(dim=(2, 3)))


def accuracy(model: WordProbe, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(pixels[i : i + 250]).argmax(-1) == labels[i : i + 250]).sum())
            for i in range(0, len(labels), 250)
        )
    model.train()
    return correct / len(labels)


def probe(size: int, readout: str, steps: int, batch: int, train: int, every: int) -> list[tuple[int, float]]:
    train_x, train_y = word_scenes(train, seed=1, size=size)
    test_x, test_y = word_scenes(1000, seed=2, size=size)
    torch.manual_seed(0)
    model = WordProbe(readout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    curve = []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(train_y), (batch,), generator=generator)
        loss = F.cross_entropy(model(train_x[index]), train_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            curve.append((step, accuracy(model, test_x, test_y)))
            print(
                f"  {size} px, {readout}: step {step}/{steps} loss {loss.item():.3f} held-out accuracy "
                f"{curve[-1][1]:.3f} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="model resolutions, px")
    parser.add_argument("--readout", choices=["avgpool", "max"], default="avgpool")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-scenes", type=int, default=8000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"chance: {1 / len(shapes.WORDS):.3f} ({len(shapes.WORDS)} words); readout {args.readout}")
    curves = {
        size: probe(size, args.readout, args.steps, args.batch_size, args.train_scenes, args.eval_every)
        for size in args.sizes
    }
    base = min(args.sizes)
    print(f"held-out word accuracy after {args.steps} steps, {args.readout} readout:")
    for size, curve in curves.items():
        final, first = curve[-1][1], curve[0][1]
        ratio = final / max(curves[base][-1][1], 1e-9)
        print(
            f"  {size:>4} px: {final:.3f} (after {curve[0][0]} steps {first:.3f}); {ratio:.2f}x the {base} px probe"
        )


if __name__ == "__main__":
    main()
