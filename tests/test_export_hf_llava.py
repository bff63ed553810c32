"""`python -m bunny.export --format hf-llava`: every backbone with a SigLIP and a CLIP tower exports to
a Llava directory that transformers alone (a fresh interpreter that never imports bunny,
tests/llava_reader.py) reads into the same prompt, ids, pixels, logits and greedy tokens as Bunny.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoTokenizer

from bunny.constants import IMAGE_TOKEN_INDEX
from bunny.conversation import get_conv_template
from bunny.export.write import ExportRequest, export
from bunny.model import MODEL_TYPES, get_backbone
from bunny.model.builder import load_pretrained_model
from bunny.util.mm_utils import process_images, tokenizer_image_token
from tiny import FIXTURES, build_model

QUESTION = "What is shown in this picture?"
PICTURE = FIXTURES / "images" / "test_image.png"  # 60 x 40: padding to a square matters
MAX_NEW_TOKENS = 8
# Tokenizers that prepend BOS (as phi-3's, MiniCPM's and llama-3's do) and ones that don't.
BOS_TOKENIZER_TYPES = {"phi-3", "minicpm", "llama3-8b"}
CASES = [(model_type, tower) for model_type in MODEL_TYPES for tower in ("siglip", "clip")]


def save_checkpoint(directory: Path, model_type: str, tower: str) -> Path:
    """A tiny random Bunny checkpoint of `model_type` on `tower`, with a 1000-id tokenizer."""
    name = "tok-llama3" if model_type in BOS_TOKENIZER_TYPES else "tok-phi"
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / name)
    model = build_model(
        model_type, tower, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=None,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def bunny_side(checkpoint: Path, model_type: str, eos: list[int]) -> dict:
    """What Bunny itself makes of the picture and the question."""
    tokenizer, model, processor, _ = load_pretrained_model(str(checkpoint), None, None, model_type, device="cpu")
    conv = get_conv_template(get_backbone(model_type).template)
    conv.append_message(conv.roles[0], "<image>\n" + QUESTION)
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
    pixels = process_images([Image.open(PICTURE).convert("RGB")], processor, model.config)
    with torch.no_grad():
        logits = model(ids, images=pixels).logits[0]
    out = model.generate(ids, images=pixels, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos)
    return dict(
        prompt=conv.get_prompt(), ids=ids[0].tolist(), pixels=pixels, logits=logits,
        new_tokens=out[0, ids.shape[1] :].tolist(), vocab=len(tokenizer), image_tokens=model.image_token_count,
        image_mean=processor.image_mean,
    )


def read_output(path: Path) -> dict:
    with safe_open(path, "pt") as f:
        result = {name: f.get_tensor(name) for name in f.keys()}
        result.update(json.loads(f.metadata()["json"]))
    return result


def read_with_transformers(directory: Path, cases: dict[str, Path], image: Path = PICTURE) -> dict[str, dict]:
    """Each exported directory of `cases` read by tests/llava_reader.py in a fresh interpreter."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    reader_cases = [
        dict(directory=str(exported), image=str(image), messages=messages, max_new_tokens=MAX_NEW_TOKENS,
             output=str(directory / f"{name}.read.safetensors"))
        for name, exported in cases.items()
    ]
    (directory / "cases.json").write_text(json.dumps(reader_cases))
    reader = Path(__file__).with_name("llava_reader.py")
    run = subprocess.run([sys.executable, str(reader), str(directory / "cases.json")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return {name: read_output(directory / f"{name}.read.safetensors") for name in cases}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, siglip_tower, clip_tower) -> dict:
    root = tmp_path_factory.mktemp("export")
    towers = {"siglip": siglip_tower, "clip": clip_tower}
    cases = {}
    for model_type, tower in CASES:
        name = f"{model_type}-{tower}"
        checkpoint = save_checkpoint(root / name, model_type, towers[tower])
        output = root / f"{name}-llava"
        export(ExportRequest(model_path=str(checkpoint), model_type=model_type, output_dir=str(output)))
        eos = json.loads((output / "generation_config.json").read_text())["eos_token_id"]
        cases[name] = dict(bunny=bunny_side(checkpoint, model_type, eos), directory=output)
    read = read_with_transformers(root, {name: case["directory"] for name, case in cases.items()})
    return {name: {**case, "llava": read[name]} for name, case in cases.items()}


@pytest.mark.parametrize("model_type,tower", CASES)
def test_llava_reads_what_bunny_computes(exported, model_type, tower):
    case = exported[f"{model_type}-{tower}"]
    bunny, llava = case["bunny"], case["llava"]
    info = json.loads((case["directory"] / "export_info.json").read_text())
    image_id = info["image_token_id"]
    assert image_id == bunny["vocab"]  # a new row after the LLM's V
    assert llava["model_class"] == "LlavaForConditionalGeneration"
    assert llava["image_processor_class"] == "LlavaImageProcessorPil"
    assert llava["missing_keys"] == []
    image_processor = json.loads((case["directory"] / "preprocessor_config.json").read_text())  # for transformers 4.x
    assert image_processor["do_pad"] is True and image_processor["image_mean"] == list(bunny["image_mean"])
    # Llava's head has no bias; phi's zero bias is there for vLLM's phi.
    assert llava["unexpected_keys"] == (["lm_head.bias"] if model_type.startswith("phi-") and model_type != "phi-3" else [])

    assert llava["prompt"] == bunny["prompt"]
    expanded = []
    for token in bunny["ids"]:
        expanded += [image_id] * bunny["image_tokens"] if token == IMAGE_TOKEN_INDEX else [token]
    assert llava["input_ids"].tolist() == expanded
    assert torch.equal(llava["pixel_values"], bunny["pixels"])
    # transformers' default backend (torchvision where installed) resizes a little differently: ids
    # the same, pixels within 2 of 255 levels.
    assert torch.equal(llava["default_input_ids"], llava["input_ids"])
    std = min(json.loads((case["directory"] / "processor_config.json").read_text())["image_processor"]["image_std"])
    torch.testing.assert_close(llava["default_pixel_values"], bunny["pixels"], atol=2 / 255 / std, rtol=0)
    vocab = bunny["vocab"]
    assert llava["logits"].shape == (len(expanded), vocab + 1)
    torch.testing.assert_close(llava["logits"][:, :vocab], bunny["logits"], atol=1e-5, rtol=0)
    assert llava["new_tokens"].tolist() == bunny["new_tokens"]
    assert len(bunny["new_tokens"]) >= 2
