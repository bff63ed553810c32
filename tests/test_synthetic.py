"""`python -m bunny.demo.synthetic`: seeded, in the original's formats, and its answer key is what the
pictures show (checked from the pixels, independently of the generator's own bookkeeping)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from bunny.demo import foreign, synthetic
from bunny.data.dataset import load_training_data
from bunny.eval.common import read_question_file, read_jsonl


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    synthetic.main(["--output-dir", str(root), "--num-pretrain", "40", "--num-finetune", "60", "--num-eval", "120",
                    "--text-only-fraction", "0.2", "--num-foreign", "60"])
    return root


def test_same_seed_same_files_other_seed_other_files(data, tmp_path):
    again = tmp_path / "again"
    synthetic.generate(str(again), seed=0, num_pretrain=40, num_finetune=60, num_eval=120, text_only_fraction=0.2, num_foreign=60)
    assert digest(again) == digest(data)
    other = tmp_path / "other"
    synthetic.generate(str(other), seed=1, num_pretrain=40, num_finetune=60, num_eval=120, text_only_fraction=0.2, num_foreign=60)
    assert digest(other)["finetune.json"] != digest(data)["finetune.json"]


def test_training_files_load_in_the_training_format(data):
    pretrain = load_training_data(str(data / "pretrain.json"))
    finetune = load_training_data(str(data / "finetune.json"))
    assert len(pretrain) == 40 and len(finetune) == 60
    assert all(s["conversations"][0]["value"].startswith("<image>\n") and len(s["conversations"]) == 2 for s in pretrain)
    text_only = [s for s in finetune if "image" not in s]
    assert 0 < len(text_only) < len(finetune)
    assert not any("<image>" in t["value"] for s in text_only for t in s["conversations"])
    for sample in finetune:
        if "image" in sample:
            assert (data / "images" / sample["image"]).is_file()
            values = [t["value"] for t in sample["conversations"]]
            assert values[0].startswith("<image>\n") and sum("<image>" in v for v in values) == 1
            assert [t["from"] for t in sample["conversations"]] == ["human", "gpt"] * (len(values) // 2)


def test_pictures_vary_in_size_shape_background_and_drawing(data):
    sizes = {Image.open(p).size for p in (data / "images" / "pretrain").iterdir()}
    assert len(sizes) > 10
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    layouts = list(synthetic.read_layouts(str(data / "layouts.json")).values())
    assert min(max(p.size) for p in layouts) < 100 < 200 < max(max(p.size) for p in layouts)
    assert any(max(p.background) < 80 for p in layouts) and any(min(p.background) > 190 for p in layouts)
    assert any(p.noise for p in layouts) and any(not p.noise for p in layouts)
    shapes = [s for p in layouts for s in p.shapes]
    assert any(s.outline for s in shapes) and any(not s.outline for s in shapes)
    assert len({s.shade for s in shapes}) > len(synthetic.COLOURS)
    assert any(len({i.position for i in p.scene}) < len(p.shapes) for p in layouts)  # two shapes in one third
    radii = [s.radius / min(p.size) for p in layouts for s in p.shapes]
    assert min(radii) < 0.14 and max(radii) > 0.24


def test_layouts_are_the_pictures_and_captions_they_belong_to(data):
    layouts = synthetic.read_layouts(str(data / "layouts.json"))
    captions = json.loads((data / "captions.json").read_text())
    assert set(layouts) == set(captions)
    for picture, layout in layouts.items():
        assert layout.scene == synthetic.parse_caption(captions[picture])
        image = Image.open(data / "images" / picture).convert("RGB")
        assert image.size == layout.size
        for shape in layout.shapes:
            if not shape.outline:  # the centre of a filled shape has its shade
                assert image.getpixel((int(shape.x), int(shape.y))) == shape.shade


def test_a_layout_file_that_is_not_ours_is_refused_by_name(data, tmp_path):
    rows = json.loads((data / "layouts.json").read_text())
    picture = sorted(rows)[3]
    del rows[picture]["shapes"][0]["radius"]
    broken = tmp_path / "layouts.json"
    broken.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=f"{broken}: the entry of '{picture}' is not a layout"):
        synthetic.read_layouts(str(broken))


def test_shapes_are_placed_in_their_third_inside_the_canvas_apart():
    rng = random.Random(5)
    for _ in range(300):
        scene = synthetic.random_scene(rng)
        picture = synthetic.place(scene, rng)
        width, height = picture.size
        assert picture.scene == scene
        assert synthetic.CANVAS_SIDE[0] <= max(width, height) <= synthetic.CANVAS_SIDE[1]
        assert synthetic.ASPECT[0] - 0.02 <= width / height <= synthetic.ASPECT[1] + 0.02
        for shape in picture.shapes:
            assert shape.radius <= shape.x <= width - shape.radius and shape.radius <= shape.y <= height - shape.radius
            assert min(abs(shape.x - width * k / 3) for k in (1, 2)) >= synthetic.BORDER_CLEARANCE * width
            assert shape.radius >= synthetic.SMALLEST_RADIUS
        for a, b in itertools.combinations(picture.shapes, 2):
            assert math.dist((a.x, a.y), (b.x, b.y)) > a.radius + b.radius


def colours_in(image: Image.Image, shades: dict[str, tuple[tuple[int, int, int], ...]], least: int) -> set[str]:
    """Colour names of which more than `least` pixels of `image` have one of the name's `shades`."""
    counts = Counter(image.convert("RGB").getdata())
    return {name for name, rgbs in shades.items() if sum(counts[rgb] for rgb in rgbs) > least}


