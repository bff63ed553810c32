"""Answer ScienceQA questions with a Bunny model.

Run as:
    python -m bunny.eval.model_vqa_science --model-path PATH [--model-base BASE] --model-type phi-2 \\
        --question-file eval/scienceqa/bunny_test_CQM-A.json --image-folder eval/scienceqa/test \\
        --answers-file answers.jsonl --single-pred-prompt [--temperature 0] [--batch-size 8] \\
        [--num-chunks N --chunk-idx K] [--device cpu]

The question file is a JSON list of `{"id", "image"?, "conversations": [human, gpt]}` (what
`python -m bunny.eval.prepare scienceqa` writes). The question is the human turn without `<image>`;
a question with a picture is asked as `"<image>\\n" + question` and its picture goes through the
image processor as it is, without padding to a square (as in the original); a question without one
is asked as text alone. `--single-pred-prompt` appends the instruction to answer with the letter.
Answer lines: `{"question_id": id, "prompt", "text", "answer_id", "model_id", "metadata"}`, where
`prompt` is what was asked, `<image>` line and instruction included.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from bunny.constants import DEFAULT_IMAGE_TOKEN
from bunny.eval.answering import (
    Prompt,
    add_model_flags,
    add_question_flags,
    check_flags,
    settings_from_flags,
)
from bunny.eval.common import answer_record, chunk_range, read_json
from bunny.eval.model_vqa_loader import image_loader
from bunny.eval.store import answer_rows
from bunny.util.tokens import get_model_name_from_path
from bunny.util.utils import write_jsonl

INSTRUCTION = "Answer with the option's letter from the given choices directly."


def read_questions(path: str) -> list[dict[str, Any]]:
    """The entries of a LLaVA-style ScienceQA question file; an entry without an id or a human turn is an
    error naming it."""
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of questions")
    for number, entry in enumerate(entries):
        conversations = entry.get("conversations") if isinstance(entry, dict) else None
        if "id" not in (entry if isinstance(entry, dict) else {}) or not conversations or "value" not in conversations[0]:
            raise ValueError(f"{path}, entry {number}: needs an 'id' and a first turn with a 'value'")
    return entries


def question_prompt(entry: dict[str, Any], single_pred_prompt: bool) -> tuple[str, bool]:
    """(what is asked, whether it has a picture); the text starts with the image line when it has one."""
    question = entry["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
    has_image = "image" in entry
    if has_image:
        question = DEFAULT_IMAGE_TOKEN + "\n" + question
    if single_pred_prompt:
        question += "\n" + INSTRUCTION
    return question, has_image


def to_prompt(entry: dict[str, Any], single_pred_prompt: bool, image_folder: str) -> Prompt:
    text, has_image = question_prompt(entry, single_pred_prompt)
    if not has_image:
        return Prompt(text)
    question = {"question_id": entry["id"], "image": entry["image"]}
    return Prompt(text[len(DEFAULT_IMAGE_TOKEN) + 1 :], image_loader(question, image_folder), pad=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.model_vqa_science", description=__doc__.split("\n\n")[0])
    add_model_flags(parser)
    add_question_flags(parser, "a ScienceQA question file (JSON list)")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option's letter only")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args)
    try:
        entries = read_questions(args.question_file)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    chunk = chunk_range(len(entries), args.num_chunks, args.chunk_idx)
    entries = entries[chunk.start : chunk.stop]
    settings = settings_from_flags(args, 1024, trim_stop=True)
    prompts = [to_prompt(entry, args.single_pred_prompt, args.image_folder) for entry in entries]
    try:
        answers = answer_rows(args, parser.prog, args.question_file, settings, entries, prompts, chunk.start)
    except ValueError as err:
        sys.exit(f"error: {err}")
    model_id = get_model_name_from_path(args.model_path)
    records = [
        answer_record(entry["id"], question_prompt(entry, args.single_pred_prompt)[0], text, model_id, row=chunk.start + i)
        for i, (entry, text) in enumerate(zip(entries, answers))
    ]
    write_jsonl(args.answers_file, records)
    return records


if __name__ == "__main__":
    main()
