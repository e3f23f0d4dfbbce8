"""The Shapes world (SHAPES.md v1): scene sampling, rendering, captions, questions and text-only sentences.

Everything random takes a `numpy.random.Generator`, so a seed reproduces a corpus exactly. Interpretations of
the spec, chosen once here so that every consumer (ingest, evaluation, serving demos) agrees:
- A box is `(x0, y0, x1, y1)` with x1/y1 exclusive; side = x1 - x0 = y1 - y0. Boxes lie inside the canvas and
  two boxes (objects or the word) are separated by at least `MARGIN` background pixels on one axis.
- Text height is the font size in pixels (Pillow's bundled scalable Aileron font); the word's ink therefore
  spans about that many rows for words with ascenders and descenders ("dog") and fewer for "sun".
- "Leftmost object" ties (equal x0) are broken by y0, then colour and shape, so captions are deterministic.
- `exists` questions use the same a/an rule as captions ("is there an orange circle?").
- `count_kind` asks about a present kind or an absent one with equal probability (absent kinds are asked too).
- Evaluation splits (opt-in, `kind_questions`; never used for training): `count_kind` and `exists` about a kind
  drawn from the kinds present in the scene, or uniformly from all 18 colour-shape pairs (mostly absent).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CANVAS = 128
MARGIN = 4
MIN_SIDE, MAX_SIDE = 18, 36
MIN_TEXT, MAX_TEXT = 9, 14
JITTER = 12
BACKGROUND_RANGE = (225, 255)
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 140, 20),
}
WORDS = ("cat", "dog", "sun", "car", "tree", "fish", "bird", "star", "moon", "book", "cake", "boat")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
QUESTION_TYPES = ("count_all", "count_kind", "colour_of", "shape_of", "exists", "word", "caption")

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    rgb: tuple[int, int, int]  # the base colour after jitter
    box: Box

    @property
    def kind(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Word:
    text: str
    size: int  # text height = font size in px
    box: Box  # the text's ink box on the canvas


@dataclass(frozen=True)
class Scene:
    background: tuple[int, int, int]
    objects: tuple[ShapeObject, ...]
    word: Word | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> Scene:
        objects = tuple(
            ShapeObject(o["shape"], o["colour"], tuple(o["rgb"]), tuple(o["box"])) for o in data["objects"]
        )
        word = data.get("word")
        return Scene(
            tuple(data["background"]),
            objects,
            Word(word["text"], word["size"], tuple(word["box"])) if word else None,
        )


@dataclass(frozen=True)
class Question:
    type: str
    question: str
    answer: str


# ------------------------------------------------------------------------------------------- sampling


@cache
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # a scalable TrueType font bundled with Pillow >= 10.1


def _text_extent(text: str, size: int) -> tuple[int, int, int, int]:
    """Ink box of `text` drawn at the origin (left, top, right, bottom), from the font's metrics."""
    return font(size).getbbox(text)


def separated(a: Box, b: Box, margin: int = MARGIN) -> bool:
    """True when at least `margin` background pixels lie between the two boxes on some axis."""
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]


def _place(rng: np.random.Generator, width: int, height: int, taken: list[Box]) -> Box | None:
    for _ in range(100):
        x0 = int(rng.integers(0, CANVAS - width + 1))
        y0 = int(rng.integers(0, CANVAS - height + 1))
        box = (x0, y0, x0 + width, y0 + height)
        if all(separated(box, other) for other in taken):
            return box
    return None


