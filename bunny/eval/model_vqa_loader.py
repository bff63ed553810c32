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

from bunny.eval.answering import (
    LoadedModel,
    Prompt,
    Settings,
    add_model_flags,
    add_question_flags,
    add_sampling_flags,
    answer_prompts,
    check_flags,
    settings_from_flags,
)
from bunny.eval.common import answer_record, chunk_range, read_question_file
from bunny.eval.store import answer_rows
from bunny.util.images import ImageLoadError, load_image
from bunny.util.tokens import get_model_name_from_path
from bunny.util.utils import write_jsonl


def build_parser(
    prog: str = "python -m bunny.eval.model_vqa_loader", description: str = __doc__.split("\n\n")[0], max_new_tokens: int = 128
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_model_flags(parser)
    add_question_flags(parser)
    add_sampling_flags(parser, max_new_tokens)
    return parser


def image_loader(question: dict[str, Any], image_folder: str) -> Any:
    """Loads the question's picture (as RGB) when called; a missing or unreadable one is an error
    naming the question and the file."""
    if "image" not in question:
        raise ValueError(f"question {question['question_id']!r} has no image")
    path = os.path.join(image_folder, question["image"])

    def load_question_image() -> Any:
        try:
            return load_image(path)
        except ImageLoadError as err:
            raise ValueError(f"question {question['question_id']!r}: {err}") from None

    return load_question_image


def standard_records(
    questions: Sequence[dict[str, Any]], texts: Sequence[str], model_id: str, first_row: int = 0
) -> list[dict[str, Any]]:
    return [
        answer_record(q["question_id"], q["text"], text, model_id, row=first_row + i)
        for i, (q, text) in enumerate(zip(questions, texts))
    ]


def generate_answers(
    questions: Sequence[dict[str, Any]],
    image_folder: str,
    loaded: LoadedModel,
    settings: Settings,
    model_id: str,
    batch_size: int = 1,
    first_row: int = 0,
) -> list[dict[str, Any]]:
    """One answer record per question of a standard question file, in question order, from a loaded model
    (`first_row`: the row of the first question in the whole file, for the answer ids)."""
    prompts = [Prompt(q["text"], image_loader(q, image_folder)) for q in questions]
    return standard_records(questions, list(answer_prompts(prompts, loaded, settings, batch_size)), model_id, first_row)


def run(argv: Sequence[str] | None, parser: argparse.ArgumentParser, trim_stop: bool) -> list[dict[str, Any]]:
    """A standard-question-file generator: parse the flags, answer the chunk (resuming from the answers
    kept by an interrupted run), write the answer file."""
    args = parser.parse_args(argv)
    check_flags(parser, args)
    try:
        questions = read_question_file(args.question_file)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    rows = chunk_range(len(questions), args.num_chunks, args.chunk_idx)
    chunk = questions[rows.start : rows.stop]
    settings = settings_from_flags(args, args.max_new_tokens, trim_stop)
    prompts = [Prompt(q["text"], image_loader(q, args.image_folder)) for q in chunk]
    try:
        texts = answer_rows(args, parser.prog, args.question_file, settings, chunk, prompts, rows.start)
    except ValueError as err:
        sys.exit(f"error: {err}")
    records = standard_records(chunk, texts, get_model_name_from_path(args.model_path), rows.start)
    write_jsonl(args.answers_file, records)
    return records


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return run(argv, build_parser(), trim_stop=False)


if __name__ == "__main__":
    main()
