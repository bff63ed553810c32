"""Prompt strings, image-aware token ids and image tensors equal the original's recorded ones; plus
the utilities around them (templates table, model names, image loading errors, stopping)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer

from bunny.conversation import SeparatorStyle, conv_templates, get_conv_template
from bunny.model.vision_tower.siglip import SiglipVisionTower
from bunny.util.mm_utils import (
    ImageLoadError,
    KeywordsStoppingCriteria,
    expand2square,
    get_model_name_from_path,
    load_image,
    load_image_from_base64,
    process_images,
    tokenizer_image_token,
)
from tiny import FIXTURES

PREPROCESS = FIXTURES / "goldens" / "preprocess"
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)


@pytest.mark.parametrize("path", sorted(PREPROCESS.glob("conversation_*.json")), ids=lambda p: p.stem)
def test_conversation_goldens(path):
    golden = json.loads(path.read_text())
    meta = golden["meta"]
    template = conv_templates[meta["template"]]
    assert (template.system, list(template.roles), template.sep, template.sep2, template.version) == (
        meta["system"], meta["roles"], meta["sep"], meta["sep2"], meta["version"]
    )
    assert template.sep_style.name == meta["sep_style"]
    for name, case in golden["cases"].items():
        conv = get_conv_template(meta["template"])
        for role, message in case["messages"]:
            role = conv.roles[0] if role == "USER" else conv.roles[1]
            conv.append_message(role, tuple(message) if isinstance(message, list) else message)
        assert conv.get_prompt() == case["prompt"], name


def test_templates_table():
    expected = {
        "bunny": "<|endoftext|>", "default": "<|endoftext|>", "phi3": "<|endoftext|>",
        "minicpm": "</s>", "llama": "<|end_of_text|>",
    }
    for name, sep2 in expected.items():
        conv = conv_templates[name]
        assert (conv.system, conv.roles, conv.sep, conv.sep2, conv.sep_style) == (
            SYSTEM, ("USER", "ASSISTANT"), " ", sep2, SeparatorStyle.TWO
        )
        assert conv.stop_str == sep2
    assert conv_templates["default"] is conv_templates["bunny"]
    plain = get_conv_template("plain")
    plain.append_message(plain.roles[0], "<image>")
    plain.append_message(plain.roles[1], None)
    assert plain.get_prompt() == "<image>\n" and plain.stop_str == "\n"
    # A filled reply in `plain` no longer raises (the original's sep2 was None).
    plain.messages[-1][-1] = "a caption"
    assert plain.get_prompt() == "<image>\na caption\n"
    with pytest.raises(ValueError, match="Unknown conversation template 'nope'"):
        get_conv_template("nope")


def test_template_copies_are_independent():
    conv = get_conv_template("bunny")
    conv.append_message("USER", "hi")
    assert conv_templates["bunny"].messages == [] and get_conv_template("bunny").messages == []


def test_web_ui_image_message():
    conv = get_conv_template("bunny")
    conv.append_message(conv.roles[0], ("Describe it\n<image>", Image.new("RGB", (10, 6)), "Default"))
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == SYSTEM + " USER: <image>\nDescribe it ASSISTANT:"
    assert conv.dict()["messages"][0] == ["USER", "Describe it\n<image>"]  # the conversation log keeps the text


@pytest.mark.parametrize("path", sorted(PREPROCESS.glob("tokenizer_image_token_*.json")), ids=lambda p: p.stem)
def test_tokenizer_image_token_goldens(path):
    golden = json.loads(path.read_text())
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / golden["meta"]["tokenizer_dir"])
    for case in golden["cases"]:
        assert tokenizer_image_token(case["prompt"], tokenizer) == case["input_ids"], case["prompt"]
        assert tokenizer(case["prompt"]).input_ids == case["plain_tokenizer_ids"]
    tensor = tokenizer_image_token("a <image> b", tokenizer, return_tensors="pt")
    assert tensor.dtype == torch.long and tensor.ndim == 1
    with pytest.raises(ValueError, match="Unsupported tensor type"):
        tokenizer_image_token("a", tokenizer, return_tensors="np")


def test_process_images_golden():
    golden = json.loads((PREPROCESS / "process_images_public.json").read_text())
    tensors = load_file(PREPROCESS / "process_images_public.safetensors")
    for key, case in golden.items():
        tower = SiglipVisionTower(str(FIXTURES / case["vision_tower"]))
        assert tuple(int(m * 255) for m in tower.image_processor.image_mean) == tuple(case["pad_background"])
        image = Image.open(FIXTURES / "images" / case["image"]).convert("RGB")
        cfg = type("Cfg", (), {"image_aspect_ratio": case["image_aspect_ratio"]})()
        out = process_images([image], tower.image_processor, cfg)
        assert list(out.shape) == case["shape"]
        torch.testing.assert_close(out, tensors[key], atol=0, rtol=0)


def test_process_images_square_mode_and_modes():
    tower = SiglipVisionTower(str(FIXTURES / "siglip-tiny"))
    images = [Image.open(FIXTURES / "images" / n) for n in ("test_image.png", "test_image_tall.png")]
    cfg = type("Cfg", (), {"image_aspect_ratio": "square"})()
    assert process_images(images, tower.image_processor, cfg).shape == (2, 3, 32, 32)
    rgba = images[0].convert("RGBA")
    pad = type("Cfg", (), {"image_aspect_ratio": "pad"})()
    assert process_images([rgba], tower.image_processor, pad).shape == (1, 3, 32, 32)


def test_expand2square_centres_the_image():
    image = Image.new("RGB", (6, 2), (255, 0, 0))
    square = expand2square(image, (1, 2, 3))
    assert square.size == (6, 6)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((0, 2)) == (255, 0, 0)
    assert square.getpixel((0, 4)) == (1, 2, 3)
    assert expand2square(square, (0, 0, 0)) is square


@pytest.mark.parametrize(
    "path,name",
    [
        ("/x/bunny-phi-2-siglip-lora", "bunny-phi-2-siglip-lora"),
        ("/x/run/checkpoint-500/", "run_checkpoint-500"),
        ("BAAI/Bunny-v1_0-3B", "Bunny-v1_0-3B"),
    ],
)
def test_get_model_name_from_path(path, name):
    assert get_model_name_from_path(path) == name


def test_load_image_errors(tmp_path):
    with pytest.raises(ImageLoadError, match="image file not found: .*missing.png"):
        load_image(str(tmp_path / "missing.png"))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ImageLoadError, match="corrupt.png is not a readable image"):
        load_image(str(corrupt))
    with pytest.raises(ImageLoadError, match="not valid base64"):
        load_image_from_base64("@@not base64@@")
    good = load_image(str(FIXTURES / "images" / "test_image.png"))
    assert good.mode == "RGB" and good.size == (60, 40)


def test_keywords_stopping_is_per_sequence():
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "tok-phi")
    prompt = torch.tensor([[5, 6, 7], [5, 6, 7]])
    criteria = KeywordsStoppingCriteria(["<|endoftext|>", "###"], tokenizer, prompt)
    hash_ids = tokenizer("###").input_ids
    outputs = torch.cat([prompt, torch.tensor([[40, 994], [40, 41]])], dim=1)
    assert criteria(outputs, None).tolist() == [True, False]
    outputs = torch.cat([prompt, torch.tensor([[40] + hash_ids, [41] * (1 + len(hash_ids))])], dim=1)
    assert criteria(outputs, None).tolist() == [True, False]


def test_atomic_write_leaves_no_partial_file(tmp_path):
    from bunny.util.utils import atomic_write

    target = tmp_path / "answers.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half a line")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_write(target) as f:
        f.write("done\n")
    assert target.read_text() == "done\n"
    # what others may read gets the permissions open() would give it; a secret only its owner's
    with atomic_write(tmp_path / "new" / "metrics.json") as f:
        f.write("{}")
    with atomic_write(tmp_path / "key.secret", private=True) as f:
        f.write("s3cret")
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "new" / "metrics.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode
    assert (tmp_path / "key.secret").stat().st_mode & 0o777 == 0o600


@pytest.fixture()
def image_server(tmp_path):
    """A loopback HTTP server for tmp_path."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_load_image_from_url(image_server):
    root, url = image_server
    Image.new("RGB", (5, 3), (10, 20, 30)).save(root / "pic.png")
    (root / "notes.txt").write_text("not an image")
    image = load_image(f"{url}/pic.png")
    assert image.size == (5, 3) and image.getpixel((0, 0)) == (10, 20, 30)
    with pytest.raises(ImageLoadError, match="could not fetch image .*missing.png"):
        load_image(f"{url}/missing.png")
    with pytest.raises(ImageLoadError, match="notes.txt is not a readable image"):
        load_image(f"{url}/notes.txt")
