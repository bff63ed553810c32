"""Answer questions about images in batches with a Bunny model: an example of batched generation.

Run as:
    python script/batch_inference.py --model-path PATH --model-type phi-2 --device cpu \\
        --image-file a.png --image-file b.png --prompt "What is shown here?" --prompt "What colour is it?"

Each (image, question) pair becomes one single-turn prompt in the model type's template (or
--conv-mode). Pairs are zipped when the counts match; a single image goes with every question and
a single question with every image. Prompts are left-padded into batches with an attention mask,
so with greedy decoding every row gets exactly the tokens it would get alone. Answers are printed
and, with --output-file, written as JSON lines {"image_file", "prompt", "text"}.

The original example loaded the hub's remote-code release and left-padded without passing an
attention mask; this one uses the local package (`load_pretrained_model`) and passes the mask.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from PIL import Image
from tqdm import tqdm

from bunny.inference.generate import answer_batch
from bunny.inference.options import add_model_arguments, check_model_arguments, load_model
from bunny.inference.prompts import resolve_conv_mode
from bunny.util.images import ImageLoadError, load_image
from bunny.util.utils import write_jsonl

DEFAULT_PROMPT = "What is shown in this picture?"


@dataclass
class Answer:
    image_file: str
    prompt: str  # the question, not the rendered template
    text: str
    token_ids: list[int]  # new tokens, without the padding of rows that finished early


def pair_up(image_files: Sequence[str], questions: Sequence[str]) -> list[tuple[str, str]]:
    """(image, question) pairs: zipped when the counts match, else the single image or question is repeated."""
    if len(image_files) == len(questions):
        return list(zip(image_files, questions))
    if len(image_files) == 1:
        return [(image_files[0], question) for question in questions]
    if len(questions) == 1:
        return [(image_file, questions[0]) for image_file in image_files]
    raise ValueError(
        f"got {len(image_files)} images and {len(questions)} prompts: give as many of each, or one of either"
    )


def answer_all(
    pairs: Sequence[tuple[str, str]],
    images: dict[str, Image.Image],
    tokenizer: Any,
    model: Any,
    image_processor: Any,
    conv_mode: str,
    batch_size: int,
    **generate_kwargs: Any,
) -> list[Answer]:
    batches = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
    answers: list[Answer] = []
    for batch in tqdm(batches, desc="batches", disable=len(batches) <= 1):
        replies = answer_batch(
            [question for _, question in batch],
            [images[image_file] for image_file, _ in batch],
            tokenizer,
            model,
            image_processor,
            conv_mode,
            **generate_kwargs,
        )
        answers += [Answer(f, q, reply.text, reply.token_ids) for (f, q), reply in zip(batch, replies)]
    return answers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer questions about images in batches with a Bunny model.")
    add_model_arguments(parser, max_new_tokens=100, temperature=0.0, model_path_required=True)
    parser.add_argument(
        "--image-file",
        type=str,
        action="extend",
        nargs="+",
        required=True,
        help="image(s), local paths or http(s) URLs; repeat the flag or list several",
    )
    parser.add_argument(
        "--prompt",
        type=str,
        action="extend",
        nargs="+",
        default=None,
        help=f"question(s) about the images; repeat the flag or list several (default: {DEFAULT_PROMPT!r})",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="prompts generated together")
    parser.add_argument("--output-file", type=str, default=None, help="also write the answers here as JSON lines")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.prompt = args.prompt or [DEFAULT_PROMPT]
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        args.pairs = pair_up(args.image_file, args.prompt)
    except ValueError as err:
        parser.error(str(err))
    check_model_arguments(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> list[Answer]:
    args = parse_args(argv)
    conv_mode = resolve_conv_mode(args.model_type, args.conv_mode)
    try:
        images = {image_file: load_image(image_file) for image_file in dict.fromkeys(args.image_file)}
    except ImageLoadError as err:
        sys.exit(f"error: {err}")

    tokenizer, model, image_processor, _ = load_model(args, "the images")
    answers = answer_all(
        args.pairs,
        images,
        tokenizer,
        model,
        image_processor,
        conv_mode,
        args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        repetition_penalty=args.repetition_penalty,
    )
    for answer in answers:
        print(f"[{answer.image_file}] {answer.prompt}\n{answer.text}\n", flush=True)
    if args.output_file:
        write_jsonl(args.output_file, [{k: v for k, v in asdict(a).items() if k != "token_ids"} for a in answers])
    return answers


if __name__ == "__main__":
    main()
