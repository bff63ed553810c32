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
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from bunny.constants import IMAGE_TOKEN_INDEX
from bunny.conversation import get_conv_template
from bunny.model.builder import load_pretrained_model
from bunny.serve.cli import (
    add_model_arguments,
    clean_reply,
    device_problem,
    image_prompt,
    model_path_problem,
    resolve_conv_mode,
    sampling_kwargs,
    to_model_inputs,
)
from bunny.util.mm_utils import (
    ImageLoadError,
    KeywordsStoppingCriteria,
    get_model_name_from_path,
    load_image,
    pad_token_ids,
    process_images,
    tokenizer_image_token,
)
from bunny.util.utils import atomic_write, disable_torch_init

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


def _strip_trailing(ids: list[int], pad_id: int | None) -> list[int]:
    end = len(ids)
    while pad_id is not None and end > 0 and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]


def answer_batch(
    pairs: Sequence[tuple[str, str]],
    images: dict[str, Image.Image],
    tokenizer: Any,
    model: Any,
    image_processor: Any,
    conv_mode: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    repetition_penalty: float = 1.0,
) -> list[Answer]:
    """Generate the answers to one batch of (image file, question) pairs; `images` maps file -> loaded image."""
    stop_str = get_conv_template(conv_mode).stop_str
    prompts = [image_prompt(conv_mode, question) for _, question in pairs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # [B, L] with IMAGE_TOKEN_INDEX in each row where its image goes
    input_ids, attention_mask = pad_token_ids(
        [tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt") for prompt in prompts],
        pad_id,
        side="left",
    )
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    # [B, 3, H, W], one image per row
    pixel_values = to_model_inputs(process_images([images[f] for f, _ in pairs], image_processor, model.config), model)
    stopping_criteria = [KeywordsStoppingCriteria([stop_str], tokenizer, input_ids)] if stop_str else None
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids,
            images=pixel_values,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            use_cache=True,
            stopping_criteria=stopping_criteria,
            **sampling_kwargs(temperature),
        )
    # generate returns the (padded) prompts followed by the new tokens; rows that finished early
    # are filled with the generation pad id
    new_tokens = output_ids[:, input_ids.shape[1] :].tolist()
    answers = []
    for (image_file, question), ids in zip(pairs, new_tokens):
        ids = _strip_trailing(ids, model.generation_config.pad_token_id)
        text = clean_reply(tokenizer.decode(ids, skip_special_tokens=True), stop_str)
        answers.append(Answer(image_file, question, text, ids))
    return answers


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
        answers += answer_batch(batch, images, tokenizer, model, image_processor, conv_mode, **generate_kwargs)
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
    for problem in (device_problem(args.device), model_path_problem(args.model_path)):
        if problem is not None:
            parser.error(problem)
    return args


def main(argv: Sequence[str] | None = None) -> list[Answer]:
    args = parse_args(argv)
    conv_mode = resolve_conv_mode(args.model_type, args.conv_mode)
    try:
        images = {image_file: load_image(image_file) for image_file in dict.fromkeys(args.image_file)}
    except ImageLoadError as err:
        sys.exit(f"error: {err}")

    disable_torch_init()
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path,
        args.model_base,
        get_model_name_from_path(args.model_path),
        args.model_type,
        device=args.device,
    )
    if image_processor is None:
        sys.exit(f"error: {args.model_path} has no vision tower (mm_vision_tower) to read the images with")
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
        with atomic_write(args.output_file) as f:
            for answer in answers:
                record = {k: v for k, v in asdict(answer).items() if k != "token_ids"}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return answers


if __name__ == "__main__":
    main()
