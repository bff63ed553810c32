"""A small, seeded world of coloured shapes in the original's data formats, for the demo and tests.

Run as:
    python -m bunny.demo.synthetic --output-dir data/shapes [--seed 0] [--num-pretrain 3000]
        [--num-finetune 4000] [--num-eval 400] [--num-foreign 120] [--text-only-fraction 0.05]

Each picture has a canvas of 40-256 px on its longer side with an aspect ratio between 1:2 and 2:1,
a background that is white, a light or a dark flat colour, or a light colour with mild noise, and one
to three shapes of distinct kinds and colours. A shape's radius is 10-28% of the canvas's shorter
side; it is filled or (30%) outlined, in one of three shades of its colour name (`SHADES`), and its
centre lies anywhere in one of the canvas's thirds (left, middle, right; clear of their borders),
touching no other shape; two shapes may share a third. Written files:

    images/{pretrain,finetune,eval}/*.png, images/blank.png (a picture with no shape)
    pretrain.json          captions in the `plain` pretraining format
    finetune.json          multi-turn conversations (template `bunny`), some of them text-only
    eval/questions.jsonl   held-out questions in the evaluation question-file format
    eval/questions_blind.jsonl  the same questions, each about images/blank.png
    eval/answer_key.jsonl  {"question_id", "answer", "category"} for each question
    eval/questions_foreign.jsonl, eval/answer_key_foreign.jsonl, images/foreign/*.png
                           a second held-out set drawn by a procedure of its own (`bunny.demo.foreign`)
    captions.json          {image: caption} for the training pictures (a text stand-in for each picture)
    layouts.json           {image: its layout (`Picture`: canvas, background, each shape's geometry)}
                           for the training pictures, what the stand-in tower is pretrained on
    text.txt               every text of the data set, one per line (for the stand-in tokenizer)

The question kinds, their phrasings and answers are listed in `QUESTION_KINDS`. Held-out answers are
balanced: within each kind every answer is equally frequent, so a model that ignores the picture
scores the kind's chance rate (`chance_accuracy`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from bunny.util.utils import atomic_write, write_jsonl

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (230, 195, 25),
    "purple": (135, 55, 175),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "middle", "right")
COUNTS = ("1", "2", "3")
WHERE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
SHORT_ANSWER = "Answer the question using a single word or phrase."  # the evaluation suffix of VQA files
BLANK_IMAGE = "blank.png"
BACKGROUND = (245, 245, 245)


@dataclass(frozen=True)
class Item:
    shape: str
    colour: str
    position: str


Scene = tuple[Item, ...]  # left to right


@dataclass(frozen=True)
class QuestionKind:
    phrasings: tuple[str, ...]  # format fields: {shape}, {colour}
    answers: tuple[str, ...]  # every possible short answer


QUESTION_KINDS: dict[str, QuestionKind] = {
    "colour": QuestionKind(
        ("What colour is the {shape}?", "What is the colour of the {shape}?", "Which colour does the {shape} have?"),
        tuple(COLOURS),
    ),
    "count": QuestionKind(
        ("How many shapes are there?", "How many shapes are in the picture?", "How many shapes can you see?"),
        COUNTS,
    ),
    "presence": QuestionKind(
        ("Is there a {colour} {shape}?", "Do you see a {colour} {shape}?", "Is there a {colour} {shape} in the picture?"),
        ("yes", "no"),
    ),
    "position": QuestionKind(
        (
            "Where is the {shape}?",
            "Is the {shape} on the left, in the middle or on the right?",
            "In which part of the picture is the {shape}?",
        ),
        POSITIONS,
    ),
}

CAPTION_INSTRUCTIONS = (
    "Describe the picture briefly.",
    "What is in this picture?",
    "Give a short caption for the image.",
)

# Text-only turns: what the shapes world is made of, without a picture.
TEXT_ONLY = (
    ("Which colours can a shape have?", "Red, green, blue, yellow or purple."),
    ("Which shapes are there?", "Circles, squares and triangles."),
    ("How many corners does a triangle have?", "A triangle has 3 corners."),
    ("How many corners does a square have?", "A square has 4 corners."),
    ("How many corners does a circle have?", "A circle has no corners."),
    ("How many shapes can a picture hold?", "From 1 to 3 shapes, of different kinds and colours."),
)


# -- scenes and pictures ---------------------------------------------------------------------------
def shades(rgb: tuple[int, int, int]) -> tuple[tuple[int, int, int], ...]:
    """The three shades a colour name is drawn in: itself, darker and lighter."""
    return (rgb, tuple(round(v * 0.72) for v in rgb), tuple(round(v + (255 - v) * 0.35) for v in rgb))


SHADES: dict[str, tuple[tuple[int, int, int], ...]] = {name: shades(rgb) for name, rgb in COLOURS.items()}
RADIUS = (0.1, 0.28)  # a shape's radius, as a share of the canvas's shorter side
SMALLEST_RADIUS = 5  # px
CANVAS_SIDE = (40, 256)  # px, the longer side
ASPECT = (0.5, 2.0)  # width / height
BORDER_CLEARANCE = 0.03  # a centre is at least this share of the width away from a third's border
OUTLINED = 0.3  # share of shapes drawn as an outline


def random_scene(rng: random.Random, count: int | None = None) -> Scene:
    """`count` (default 1 to 3) shapes of distinct kinds and colours, each in a random third."""
    count = count if count is not None else rng.randint(1, 3)
    shapes = rng.sample(SHAPES, count)
    colours = rng.sample(list(COLOURS), count)
    positions = [rng.choice(POSITIONS) for _ in range(count)]
    items = (Item(s, c, p) for s, c, p in zip(shapes, colours, positions))
    return tuple(sorted(items, key=lambda item: POSITIONS.index(item.position)))


@dataclass(frozen=True)
class Placed:
    """A shape as drawn: what it is, where its centre is, its radius (px), and how it is drawn."""

    shape: str
    colour: str
    x: float
    y: float
    radius: float
    shade: tuple[int, int, int]
    outline: int  # line width in px; 0: filled


@dataclass(frozen=True)
class Picture:
    """A picture before it is drawn: canvas size, background (and the sigma of its noise), shapes."""

    size: tuple[int, int]
    background: tuple[int, int, int]
    shapes: tuple[Placed, ...]
    noise: float = 0.0

    @property
    def scene(self) -> Scene:
        """What the questions ask about: each shape with the third of the width its centre is in."""
        items = [Item(p.shape, p.colour, position_of(p, self.size[0])) for p in self.shapes]
        return tuple(sorted(items, key=lambda item: POSITIONS.index(item.position)))


def position_of(shape: Placed, width: int) -> str:
    """The third of a canvas `width` wide that the centre of `shape` is in."""
    return POSITIONS[min(2, int(3 * shape.x / width))]


def random_background(rng: random.Random) -> tuple[tuple[int, int, int], float]:
    """White, a light or a dark flat colour, or a light colour with mild noise: (colour, noise sigma)."""
    kind = rng.choice(("white", "light", "dark", "noisy"))
    if kind == "white":
        return (255, 255, 255), 0.0
    if kind == "light":
        return tuple(rng.randint(200, 250) for _ in range(3)), 0.0
    if kind == "dark":
        return tuple(rng.randint(15, 70) for _ in range(3)), 0.0
    return tuple(rng.randint(210, 245) for _ in range(3)), rng.uniform(3.0, 9.0)


def _canvas(rng: random.Random) -> tuple[int, int]:
    longer = rng.randint(*CANVAS_SIDE)
    aspect = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))  # width / height
    return (longer, round(longer / aspect)) if aspect >= 1 else (round(longer * aspect), longer)


def _centre(
    column: int, radius: float, size: tuple[int, int], taken: list[tuple[float, float, float]], rng: random.Random
) -> tuple[float, float] | None:
    """A centre in third `column` (clear of the thirds' borders) for a shape of `radius` inside the
    canvas and clear of the `taken` shapes (x, y, radius); None if 30 tries find none."""
    width, height = size
    low = max(radius, width * (column / 3 + BORDER_CLEARANCE) if column > 0 else 0)
    high = min(width - radius, width * ((column + 1) / 3 - BORDER_CLEARANCE) if column < 2 else width)
    if low > high or 2 * radius > height:
        return None
    for _ in range(30):
        x, y = rng.uniform(low, high), rng.uniform(radius, height - radius)
        if all(math.dist((x, y), (tx, ty)) > radius + tr + 2 for tx, ty, tr in taken):
            return x, y
    return None


def place(scene: Scene, rng: random.Random) -> Picture:
    """`scene` laid out on a random canvas: each shape of a random size, its centre anywhere in its
    third (clear of the thirds' borders), inside the canvas and touching no other shape."""
    while True:
        size = _canvas(rng)
        taken: list[tuple[float, float, float]] = []
        for item in scene:
            radius = rng.uniform(*RADIUS) * min(size)
            centre = _centre(POSITIONS.index(item.position), radius, size, taken, rng) if radius >= SMALLEST_RADIUS else None
            if centre is None:
                break
            taken.append((*centre, radius))
        if len(taken) < len(scene):
            continue
        background, noise = random_background(rng)
        shapes = tuple(
            Placed(
                item.shape, item.colour, x, y, radius, rng.choice(SHADES[item.colour]),
                max(1, round(radius * rng.uniform(0.12, 0.25))) if rng.random() < OUTLINED else 0,
            )
            for item, (x, y, radius) in zip(scene, taken)
        )
        return Picture(size, background, shapes, noise)


def draw_shape(pen: ImageDraw.ImageDraw, p: Placed, fill: Any, scale: float = 1.0, offset: tuple[float, float] = (0, 0)) -> None:
    """Draw `p` in `fill` (outlined or filled as `p` says), its geometry scaled by `scale` and shifted
    by `offset`: a circle, an axis-aligned square, or a point-up triangle with a flat base."""
    x, y, r = offset[0] + p.x * scale, offset[1] + p.y * scale, p.radius * scale
    style = {"outline": fill, "width": max(1, round(p.outline * scale))} if p.outline else {"fill": fill}
    if p.shape == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), **style)
    elif p.shape == "square":
        half = 0.88 * r
        pen.rectangle((x - half, y - half, x + half, y + half), **style)
    else:
        pen.polygon([(x, y - r), (x - r, y + 0.85 * r), (x + r, y + 0.85 * r)], **style)


