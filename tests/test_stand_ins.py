"""The demo's stand-ins for downloaded weights: ordinary local model directories, seeded, and in the
shape the rest of the pipeline expects (phi-2-style tokenizer, SigLIP tower, phi LLM)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, PhiForCausalLM
from safetensors.torch import load_file

from bunny.demo import synthetic
from bunny.data.preprocess import Segment, tokenize_sample, training_template
from bunny.data.tokenizer import load_training_tokenizer
from bunny.demo import stand_ins
from bunny.model.vision_tower import build_vision_tower
from bunny.util.mm_utils import process_images

TOWER = stand_ins.TowerSpec(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2)
LLM = stand_ins.LLMSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_position_embeddings=256)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("stand-ins")
    paths = synthetic.generate(str(root / "data"), num_pretrain=48, num_finetune=40, num_eval=4)
    pretrain = json.loads(Path(paths["pretrain"]).read_text())
    finetune = json.loads(Path(paths["finetune"]).read_text())
    layouts = synthetic.read_layouts(paths["layouts"])
    targets = {picture: stand_ins.patch_targets(layout, TOWER) for picture, layout in layouts.items()}
    texts = Path(paths["text"]).read_text().splitlines()
    curriculum = stand_ins.llm_curriculum(finetune, pretrain, {p: stand_ins.patch_words(t) for p, t in targets.items()})
    rendered = ["".join(segment.text for segment in text) for stage in curriculum for text in stage]
    images = [Image.open(Path(paths["image_folder"]) / s["image"]).convert("RGB") for s in pretrain]
    return dict(root=root, texts=texts + rendered, curriculum=curriculum, finetune=finetune, pretrain=pretrain,
                images=images, targets=torch.stack([targets[s["image"]] for s in pretrain]))


def build(world, name: str) -> dict:
    directory = world["root"] / name
    tokenizer = stand_ins.train_tokenizer(world["texts"], str(directory / "llm"), words=stand_ins.PATCH_WORDS)
    tower = stand_ins.pretrain_tower(
        world["images"], world["targets"], str(directory / "siglip"), TOWER, steps=4, batch_size=16, held_out=0.25
    )
    llm_losses = stand_ins.pretrain_llm(world["curriculum"], tokenizer, str(directory / "llm"), LLM, steps=(3, 3), batch_size=8)
    return dict(dir=directory, tower_losses=tower.losses, tower_accuracy=tower.accuracy, llm_losses=llm_losses)


@pytest.fixture(scope="module")
def built(world) -> dict:
    return build(world, "a")


def test_conversation_text_puts_the_picture_words_where_the_picture_goes_and_learns_the_answers():
    turns = [
        {"from": "human", "value": "<image>\nWhere is the circle?"}, {"from": "gpt", "value": "left"},
        {"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": "red"},
    ]
    pieces = stand_ins.render_conversation(turns, "redcircleleft")
    text = "".join(segment.text for segment in pieces)
    assert text.endswith("USER: redcircleleft\nWhere is the circle? ASSISTANT: left<|endoftext|>USER: What colour is it? ASSISTANT: red<|endoftext|>")
    assert [segment.text for segment in pieces if segment.supervised] == [" left<|endoftext|>", " red<|endoftext|>"]
    assert "<image>" not in "".join(segment.text for segment in stand_ins.render_conversation(turns))


def test_patch_words_give_one_tokenizer_token_per_image_token(world, built):
    from bunny.demo.synthetic import COLOURS, POSITIONS, SHAPES

    blue_triangle_left = [SHAPES.index("triangle") + 1, list(COLOURS).index("blue") + 1, POSITIONS.index("left") + 1, 1]
    targets = torch.tensor([blue_triangle_left, [0, 0, 0, 1], blue_triangle_left, [0, 0, 0, 1]])
    assert stand_ins.patch_words(targets) == "bluetriangleleft emptytwo bluetriangleleft emptytwo"
    tokenizer = AutoTokenizer.from_pretrained(built["dir"] / "llm")
    assert len(stand_ins.PATCH_WORDS) == len(set(stand_ins.PATCH_WORDS)) == 5 * 3 * 3 + 3
    assert all(len(tokenizer.tokenize(" " + word)) == 1 for word in stand_ins.PATCH_WORDS)
    for picture in world["targets"]:  # as many tokens as the tower has patches
        words = stand_ins.patch_words(picture)
        assert len(tokenizer.tokenize(" " + words)) == TOWER.image_size**2 // TOWER.patch_size**2
    with pytest.raises(ValueError, match="too small"):
        stand_ins.train_tokenizer(world["texts"][:50], str(built["dir"] / "small"), vocab_size=300, words=stand_ins.PATCH_WORDS)


def test_curriculum_starts_short_then_uses_the_templates(world):
    short, full = world["curriculum"]
    with_image = [s for s in world["finetune"] if "image" in s]
    assert len(short) == sum(len(s["conversations"]) // 2 for s in with_image) + len(world["pretrain"])
    assert len(full) == len(world["finetune"]) + len(world["pretrain"])
    assert not any("USER:" in segment.text for text in short for segment in text)
    prompt, answer = short[0]
    assert not prompt.supervised and answer.supervised and "\n" in prompt.text and answer.text.endswith("<|endoftext|>")
    assert sum("ASSISTANT:" in "".join(s.text for s in text) for text in full) == len(world["finetune"])


def test_encode_masks_what_the_loss_does_not_cover(built):
    tokenizer = AutoTokenizer.from_pretrained(built["dir"] / "llm")
    ids, labels = stand_ins.encode([Segment("What colour is the circle?", False), Segment(" red<|endoftext|>", True)], tokenizer, 512)
    answer = tokenizer(" red<|endoftext|>")["input_ids"]
    assert ids[-len(answer):] == answer and labels[-len(answer):] == answer
    assert set(labels[: -len(answer)]) == {-100}


def test_tokenizer_fits_the_bunny_template_like_phi_2(world, built):
    tokenizer = load_training_tokenizer(str(built["dir"] / "llm"), "phi-2", 512)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer("USER: hi").input_ids[0] != tokenizer.eos_token_id  # no BOS, as phi-2
    for sample in world["finetune"][:20]:  # the original's label arithmetic agrees: no mismatch error
        tokenized = tokenize_sample(sample["conversations"], tokenizer, training_template("bunny"), has_image="image" in sample)
        assert tokenized.num_supervised > 0


def test_patch_targets_name_the_shape_over_each_patch():
    from bunny.demo.synthetic import COLOURS, POSITIONS, SHAPES, Picture, Placed

    # 2 x 2 patches of 32 px (image_size 64, SUPERSAMPLE-free arithmetic): a red square filling the
    # top-left quarter, a blue circle (radius 8, a fifth of a patch) in the bottom-right one.
    spec = stand_ins.TowerSpec(image_size=64, patch_size=32)
    square = Placed("square", "red", 16, 16, 16 / 0.88, COLOURS["red"], 0)
    circle = Placed("circle", "blue", 52, 52, 8, COLOURS["blue"], 0)
    coverage = stand_ins.patch_coverage(Picture((64, 64), (255, 255, 255), (square, circle)), spec)
    assert coverage[0].tolist() == pytest.approx([1, 0, 0, 0], abs=0.02)
    assert coverage[1].tolist() == pytest.approx([0, 0, 0, 3.1416 * 64 / 1024], abs=0.01)
    targets = stand_ins.patch_targets(Picture((64, 64), (255, 255, 255), (square, circle)), spec)
    red_square = [SHAPES.index("square") + 1, list(COLOURS).index("red") + 1, POSITIONS.index("left") + 1, 1]
    blue_circle = [SHAPES.index("circle") + 1, list(COLOURS).index("blue") + 1, POSITIONS.index("right") + 1, 1]
    assert targets.tolist() == [red_square, [0, 0, 0, 1], [0, 0, 0, 1], blue_circle]
    # A landscape picture is padded to a centred square first: the square now straddles two patches.
    wide = stand_ins.patch_targets(Picture((64, 32), (255, 255, 255), (square,)), spec)
    red_square[3] = 0
    assert wide.tolist() == [red_square, [0, 0, 0, 0], red_square, [0, 0, 0, 0]]
    # A small circle (5% of the top-left patch) beside a square that covers a quarter of it and of the
    # patch below: the circle takes the patch it covers most, the square keeps the other.
    tall = Placed("square", "red", 12, 32, 11 / 0.88, COLOURS["red"], 0)
    small = Placed("circle", "blue", 27, 8, 4, COLOURS["blue"], 0)
    targets = stand_ins.patch_targets(Picture((64, 64), (255, 255, 255), (tall, small)), spec)
    red_square[3], blue_circle[2:] = 1, [POSITIONS.index("middle") + 1, 1]
    assert targets.tolist() == [blue_circle, [0, 0, 0, 1], red_square, [0, 0, 0, 1]]


def test_patch_coverage_is_where_the_drawn_shapes_are():
    # Checked against the pixels of drawn, padded pictures: the masks follow the same geometry.
    from bunny.demo.synthetic import draw, place, random_scene
    from bunny.util.images import expand2square

    spec = stand_ins.TowerSpec()
    grid = spec.image_size // spec.patch_size
    rng = random.Random(0)
    for _ in range(30):
        picture = place(random_scene(rng), rng)
        square = expand2square(draw(picture), (127, 127, 127))
        pixels = torch.tensor(list(square.getdata())).view(square.height, square.width, 3)
        coverage = stand_ins.patch_coverage(picture, spec)
        for shape, share in zip(picture.shapes, coverage):
            mask = (pixels == torch.tensor(shape.shade)).all(-1).float()  # [side, side]
            edges = torch.linspace(0, square.width, grid + 1).round().long()
            measured = torch.tensor([
                mask[edges[r]:edges[r + 1], edges[c]:edges[c + 1]].mean().item() for r in range(grid) for c in range(grid)
            ])
            assert (measured - share).abs().max() < 0.12, (picture, shape)


def test_patch_accuracy_counts_shape_patches_for_what_and_where_and_all_for_count():
    targets = torch.tensor([[[1, 2, 3, 0], [0, 0, 0, 0], [2, 5, 1, 0], [0, 0, 0, 0]]])  # one picture, 4 patches

    class Tower(torch.nn.Module):  # hands its input on as the second-to-last layer's features
        def forward(self, pixel_values, output_hidden_states):
            return SimpleNamespace(hidden_states=(pixel_values, None))

    def head(i: int, wrong: int, classes: int):  # right except on patch `wrong`
        def name(features):
            labels = targets[..., i].clone()
            labels[:, wrong] = (labels[:, wrong] + 1) % classes
            return torch.nn.functional.one_hot(labels, classes).float()
        return name

    heads = [head(i, wrong, n) for i, (wrong, n) in enumerate(zip((0, 1, 3, 3), stand_ins.PATCH_CLASSES))]
    accuracy = stand_ins.patch_accuracy(Tower(), heads, torch.zeros(1, 4, 8), targets)
    assert accuracy == {"kind": 0.5, "colour": 1.0, "third": 1.0, "count": 0.75}
    assert stand_ins.patch_accuracy(Tower(), heads, torch.zeros(0, 4, 8), targets[:0]) == {}


def test_tower_loss_stays_finite_on_pictures_without_shape_patches(world, tmp_path):
    empty = torch.zeros_like(world["targets"])  # every patch background: the shape-patch terms are skipped
    tower = stand_ins.pretrain_tower(world["images"], empty, str(tmp_path / "siglip"), TOWER, steps=2, batch_size=8)
    assert all(math.isfinite(loss) for loss in tower.losses)


def test_tower_loads_as_a_bunny_tower_with_centred_features(world, built):
    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=str(built["dir"] / "siglip")))
    assert tower.num_patches == (TOWER.image_size // TOWER.patch_size) ** 2
    pixels = process_images(world["images"][:48], tower.image_processor, SimpleNamespace(image_aspect_ratio="pad"))
    with torch.no_grad():
        features = tower(pixels)  # [N, P, C], the second-to-last layer
    mean = features.mean(dim=(0, 1))
    assert mean.abs().max() < 1e-3 * features.abs().mean() + 1e-5
    assert len(built["tower_losses"]) == 4
    assert set(built["tower_accuracy"]) == {"kind", "colour", "third", "count"}
    assert all(0 <= value <= 1 for value in built["tower_accuracy"].values())


def test_llm_is_a_plain_phi_directory(built):
    model = PhiForCausalLM.from_pretrained(built["dir"] / "llm")
    tokenizer = AutoTokenizer.from_pretrained(built["dir"] / "llm")
    assert model.config.model_type == "phi" and model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert built["llm_losses"][-1] < built["llm_losses"][0]


def test_same_seed_same_weights(world, built):
    again = build(world, "b")
    assert (again["dir"] / "llm" / "tokenizer.json").read_text() == (built["dir"] / "llm" / "tokenizer.json").read_text()
    assert again["tower_losses"] == built["tower_losses"] and again["llm_losses"] == built["llm_losses"]
    for name in ("siglip/model.safetensors", "llm/model.safetensors"):
        first, second = load_file(built["dir"] / name), load_file(again["dir"] / name)
        assert all(torch.equal(first[k], second[k]) for k in first), name
