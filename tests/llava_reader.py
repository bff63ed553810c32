"""Reads exported Llava directories the way a user of another engine would: transformers only,
never `bunny` (the run fails if anything imported it), in its own interpreter.

Run as: python tests/llava_reader.py CASES_JSON
CASES_JSON lists {"directory", "image", "messages", "max_new_tokens", "output"}; for each case the
processor's prompt, ids and pixels, the model's logits and greedy tokens, what loading reported and
the classes used go to "output" (a safetensors file, the rest in its metadata as JSON).
"""

from __future__ import annotations

import json
import sys

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor


def read(case: dict) -> None:
    # The PIL backend gives Bunny's pixels exactly; the default (torchvision, when installed) is
    # compared too.
    processor = AutoProcessor.from_pretrained(case["directory"], backend="pil")
    default = AutoProcessor.from_pretrained(case["directory"])
    model, info = AutoModelForImageTextToText.from_pretrained(
        case["directory"], dtype=torch.float32, output_loading_info=True
    )
    model.eval()
    prompt = processor.apply_chat_template(case["messages"], add_generation_prompt=True)
    picture = Image.open(case["image"])
    inputs = processor(images=picture, text=prompt, return_tensors="pt")
    default_inputs = default(images=picture, text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    out = model.generate(**inputs, do_sample=False, max_new_tokens=case["max_new_tokens"])
    metadata = {
        "prompt": prompt,
        "missing_keys": sorted(info["missing_keys"]),
        "unexpected_keys": sorted(info["unexpected_keys"]),
        "model_class": type(model).__name__,
        "image_processor_class": type(processor.image_processor).__name__,
        "default_image_processor_class": type(default.image_processor).__name__,
    }
    save_file(
        {
            "input_ids": inputs["input_ids"][0].contiguous(),
            "pixel_values": inputs["pixel_values"].contiguous(),
            "default_input_ids": default_inputs["input_ids"][0].contiguous(),
            "default_pixel_values": default_inputs["pixel_values"].contiguous(),
            "logits": logits[0].contiguous(),
            "new_tokens": out[0, inputs["input_ids"].shape[1] :].contiguous(),
        },
        case["output"],
        metadata={"json": json.dumps(metadata)},
    )


def main() -> None:
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    for case in cases:
        read(case)
    leaked = sorted(name for name in sys.modules if name == "bunny" or name.startswith("bunny."))
    if leaked:
        sys.exit(f"the exported models were read with bunny imported: {leaked}")


if __name__ == "__main__":
    main()