def check_key_against_pixels(root: Path, questions: list[dict], key: dict, colours: Callable[[Image.Image], set[str]]):
    """Each answer checked from the pictures' pixels, independently of the generator's bookkeeping:
    `colours(image)` names the shape colours drawn in (a part of) a picture."""
    for question in questions:
        answer, kind = key[question["question_id"]]["answer"], question["category"]
        assert question["text"].endswith("\n" + synthetic.SHORT_ANSWER)
        image = Image.open(root / "images" / question["image"]).convert("RGB")
        found = colours(image)
        if kind == "count":
            assert len(found) == int(answer), question
        elif kind == "colour":
            assert answer in found, question
        elif kind == "presence":
            named = next(c for c in synthetic.COLOURS if f" {c} " in question["text"])
            if answer == "yes":
                assert named in found, question
        else:
            # some shape colour lies in the answer's third of the picture
            column = synthetic.POSITIONS.index(answer)
            third = (int(column * image.width / 3), 0, int((column + 1) * image.width / 3), image.height)
            assert colours(image.crop(third)), question


GENERATOR_SHADES = synthetic.SHADES


def test_answer_key_is_what_the_pictures_show(data):
    questions = read_question_file(str(data / "eval" / "questions.jsonl"))
    key = {row["question_id"]: row for row in read_jsonl(str(data / "eval" / "answer_key.jsonl"))}
    assert len(questions) == len(key) == 120
    check_key_against_pixels(data, questions, key, lambda image: colours_in(image, GENERATOR_SHADES, 20))


def test_captions_parse_back_into_the_pictures_they_describe(data):
    captions = json.loads((data / "captions.json").read_text())
    assert captions
    for picture, caption in captions.items():
        scene = synthetic.parse_caption(caption)
        assert synthetic.caption(scene) == caption
        assert {item.colour for item in scene} == colours_in(Image.open(data / "images" / picture), GENERATOR_SHADES, 20)


@pytest.mark.parametrize("text", ["A red circle on the left", "A pink circle on the left.", "", "A red circle."])
def test_parse_caption_rejects_other_text(text):
    with pytest.raises(ValueError, match="not a caption"):
        synthetic.parse_caption(text)


