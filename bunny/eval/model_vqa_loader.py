"""Answer a question file about images with a Bunny model: the generator of the VQA-style benchmarks
(MME, GQA, VQAv2, POPE, SEED, TextVQA, VizWiz) and of the demo's held-out questions.

Run as:
    python -m bunny.eval.model_vqa_loader --model-path PATH [--model-base BASE] --model-type phi-2 \\
        --question-file questions.jsonl --image-folder IMAGES --answers-file answers.jsonl \\
        [--conv-mode bunny] [--temperature 0] [--max_new_tokens 128] [--batch-size 8] \\
        [--num-chunks N --chunk-idx K] [--device cpu]

Question file: one `{"question_id", "image", "text", "category"}` per line; each prompt is
`"<image>\\n" + text` in the conversation template. Answer file: one `{"question_id", "prompt",
"text", "answer_id", "model_id", "metadata"}` per line, in question order, written to a temporary
name and renamed when complete.

Differences from the original, on purpose: `--batch-size` answers several questions at once
(left-padded with an attention mask, so greedy answers equal the one-by-one answers); `--device`;
without `--conv-mode` the template is the model type's; a missing image is an error naming it and
the question; the original's silent switch to a non-existent `*_mmtag` template for models named
`plain` is gone.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from tqdm import tqdm

from bunny.eval.common import add_common_arguments, answer_record, get_chunk, read_question_file
from bunny.inference.generate import answer_batch
from bunny.inference.options import check_model_arguments, load_model
from bunny.inference.prompts import resolve_conv_mode
from bunny.util.images import ImageLoadError, load_image
from bunny.util.tokens import get_model_name_from_path
from bunny.util.utils import write_jsonl


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.model_vqa_loader", description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling mass (with --temperature > 0)")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search width")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="most tokens per answer")
    parser.add_argument("--batch-size", type=int, default=1, help="questions answered together")
    return parser


def load_question_image(question: dict[str, Any], image_folder: str) -> Any:
    if "image" not in question:
        raise ValueError(f"question {question['question_id']!r} has no image")
    path = os.path.join(image_folder, question["image"])
    try:
        return load_image(path)
    except ImageLoadError as err:
        raise ValueError(f"question {question['question_id']!r}: {err}") from None


def generate_answers(
    questions: Sequence[dict[str, Any]],
    image_folder: str,
    tokenizer: Any,
    model: Any,
    image_processor: Any,
    conv_mode: str,
    model_id: str,
    batch_size: int = 1,
    **generate_kwargs: Any,
) -> list[dict[str, Any]]:
    """One answer record per question, in question order."""
    records = []
    batches = [questions[i : i + batch_size] for i in range(0, len(questions), batch_size)]
    for batch in tqdm(batches, desc="answering", unit="batch"):
        images = [load_question_image(q, image_folder) for q in batch]
        replies = answer_batch(
            [q["text"] for q in batch], images, tokenizer, model, image_processor, conv_mode, **generate_kwargs
        )
        records += [answer_record(q["question_id"], q["text"], r.text, model_id) for q, r in zip(batch, replies)]
    return records


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    check_model_arguments(parser, args)
    try:
        questions = get_chunk(read_question_file(args.question_file), args.num_chunks, args.chunk_idx)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")

    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, _ = load_model(args, "the images")
    try:
        records = generate_answers(
            questions,
            args.image_folder,
            tokenizer,
            model,
            image_processor,
            resolve_conv_mode(args.model_type, args.conv_mode),
            model_name,
            args.batch_size,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            num_beams=args.num_beams,
        )
    except ValueError as err:
        sys.exit(f"error: {err}")
    os.makedirs(os.path.dirname(os.path.abspath(args.answers_file)), exist_ok=True)
    write_jsonl(args.answers_file, records)
    return records


if __name__ == "__main__":
    main()
