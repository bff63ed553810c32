"""The demo's stand-ins for downloaded weights: ordinary local model directories, seeded, and in the
shape the rest of the pipeline expects (phi-2-style tokenizer, SigLIP tower, phi LLM)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, PhiForCausalLM
from safetensors.torch import load_file

from bunny.data import synthetic
from bunny.data.preprocess import tokenize_sample, training_template
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
    captions = json.loads(Path(paths["captions"]).read_text())
    texts = Path(paths["text"]).read_text().splitlines()
    conversations = [stand_ins.render_conversation(s["conversations"], captions.get(s.get("image"), "")) for s in finetune]
    images = [Image.open(Path(paths["image_folder"]) / s["image"]).convert("RGB") for s in pretrain]
    return dict(root=root, texts=texts + conversations, conversations=conversations, finetune=finetune,
                images=images, scenes=[synthetic.parse_caption(s["conversations"][1]["value"]) for s in pretrain])


def build(world, name: str) -> dict:
    directory = world["root"] / name
    tokenizer = stand_ins.train_tokenizer(world["texts"], str(directory / "llm"))
    tower_losses = stand_ins.pretrain_tower(
        world["images"], world["scenes"], str(directory / "siglip"), TOWER, steps=4, batch_size=16
    )
    llm_losses = stand_ins.pretrain_llm(world["conversations"], tokenizer, str(directory / "llm"), LLM, steps=4, batch_size=8)
    return dict(dir=directory, tower_losses=tower_losses, llm_losses=llm_losses)


@pytest.fixture(scope="module")
def built(world) -> dict:
    return build(world, "a")


def test_conversation_text_puts_the_caption_where_the_picture_goes():
    turns = [{"from": "human", "value": "<image>\nWhere is the circle?"}, {"from": "gpt", "value": "left"}]
    text = stand_ins.render_conversation(turns, "A red circle on the left.")
    assert text.endswith("USER: A red circle on the left.\nWhere is the circle? ASSISTANT: left<|endoftext|>")
    assert "<image>" not in stand_ins.render_conversation(turns)


def test_tokenizer_fits_the_bunny_template_like_phi_2(world, built):
    tokenizer = load_training_tokenizer(str(built["dir"] / "llm"), "phi-2", 512)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer("USER: hi").input_ids[0] != tokenizer.eos_token_id  # no BOS, as phi-2
    for sample in world["finetune"][:20]:  # the original's label arithmetic agrees: no mismatch error
        tokenized = tokenize_sample(sample["conversations"], tokenizer, training_template("bunny"), has_image="image" in sample)
        assert tokenized.num_supervised > 0


def test_tower_targets_name_each_shapes_colour_and_column():
    scene = synthetic.parse_caption("A blue triangle on the left and a red circle on the right.")
    # colour of circle, square, triangle (0 = absent, else 1 + index in COLOURS), then their columns
    assert stand_ins.scene_targets(scene) == [1, 0, 3, 3, 0, 1]


def test_tower_loads_as_a_bunny_tower_with_centred_features(world, built):
    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=str(built["dir"] / "siglip")))
    assert tower.num_patches == (TOWER.image_size // TOWER.patch_size) ** 2
    pixels = process_images(world["images"][:48], tower.image_processor, SimpleNamespace(image_aspect_ratio="pad"))
    with torch.no_grad():
        features = tower(pixels)  # [N, P, C], the second-to-last layer
    mean = features.mean(dim=(0, 1))
    assert mean.abs().max() < 1e-3 * features.abs().mean() + 1e-5
    assert len(built["tower_losses"]) == 4


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