def draw(picture: Picture, seed: int = 0) -> Image.Image:
    """The picture: its background (noise seeded by `seed`), then its shapes."""
    image = Image.new("RGB", picture.size, picture.background)
    if picture.noise:
        noise = np.random.default_rng(seed).normal(0.0, picture.noise, (picture.size[1], picture.size[0], 3))
        image = Image.fromarray((np.asarray(image, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    for p in picture.shapes:
        draw_shape(pen, p, p.shade)
    return image


def draw_scene(scene: Scene, rng: random.Random) -> tuple[Image.Image, Picture]:
    """A random picture of `scene`, and its layout."""
    picture = place(scene, rng)
    return draw(picture, rng.randrange(1 << 30)), picture


# The pictures in the repository's images/ (the demo's chat, the web page's examples): scenes of this
# world drawn as its training pictures are, so that the demo model is asked about what it learnt.
EXAMPLE_PICTURES: dict[str, tuple[Scene, int]] = {  # file name -> (scene, drawing seed)
    "shapes.png": ((Item("circle", "red", "left"), Item("triangle", "green", "middle"), Item("square", "blue", "right")), 129),
    "shapes_tall.png": ((Item("circle", "yellow", "left"), Item("square", "purple", "right")), 120),
}


def draw_example(name: str) -> Image.Image:
    """The example picture `name` of `EXAMPLE_PICTURES`."""
    scene, seed = EXAMPLE_PICTURES[name]
    return draw_scene(scene, random.Random(seed))[0]


def save_image(image: Image.Image, root: str, relative: str) -> str:
    path = os.path.join(root, "images", relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)
    return relative


# -- questions -------------------------------------------------------------------------------------
def find(scene: Scene, shape: str) -> Item | None:
    return next((item for item in scene if item.shape == shape), None)


def ask(
    kind: str, scene: Scene, rng: random.Random, subject: str | None = None, present: bool | None = None
) -> tuple[str, str, str]:
    """(question, short answer, sentence answer) of `kind` about `scene`. `subject` is the shape a
    colour or position question asks about (default: a random one of the picture); `present` says
    whether a presence question names a shape and colour of the picture (default: either)."""
    phrasing = rng.choice(QUESTION_KINDS[kind].phrasings)
    if kind == "count":
        short = str(len(scene))
        return phrasing, short, "There is 1 shape." if short == "1" else f"There are {short} shapes."
    if kind == "presence":
        present = rng.random() < 0.5 if present is None else present
        if present:
            item = rng.choice(scene)
            shape, colour = item.shape, item.colour
        else:
            here = {(item.shape, item.colour) for item in scene}
            shape, colour = rng.choice([(s, c) for s in SHAPES for c in COLOURS if (s, c) not in here])
        question = phrasing.format(shape=shape, colour=colour)
        if present:
            return question, "yes", f"Yes, there is a {colour} {shape}."
        return question, "no", f"No, there is no {colour} {shape}."
    item = find(scene, subject) if subject is not None else rng.choice(scene)
    if item is None:
        raise ValueError(f"no {subject} in {scene}")
    question = phrasing.format(shape=item.shape)
    if kind == "colour":
        return question, item.colour, f"The {item.shape} is {item.colour}."
    return question, item.position, f"The {item.shape} is {WHERE[item.position]}."


def scene_for(kind: str, answer: str, rng: random.Random) -> tuple[Scene, dict[str, Any]]:
    """A random scene, and the `ask` arguments, for which the `kind` question answers `answer`."""
    if kind == "count":
        return random_scene(rng, int(answer)), {}
    if kind == "presence":
        return random_scene(rng), {"present": answer == "yes"}
    scene = random_scene(rng)
    target = rng.choice(scene)
    if kind == "colour":
        # the target takes the wanted colour; the shape that had it, if any, takes the target's
        swap = {target.colour: answer, answer: target.colour}
        scene = tuple(Item(i.shape, swap.get(i.colour, i.colour), i.position) for i in scene)
    else:
        moved = (Item(i.shape, i.colour, answer) if i == target else i for i in scene)
        scene = tuple(sorted(moved, key=lambda i: POSITIONS.index(i.position)))
    return scene, {"subject": target.shape}


def caption(scene: Scene) -> str:
    parts = [f"a {item.colour} {item.shape} {WHERE[item.position]}" for item in scene]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def parse_caption(text: str) -> Scene:
    """The scene a `caption` describes (its inverse); an error names a caption it did not write."""
    pattern = re.compile(rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) ({'|'.join(WHERE.values())})")
    body = text[:1].lower() + text[1:]
    parts = body.removesuffix(".").replace(" and ", ", ").split(", ")
    matches = [pattern.fullmatch(part) for part in parts]
    if not body.endswith(".") or not all(matches):
        raise ValueError(f"not a caption of the shapes data set: {text!r}")
    position = {where: name for name, where in WHERE.items()}
    return tuple(Item(m[2], m[1], position[m[3]]) for m in matches)


def chance_accuracy(categories: Sequence[str]) -> dict[str, Any]:
    """The expected accuracy of answering each question with a uniformly random valid answer."""
    by_kind = {kind: 1 / len(QUESTION_KINDS[kind].answers) for kind in QUESTION_KINDS}
    overall = sum(by_kind[c] for c in categories) / len(categories)
    return {"overall": overall, "by_type": {k: v for k, v in by_kind.items() if k in set(categories)}}


# -- the data set ----------------------------------------------------------------------------------
def training_picture(scene: Scene, rng: random.Random, root: str, name: str, layouts: dict[str, Picture]) -> str:
    """Draw and save a picture of `scene`; its layout goes into `layouts`. Returns its path."""
    image, picture = draw_scene(scene, rng)
    path = save_image(image, root, name)
    layouts[path] = picture
    return path


def pretrain_samples(rng: random.Random, root: str, n: int, layouts: dict[str, Picture]) -> list[dict[str, Any]]:
    samples = []
    for i in range(n):
        scene = random_scene(rng)
        image = training_picture(scene, rng, root, f"pretrain/{i:05d}.png", layouts)
        samples.append({
            "id": f"pretrain-{i:05d}",
            "image": image,
            "conversations": [
                {"from": "human", "value": "<image>\n" + rng.choice(CAPTION_INSTRUCTIONS)},
                {"from": "gpt", "value": caption(scene)},
            ],
        })
    return samples


def turn(question: str, short: str, sentence: str, rng: random.Random) -> tuple[str, str]:
    """Half the turns ask for a short answer the way evaluation files do; the others get a sentence."""
    if rng.random() < 0.5:
        return f"{question}\n{SHORT_ANSWER}", short
    return question, sentence


def finetune_samples(
    rng: random.Random, root: str, n: int, text_only_fraction: float, captions: dict[str, str], layouts: dict[str, Picture]
) -> list[dict[str, Any]]:
    """Conversations about pictures (and a few without one); each picture's caption goes into
    `captions`, its layout into `layouts`."""
    samples = []
    for i in range(n):
        if rng.random() < text_only_fraction:
            pairs = rng.sample(TEXT_ONLY, rng.randint(1, 2))
            conversations = []
            for question, answer in pairs:
                conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
            samples.append({"id": f"finetune-{i:05d}", "conversations": conversations})
            continue
        scene = random_scene(rng)
        image = training_picture(scene, rng, root, f"finetune/{i:05d}.png", layouts)
        kinds = rng.sample(list(QUESTION_KINDS), rng.randint(2, 4))
        conversations = []
        for j, kind in enumerate(kinds):
            question, answer = turn(*ask(kind, scene, rng), rng)
            if j == 0:
                question = "<image>\n" + question
            conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        samples.append({"id": f"finetune-{i:05d}", "image": image, "conversations": conversations})
        captions[image] = caption(scene)
    return samples


def balanced_questions(
    rng: random.Random, n: int, picture_for: Callable[[str, str], tuple[Scene, dict[str, Any], Callable[[], Image.Image]]],
    save: Callable[[Image.Image, int], str], label: str,
) -> tuple[list[dict], list[dict]]:
    """`n` questions, kinds in turn, answers balanced within each kind, and their answer key.

    `picture_for(kind, answer)` gives a scene for which the `kind` question answers `answer`, the
    `ask` arguments that make it so, and a function drawing the picture; `save(image, i)` stores
    picture i and returns its path relative to the image folder.
    """
    questions, key = [], []
    kinds = list(QUESTION_KINDS)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        answers = QUESTION_KINDS[kind].answers
        answer = answers[(i // len(kinds)) % len(answers)]
        scene, arguments, draw = picture_for(kind, answer)
        question, short, _ = ask(kind, scene, rng, **arguments)
        if short != answer:
            raise AssertionError(f"{label} {kind} question {i} answers {short!r}, not {answer!r}")
        image = save(draw(), i)
        questions.append({"question_id": i, "image": image, "text": f"{question}\n{SHORT_ANSWER}", "category": kind})
        key.append({"question_id": i, "answer": answer, "category": kind})
    return questions, key


def eval_questions(rng: random.Random, root: str, n: int) -> tuple[list[dict], list[dict]]:
    """`n` held-out questions about pictures of this generator (`balanced_questions`)."""

    def picture_for(kind: str, answer: str) -> tuple[Scene, dict[str, Any], Callable[[], Image.Image]]:
        scene, arguments = scene_for(kind, answer, rng)
        return scene, arguments, lambda: draw_scene(scene, rng)[0]

    return balanced_questions(rng, n, picture_for, lambda image, i: save_image(image, root, f"eval/{i:04d}.png"), "held-out")


def write_json(path: str, data: Any) -> None:
    with atomic_write(path) as f:
        json.dump(data, f, indent=1)


def read_layouts(path: str) -> dict[str, Picture]:
    """`layouts.json` as written by `generate`: {picture: its layout}; an error names the file and
    the picture whose entry is not a layout."""
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    layouts = {}
    for image, row in rows.items():
        try:
            shapes = tuple(Placed(**{**shape, "shade": tuple(shape["shade"])}) for shape in row["shapes"])
            layouts[image] = Picture(tuple(row["size"]), tuple(row["background"]), shapes, row["noise"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: the entry of {image!r} is not a layout written by generate ({error!r})") from None
    return layouts


def generate(
    output_dir: str,
    seed: int = 0,
    num_pretrain: int = 3000,
    num_finetune: int = 4000,
    num_eval: int = 400,
    text_only_fraction: float = 0.05,
    num_foreign: int = 120,
) -> dict[str, str]:
    """Write the data set under `output_dir`; returns the paths of its files."""
    from bunny.demo.foreign import foreign_questions

    for flag, number in (("--num-eval", num_eval), ("--num-foreign", num_foreign)):
        if number % len(QUESTION_KINDS):
            raise ValueError(f"{flag} must be a multiple of {len(QUESTION_KINDS)} (one question of each kind in turn)")
    # Independent streams, so changing one split's size leaves the others as they were.
    layouts: dict[str, Picture] = {}
    pretrain = pretrain_samples(random.Random(f"{seed}-pretrain"), output_dir, num_pretrain, layouts)
    captions = {s["image"]: s["conversations"][1]["value"] for s in pretrain}
    finetune = finetune_samples(
        random.Random(f"{seed}-finetune"), output_dir, num_finetune, text_only_fraction, captions, layouts
    )
    questions, key = eval_questions(random.Random(f"{seed}-eval"), output_dir, num_eval)
    foreign, foreign_key = foreign_questions(
        random.Random(f"{seed}-foreign"), lambda image, name: save_image(image, output_dir, name), num_foreign
    )
    save_image(Image.new("RGB", (128, 128), BACKGROUND), output_dir, BLANK_IMAGE)

    paths = {
        "image_folder": os.path.join(output_dir, "images"),
        "pretrain": os.path.join(output_dir, "pretrain.json"),
        "finetune": os.path.join(output_dir, "finetune.json"),
        "questions": os.path.join(output_dir, "eval", "questions.jsonl"),
        "questions_blind": os.path.join(output_dir, "eval", "questions_blind.jsonl"),
        "answer_key": os.path.join(output_dir, "eval", "answer_key.jsonl"),
        "questions_foreign": os.path.join(output_dir, "eval", "questions_foreign.jsonl"),
        "answer_key_foreign": os.path.join(output_dir, "eval", "answer_key_foreign.jsonl"),
        "captions": os.path.join(output_dir, "captions.json"),
        "layouts": os.path.join(output_dir, "layouts.json"),
        "text": os.path.join(output_dir, "text.txt"),
    }
    write_json(paths["pretrain"], pretrain)
    write_json(paths["finetune"], finetune)
    write_json(paths["captions"], captions)
    write_json(paths["layouts"], {image: asdict(picture) for image, picture in layouts.items()})
    os.makedirs(os.path.dirname(paths["questions"]), exist_ok=True)
    write_jsonl(paths["questions"], questions)
    write_jsonl(paths["questions_blind"], [dict(q, image=BLANK_IMAGE) for q in questions])
    write_jsonl(paths["answer_key"], key)
    write_jsonl(paths["questions_foreign"], foreign)
    write_jsonl(paths["answer_key_foreign"], foreign_key)
    texts = [turn["value"].replace("<image>\n", "") for s in pretrain + finetune for turn in s["conversations"]]
    texts += [q["text"] for q in questions]
    with atomic_write(paths["text"]) as f:
        f.write("\n".join(texts) + "\n")
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.demo.synthetic", description="Generate the seeded shapes data set of the demo."
    )
    parser.add_argument("--output-dir", required=True, help="directory to write the data set into")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same files")
    parser.add_argument("--num-pretrain", type=int, default=3000, help="captioned pictures for projector pretraining")
    parser.add_argument("--num-finetune", type=int, default=4000, help="conversations for instruction tuning")
    parser.add_argument("--num-eval", type=int, default=400, help="held-out questions (a multiple of 4)")
    parser.add_argument(
        "--num-foreign", type=int, default=120,
        help="held-out questions about pictures drawn by another procedure (bunny.demo.foreign; a multiple of 4)",
    )
    parser.add_argument(
        "--text-only-fraction", type=float, default=0.05, help="share of finetuning conversations without a picture"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    args = build_parser().parse_args(argv)
    paths = generate(
        args.output_dir, args.seed, args.num_pretrain, args.num_finetune, args.num_eval, args.text_only_fraction,
        args.num_foreign,
    )
    print(json.dumps(paths, indent=1))
    return paths


if __name__ == "__main__":
    main()
