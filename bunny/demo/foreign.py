"""The demo's second held-out set: pictures drawn by a procedure of their own, not the generator's.

A model that scores well only on pictures from the generator it was trained on (`synthetic.py`) has
learnt a template, not shapes. These pictures share only the question kinds and the answer
vocabulary with it; everything about the drawing is this module's own convention:

- canvases from a fixed list of sizes, 48 to 128 px, square, portrait and landscape;
- backgrounds from a list of flat colours (white, cream, pale blue, pale grey, charcoal, navy);
- shapes laid out one of three ways: stacked in one column, in a row, or scattered;
- shapes drawn as regular polygons around a centre (an equilateral triangle, a square, a circle),
  filled or outlined, in a palette of two shades per colour name that the generator never uses.

A shape's position is the third of the canvas width its centre falls in, as in the generator's
questions; centres are kept clear of the thirds' borders, so that no answer is in doubt. Written
by `synthetic.generate` as `eval/questions_foreign.jsonl`, `eval/answer_key_foreign.jsonl` and
`images/foreign/*.png`, and scored as `foreign_accuracy` by `python -m bunny.eval run shapes`.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable

from PIL import Image, ImageDraw

from bunny.demo.synthetic import COLOURS, SHAPES, Picture, Placed, Scene, balanced_questions

PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((196, 18, 38), (246, 84, 66)),
    "green": ((28, 128, 52), (96, 196, 96)),
    "blue": ((28, 58, 168), (82, 136, 236)),
    "yellow": ((246, 214, 48), (214, 170, 10)),
    "purple": ((112, 36, 150), (172, 96, 212)),
}
BACKGROUNDS = ((255, 255, 255), (250, 246, 232), (228, 238, 250), (214, 214, 214), (44, 44, 52), (22, 30, 72))
CANVASES = ((48, 48), (64, 64), (96, 96), (128, 128), (64, 128), (128, 64), (48, 96), (96, 48), (80, 120), (120, 80))
LAYOUTS = ("stack", "row", "scatter")
BORDER_CLEARANCE = 0.06  # a centre is at least this share of the width away from a third's border


def _clear_of_borders(x: float, width: int) -> bool:
    return all(abs(x - width * k / 3) >= BORDER_CLEARANCE * width for k in (1, 2))


def _centres(layout: str, count: int, size: tuple[int, int], radius: float, rng: random.Random) -> list[tuple[float, float]]:
    """Centres for `count` shapes of `radius` on a canvas of `size` in `layout`, none overlapping."""
    width, height = size
    if layout == "stack":
        x = rng.uniform(radius + 1, width - radius - 1)
        step = height / count
        return [(x, step * (i + 0.5)) for i in range(count)]
    if layout == "row":
        y = rng.uniform(radius + 1, height - radius - 1)
        step = width / count
        return [(step * (i + 0.5), y) for i in range(count)]
    centres: list[tuple[float, float]] = []
    while len(centres) < count:
        x, y = rng.uniform(radius + 1, width - radius - 1), rng.uniform(radius + 1, height - radius - 1)
        if all(math.dist((x, y), c) > 2 * radius + 3 for c in centres):
            centres.append((x, y))
    return centres


def random_picture(rng: random.Random, count: int) -> Picture:
    """A picture of `count` shapes of distinct kinds and colours; retried until every centre is clear
    of the thirds' borders and no shape leaves the canvas or touches another."""
    while True:
        size = rng.choice(CANVASES)
        layout = rng.choice(LAYOUTS) if count > 1 else "scatter"
        along = size[1] if layout == "stack" else size[0] if layout == "row" else min(size)
        radius = rng.uniform(0.26, 0.4) * min(min(size), along / count)
        if radius < 7:
            continue
        try:
            centres = _centres(layout, count, size, radius, rng)
        except ValueError:  # the canvas is too small for the radius: uniform() of an empty range
            continue
        if not all(_clear_of_borders(x, size[0]) for x, _ in centres):
            continue
        background = rng.choice(BACKGROUNDS)
        shapes = tuple(
            Placed(shape, colour, x, y, radius, rng.choice(PALETTE[colour]), rng.choice((0, 0, 2, 3)))
            for shape, colour, (x, y) in zip(rng.sample(SHAPES, count), rng.sample(list(COLOURS), count), centres)
        )
        return Picture(size, background, shapes)


def draw(picture: Picture) -> Image.Image:
    image = Image.new("RGB", picture.size, picture.background)
    pen = ImageDraw.Draw(image)
    for p in picture.shapes:
        fill, outline = (None, p.shade) if p.outline else (p.shade, None)
        if p.shape == "circle":
            box = (p.x - p.radius, p.y - p.radius, p.x + p.radius, p.y + p.radius)
            pen.ellipse(box, fill=fill, outline=outline, width=p.outline or 1)
        else:
            # a point-up equilateral triangle, an upright square (corners at 45 degrees)
            sides, turn = (3, -90.0) if p.shape == "triangle" else (4, 45.0)
            corners = [
                (p.x + p.radius * math.cos(math.radians(turn + 360 * k / sides)),
                 p.y + p.radius * math.sin(math.radians(turn + 360 * k / sides)))
                for k in range(sides)
            ]
            pen.polygon(corners, fill=fill, outline=outline, width=p.outline or 1)
    return image


def _matching(kind: str, answer: str, rng: random.Random) -> tuple[Picture, dict[str, Any]]:
    """A picture, and the `ask` arguments, for which the `kind` question answers `answer`."""
    conditions: dict[str, Callable[[Scene], dict[str, Any] | None]] = {
        "count": lambda scene: {} if str(len(scene)) == answer else None,
        "presence": lambda scene: {"present": answer == "yes"},
        "colour": lambda scene: next(({"subject": i.shape} for i in scene if i.colour == answer), None),
        "position": lambda scene: next(({"subject": i.shape} for i in scene if i.position == answer), None),
    }
    while True:
        picture = random_picture(rng, int(answer) if kind == "count" else rng.randint(1, 3))
        arguments = conditions[kind](picture.scene)
        if arguments is not None:
            return picture, arguments


def foreign_questions(rng: random.Random, save: Callable[[Image.Image, str], str], n: int) -> tuple[list[dict], list[dict]]:
    """`n` questions about pictures of this module's drawing (`synthetic.balanced_questions`);
    `save(image, name)` stores a picture and returns its path relative to the image folder."""

    def picture_for(kind: str, answer: str) -> tuple[Scene, dict[str, Any], Callable[[], Image.Image]]:
        picture, arguments = _matching(kind, answer, rng)
        return picture.scene, arguments, lambda: draw(picture)

    return balanced_questions(rng, n, picture_for, lambda image, i: save(image, f"foreign/{i:04d}.png"), "foreign")