def _jitter(rng: np.random.Generator, base: tuple[int, int, int]) -> tuple[int, int, int]:
    offsets = rng.integers(-JITTER, JITTER + 1, size=3)
    return tuple(int(np.clip(c + o, 0, 255)) for c, o in zip(base, offsets, strict=True))  # type: ignore[return-value]


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one scene: background, 1-4 non-overlapping objects and, half the time, a word at a free spot."""
    background = tuple(int(c) for c in rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1, size=3))
    n_objects = int(rng.integers(1, 5))
    word_text = str(rng.choice(WORDS)) if rng.random() < 0.5 else None
    word_size = int(rng.integers(MIN_TEXT, MAX_TEXT + 1))
    while True:  # a layout almost always fits at the first try; retry the whole layout if it does not
        taken: list[Box] = []
        word = None
        if word_text is not None:
            left, top, right, bottom = _text_extent(word_text, word_size)
            box = _place(rng, right - left, bottom - top, taken)
            if box is None:
                continue
            taken.append(box)
            word = Word(word_text, word_size, box)
        objects = []
        for _ in range(n_objects):
            side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
            box = _place(rng, side, side, taken)
            if box is None:
                break
            taken.append(box)
            shape = str(rng.choice(SHAPES))
            colour = str(rng.choice(list(COLOURS)))
            objects.append(ShapeObject(shape, colour, _jitter(rng, COLOURS[colour]), box))
        if len(objects) == n_objects:
            return Scene(background, tuple(objects), word)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- rendering


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (CANVAS, CANVAS), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=obj.rgb)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=obj.rgb)
        elif obj.shape == "triangle":  # isosceles, apex up
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=obj.rgb)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    if scene.word is not None:
        left, top, _, _ = _text_extent(scene.word.text, scene.word.size)
        # Shift the draw origin so the ink lands exactly on the sampled (free) box.
        origin = (scene.word.box[0] - left, scene.word.box[1] - top)
        draw.text(origin, scene.word.text, fill=(0, 0, 0), font=font(scene.word.size))
    return image


# ------------------------------------------------------------------------------------------- language


def article(colour: str) -> str:
    return "an" if colour[0] in "aeiou" else "a"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n]


def groups(scene: Scene) -> list[tuple[str, str, int]]:
    """(colour, shape, count) per kind, ordered by each kind's leftmost object, left to right."""
    ordered = sorted(scene.objects, key=lambda o: (o.box[0], o.box[1], o.colour, o.shape))
    counts: dict[tuple[str, str], int] = {}
    for obj in ordered:
        counts[obj.kind] = counts.get(obj.kind, 0) + 1
    return [(colour, shape, n) for (colour, shape), n in counts.items()]


def _phrase(colour: str, shape: str, n: int) -> str:
    return f"{article(colour)} {colour} {shape}" if n == 1 else f"{number_word(n)} {colour} {shape}s"


def join_words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene) -> str:
    """The canonical caption, e.g. `a red circle, two blue squares and the word cat`."""
    # The word is the last item of the list: `a red circle, two blue squares and the word cat`.
    items = [_phrase(*g) for g in groups(scene)]
    if scene.word is not None:
        items.append(f"the word {scene.word.text}")
    return join_words(items)


def paraphrase(scene: Scene, rng: np.random.Generator) -> str:
    """A training-only rewording of the canonical caption (same content, other framing)."""
    text = caption(scene)
    n = len(scene.objects)
    first_plural = groups(scene)[0][2] > 1
    templates = [
        f"there {'are' if first_plural else 'is'} {text}",
        f"this image shows {text}",
        f"a picture of {text}",
        f"an image with {text}",
        f"{number_word(n)} {'shapes' if n > 1 else 'shape'}: {text}",
    ]
    return templates[int(rng.integers(len(templates)))]


def _kinds() -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def count_kind_question(scene: Scene, kind: tuple[str, str]) -> Question:
    colour, shape = kind
    return Question(
        "count_kind",
        f"how many {colour} {shape}s are there?",
        str(sum(o.kind == kind for o in scene.objects)),
    )


def exists_question(scene: Scene, kind: tuple[str, str]) -> Question:
    colour, shape = kind
    answer = "yes" if any(o.kind == kind for o in scene.objects) else "no"
    return Question("exists", f"is there {article(colour)} {colour} {shape}?", answer)


KIND_DRAWS = ("present", "uniform")  # how `kind_questions` draws the kind it asks about


def draw_kind(scene: Scene, rng: np.random.Generator, draw: str) -> tuple[str, str]:
    """A (colour, shape) kind: `present`, uniform over the distinct kinds in the scene; `uniform`, uniform over
    all len(COLOURS) x len(SHAPES) pairs, absent ones included (so usually absent)."""
    if draw == "present":
        pool = sorted({o.kind for o in scene.objects})
    elif draw == "uniform":
        pool = _kinds()
    else:
        raise ValueError(f"unknown kind draw {draw!r}; expected one of {KIND_DRAWS}")
    return pool[int(rng.integers(len(pool)))]


def kind_questions(scene: Scene, rng: np.random.Generator, draw: str) -> list[Question]:
    """One `count_kind` and one `exists` question, each about its own kind drawn by `draw_kind(draw)`.

    Opt-in, for evaluation splits (mm1.eval.heldout) that a model cannot pass without counting or finding
    the kind asked about; `questions` and `every_question` (the training corpus) never call it."""
    return [
        count_kind_question(scene, draw_kind(scene, rng, draw)),
        exists_question(scene, draw_kind(scene, rng, draw)),
    ]


def questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """One question per type that applies to `scene`, in the table's order (see SHAPES.md)."""
    present = sorted({o.kind for o in scene.objects})
    absent = [k for k in _kinds() if k not in present]
    out = [Question("count_all", "how many shapes are there?", str(len(scene.objects)))]

    pool = present if rng.random() < 0.5 else absent
    out.append(count_kind_question(scene, pool[int(rng.integers(len(pool)))]))

    unique_shapes = sorted(s for s in SHAPES if sum(o.shape == s for o in scene.objects) == 1)
    if unique_shapes:
        shape = unique_shapes[int(rng.integers(len(unique_shapes)))]
        answer = next(o.colour for o in scene.objects if o.shape == shape)
        out.append(Question("colour_of", f"what color is the {shape}?", answer))

    unique_colours = sorted(c for c in COLOURS if sum(o.colour == c for o in scene.objects) == 1)
    if unique_colours:
        colour = unique_colours[int(rng.integers(len(unique_colours)))]
        answer = next(o.shape for o in scene.objects if o.colour == colour)
        out.append(Question("shape_of", f"what shape is the {colour} object?", answer))

    yes = rng.random() < 0.5  # balanced: a present kind half the time, an absent one otherwise
    out.append(
        exists_question(
            scene, (present if yes else absent)[int(rng.integers(len(present if yes else absent)))]
        )
    )

    if scene.word is not None:
        out.append(Question("word", "what word is written?", scene.word.text))
    out.append(Question("caption", "describe the image.", caption(scene)))
    return out


def every_question(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """Every question the table allows about `scene`, not one per type: the colour of each shape that occurs
    once, the shape of each colour that occurs once, the count and existence of each present kind and of as
    many absent kinds (drawn at random, so yes/no stay balanced), then count_all, word and caption. SFT on
    this pool trains several grounding answers per image where `questions` trains one of each type."""
    present = sorted({o.kind for o in scene.objects})
    absent = [k for k in _kinds() if k not in present]
    count = {k: sum(o.kind == k for o in scene.objects) for k in _kinds()}
    out = [Question("count_all", "how many shapes are there?", str(len(scene.objects)))]
    for pick in (present, [absent[int(i)] for i in rng.choice(len(absent), len(present), replace=False)]):
        for colour, shape in pick:
            out.append(
                Question("count_kind", f"how many {colour} {shape}s are there?", str(count[(colour, shape)]))
            )
    for shape in SHAPES:
        owners = [o for o in scene.objects if o.shape == shape]
        if len(owners) == 1:
            out.append(Question("colour_of", f"what color is the {shape}?", owners[0].colour))
    for colour in COLOURS:
        owners = [o for o in scene.objects if o.colour == colour]
        if len(owners) == 1:
            out.append(Question("shape_of", f"what shape is the {colour} object?", owners[0].shape))
    for pick, answer in (
        (present, "yes"),
        ([absent[int(i)] for i in rng.choice(len(absent), len(present), replace=False)], "no"),
    ):
        for colour, shape in pick:
            out.append(Question("exists", f"is there {article(colour)} {colour} {shape}?", answer))
    if scene.word is not None:
        out.append(Question("word", "what word is written?", scene.word.text))
    out.append(Question("caption", "describe the image.", caption(scene)))
    return out


def describe_sentence(scene: Scene, rng: np.random.Generator) -> str:
    """A sentence about a scene for interleaved documents: its caption, a paraphrase, or one fact."""
    facts = [f"there are {number_word(len(scene.objects))} shapes in this picture"]
    if len(scene.objects) == 1:
        facts[0] = "there is one shape in this picture"
    for colour, shape, n in groups(scene):
        facts.append(f"the {shape} is {colour}" if n == 1 else f"the {shape}s are {colour}")
    if scene.word is not None:
        facts.append(f"the word {scene.word.text} is written here")
    roll = rng.random()
    if roll < 0.4:
        return caption(scene)
    if roll < 0.7:
        return paraphrase(scene, rng)
    return facts[int(rng.integers(len(facts)))]


_SIDES = {"triangle": "three sides", "square": "four sides", "circle": "no corners"}


def _fact_sentence(rng: np.random.Generator) -> str:
    kind = int(rng.integers(6))
    if kind == 0:
        shape = str(rng.choice(SHAPES))
        return f"a {shape} has {_SIDES[shape]}"
    if kind == 1:
        a, b = (int(x) for x in rng.integers(0, 6, size=2))
        return f"{number_word(a)} and {number_word(b)} make {number_word(a + b)}"
    if kind == 2:
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        return f"{article(colour)} {colour} {shape} is a {shape} that is {colour}"
    if kind == 3:
        n = int(rng.integers(1, 5))
        return f"after {number_word(n)} comes {number_word(n + 1)}"
    if kind == 4:
        n = int(rng.integers(2, 5))
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        return f"{number_word(n)} {colour} {shape}s are {number_word(n)} {shape}s"
    word = str(rng.choice(WORDS))
    return f"the word {word} has {number_word(len(word))} letters"


def text_sentences(rng: np.random.Generator, n: int) -> list[str]:
    """`n` text-only lines about the world: shapes, counting, colours and the lexicon."""
    return [_fact_sentence(rng) for _ in range(n)]
