"""Show what training will learn from a data file: each sample's prompt and its supervised tokens.

Run as:
    python -m bunny.data.inspect --data_path data.json --model_name_or_path microsoft/phi-2 \\
        --version bunny --model_max_length 2048 [--model_type phi-2] \\
        [--image_folder images --vision_tower google/siglip-so400m-patch14-384 --image_aspect_ratio pad \\
         --mm_projector_type mlp2x_gelu] \\
        [--tokenization_mismatch error|mask] [--json]

Supervised text is shown in green on a terminal and between `[[` and `]]` otherwise. `--json`
prints one object per sample: `{"id", "input_ids", "labels"}` (plus `"error"` for a sample that
training would reject). The exit status is 1 when any sample would be rejected.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from bunny.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from bunny.data.dataset import LazySupervisedDataset
from bunny.data.preprocess import MISMATCH_MODES, TokenizationMismatchError, TokenizedSample, training_template
from bunny.data.tokenizer import load_training_tokenizer
from bunny.model.backbones import MODEL_TYPES
from bunny.util.images import ImageLoadError

GREEN, RESET = "\033[32m", "\033[0m"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", required=True, help="training JSON file (LLaVA conversation format)")
    parser.add_argument("--model_name_or_path", required=True, help="the LLM whose tokenizer training uses")
    parser.add_argument("--version", required=True, help="conversation template, as --version in training")
    parser.add_argument("--model_max_length", type=int, required=True, help="as --model_max_length in training")
    parser.add_argument("--model_type", default=None, choices=MODEL_TYPES, help="applies its tokenizer quirks (llama-3 eos/pad)")
    parser.add_argument("--image_folder", default=None, help="root of the samples' image paths; images are opened")
    parser.add_argument("--vision_tower", default=None, help="tower whose processor checks the images and sets the image length")
    parser.add_argument("--image_aspect_ratio", default=None, help="pad or square, as in training")
    parser.add_argument(
        "--mm_projector_type", default="mlp2x_gelu",
        help="as in training; with --vision_tower it sets how many positions an image takes (ldp, spp_v*, vanilla and minigpt shorten it)",
    )
    parser.add_argument("--tokenization_mismatch", default="error", choices=MISMATCH_MODES, help="as in training")
    parser.add_argument("--json", action="store_true", help="one JSON object per sample instead of text")
    return parser.parse_args(argv)


def _image_processor(vision_tower: str | None, projector_type: str) -> tuple[Any, int | None]:
    """The tower's image processor and the positions one image takes after the projector."""
    if vision_tower is None:
        return None, None
    from bunny.model.projector import projected_token_count
    from bunny.model.vision_tower import build_vision_tower

    tower = build_vision_tower(argparse.Namespace(mm_vision_tower=vision_tower), delay_load=True)
    tower.load_model()
    return tower.image_processor, projected_token_count(projector_type, tower.num_patches)


def render(sample: TokenizedSample, tokenizer: Any, colour: bool) -> str:
    """The prompt with supervised stretches marked, token by token."""
    pieces: list[str] = []
    supervised = False
    for token, label in zip(sample.input_ids, sample.labels):
        now = label != IGNORE_INDEX
        if now != supervised:
            pieces.append((GREEN if now else RESET) if colour else ("[[" if now else "]]"))
            supervised = now
        pieces.append(DEFAULT_IMAGE_TOKEN if token == IMAGE_TOKEN_INDEX else tokenizer.decode([token]))
    if supervised:
        pieces.append(RESET if colour else "]]")
    return "".join(pieces)


def inspect(args: argparse.Namespace, out: TextIO) -> int:
    """Writes the report to `out`; returns the number of samples training would reject."""
    tokenizer = load_training_tokenizer(args.model_name_or_path, args.model_type, args.model_max_length)
    processor, image_tokens = _image_processor(args.vision_tower, args.mm_projector_type)
    dataset = LazySupervisedDataset(
        args.data_path,
        tokenizer,
        training_template(args.version),
        image_folder=args.image_folder,
        image_processor=processor,
        image_aspect_ratio=args.image_aspect_ratio,
        tokenization_mismatch=args.tokenization_mismatch,
        image_tokens=image_tokens,
    )
    colour = not args.json and out.isatty()
    rejected = masked = 0
    for i, raw in enumerate(dataset.samples):
        sample_id = raw.get("id", i)
        try:
            if "image" in raw and args.image_folder is not None and processor is not None:
                dataset.load_image(i)
            sample = dataset.tokenize(i)
        except (TokenizationMismatchError, ImageLoadError, ValueError) as err:
            rejected += 1
            if args.json:
                out.write(json.dumps({"id": sample_id, "error": str(err)}) + "\n")
            else:
                out.write(f"=== sample {i} (id {sample_id!r}): REJECTED\n{err}\n\n")
            continue
        masked += sample.fully_masked is not None
        if args.json:
            out.write(json.dumps({"id": sample_id, "input_ids": sample.input_ids, "labels": sample.labels}) + "\n")
            continue
        note = f", no loss: {sample.fully_masked}" if sample.fully_masked else ""
        out.write(
            f"=== sample {i} (id {sample_id!r}): {len(sample.input_ids)} tokens, "
            f"{sample.num_supervised} supervised{note}\n{render(sample, tokenizer, colour)}\n\n"
        )
    if not args.json:
        out.write(f"{len(dataset)} samples: {rejected} rejected, {masked} kept without loss\n")
    return rejected


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return 1 if inspect(args, sys.stdout) else 0


if __name__ == "__main__":
    sys.exit(main())