def test_held_out_answers_are_balanced_within_each_kind(data):
    key = read_jsonl(str(data / "eval" / "answer_key.jsonl"))
    for kind, spec in synthetic.QUESTION_KINDS.items():
        counts = Counter(row["answer"] for row in key if row["category"] == kind)
        assert set(counts) == set(spec.answers)
        assert max(counts.values()) - min(counts.values()) <= 1, (kind, counts)
    chance = synthetic.chance_accuracy([row["category"] for row in key])
    assert chance["by_type"] == {"colour": 0.2, "count": 1 / 3, "presence": 0.5, "position": 1 / 3}
    assert chance["overall"] == pytest.approx((0.2 + 1 / 3 + 0.5 + 1 / 3) / 4)


def test_blind_questions_are_the_same_questions_about_a_blank_picture(data):
    seen = read_question_file(str(data / "eval" / "questions.jsonl"))
    blind = read_question_file(str(data / "eval" / "questions_blind.jsonl"))
    assert [{**q, "image": None} for q in seen] == [{**q, "image": None} for q in blind]
    assert {q["image"] for q in blind} == {synthetic.BLANK_IMAGE}
    assert colours_in(Image.open(data / "images" / synthetic.BLANK_IMAGE), GENERATOR_SHADES, 20) == set()


def test_eval_size_must_cover_every_kind(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4"):
        synthetic.generate(str(tmp_path), num_pretrain=1, num_finetune=1, num_eval=6)


def test_text_file_holds_every_training_text(data):
    text = (data / "text.txt").read_text()
    finetune = json.loads((data / "finetune.json").read_text())
    for sample in finetune[:10]:
        for turn in sample["conversations"]:
            assert turn["value"].replace("<image>\n", "") in text


def test_readme_documents_every_question_phrasing():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for kind, spec in synthetic.QUESTION_KINDS.items():
        assert f"| {kind} |" in readme
        for phrasing in spec.phrasings:
            assert f'"{phrasing}"' in readme, phrasing
        assert ", ".join(spec.answers) in readme
    assert synthetic.SHORT_ANSWER in readme


def test_the_example_pictures_in_images_are_scenes_of_the_shapes_world():
    # the demo chats about them and the web page offers them: the demo model must know their world
    shipped = sorted(path.name for path in (Path(__file__).parents[1] / "images").iterdir())
    assert shipped == sorted(synthetic.EXAMPLE_PICTURES)
    for name in shipped:
        picture = Image.open(Path(__file__).parents[1] / "images" / name).convert("RGB")
        assert list(picture.getdata()) == list(synthetic.draw_example(name).getdata()), name


def test_foreign_set_is_another_drawing_whose_key_is_what_its_pictures_show(data):
    questions = read_question_file(str(data / "eval" / "questions_foreign.jsonl"))
    key = {row["question_id"]: row for row in read_jsonl(str(data / "eval" / "answer_key_foreign.jsonl"))}
    assert len(questions) == len(key) == 60
    for kind, spec in synthetic.QUESTION_KINDS.items():
        given = Counter(row["answer"] for row in key.values() if row["category"] == kind)
        assert set(given) == set(spec.answers) and max(given.values()) - min(given.values()) <= 1, (kind, given)
    assert set(foreign.PALETTE) == set(synthetic.COLOURS)  # the same names, shades of its own
    generator_shades = set(synthetic.COLOURS.values())
    for question in questions:
        image = Image.open(data / "images" / question["image"]).convert("RGB")
        assert question["image"].startswith("foreign/") and image.size in foreign.CANVASES
        assert not generator_shades & set(image.getdata())  # none of the generator's colours
    check_key_against_pixels(data, questions, key, lambda image: colours_in(image, foreign.PALETTE, 4))


def test_foreign_positions_are_the_third_of_each_centre():
    rng = random.Random(3)
    for _ in range(200):
        picture = foreign.random_picture(rng, rng.randint(1, 3))
        width = picture.size[0]
        for shape, item in zip(sorted(picture.shapes, key=lambda p: p.x), picture.scene):
            assert item.position == synthetic.POSITIONS[int(3 * shape.x / width)]
            assert min(abs(shape.x - width * k / 3) for k in (1, 2)) >= foreign.BORDER_CLEARANCE * width
            assert shape.radius <= shape.x <= width - shape.radius
