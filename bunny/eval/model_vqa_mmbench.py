"""Answer MMBench (or MMBench-CN) multiple-choice questions with a Bunny model.

Run as:
    python -m bunny.eval.model_vqa_mmbench --model-path PATH [--model-base BASE] --model-type phi-2 \\
        --question-file eval/mmbench/MMBench_DEV_EN_legacy.tsv --answers-file answers.jsonl \\
        --single-pred-prompt [--lang en|cn] [--all-rounds] [--temperature 0] [--batch-size 8] \\
        [--num-chunks N --chunk-idx K] [--device cpu]

The question file is an official MMBench TSV (`index`, `question`, `hint`, `image` in base64, `A`...`D`).
A question lists its options up to the first missing one: `[hint + "\\n"] + question`, then
`"\\n" + letter + ". " + option` for each; `--single-pred-prompt` appends the instruction to answer
with the letter (in Chinese with `--lang cn`). `--all-rounds` asks each question once per option,
the option texts rotated by one each round while the letters stay A, B, ...; `option_char` records
the rotated letters. Answer lines: `{"question_id": index, "round_id", "prompt", "text", "options",
"option_char", "answer_id", "model_id", "metadata"}`, where `prompt` is the question without the
image marker and the instruction.

Differences from the original, on purpose: option cells are read as text (an all-number option
column is not turned into floats, which the original could not append to the question), and
`--batch-size` answers several questions at once with the answers of one by one.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from bunny.eval.answering import (
    Prompt,
    add_model_flags,
    add_question_flags,
    add_sampling_flags,
    check_flags,
    settings_from_flags,
)
from bunny.eval.common import answer_record, chunk_range
from bunny.eval.store import answer_rows
from bunny.util.tokens import get_model_name_from_path
from bunny.util.images import ImageLoadError, load_image_from_base64
from bunny.util.utils import write_jsonl

ALL_OPTIONS = ("A", "B", "C", "D")
INSTRUCTIONS = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}


def is_none(value: Any) -> bool:
    """A missing cell: None, NaN, or the text `nan`/`none` in any case."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def get_options(row: dict[str, Any]) -> list[str]:
    """The option texts of a row, up to the first missing one."""
    options = []
    for letter in ALL_OPTIONS:
        value = row.get(letter)
        if is_none(value):
            break
        options.append(str(value))
    return options


def read_tsv(path: str) -> list[dict[str, Any]]:
    """The rows of an MMBench TSV as dicts of text cells (missing cells None), `index` an int where it
    is one. An `image` cell holding another row's index (newer TSVs store a repeated picture once)
    is replaced by that row's picture."""
    import pandas as pd

    frame = pd.read_table(path, dtype=str)
    missing = [column for column in ("index", "question", "image") if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)} (is this an MMBench TSV?)")
    rows = [{key: None if is_none(value) else value for key, value in record.items()} for record in frame.to_dict("records")]
    images = {row["index"]: row["image"] for row in rows}
    for row in rows:
        if row["image"] in images and row["image"] != row["index"]:
            row["image"] = images[row["image"]]
        index = str(row["index"])
        row["index"] = int(index) if index.lstrip("-").isdigit() else index
    return rows


@dataclass
class Round:
    row: dict[str, Any]
    round_id: int
    prompt: str  # the question with hint and options, as saved
    options: list[str]
    option_char: list[str]


def question_rounds(row: dict[str, Any], all_rounds: bool) -> list[Round]:
    """The row's question, once or (`all_rounds`) once per option with the options rotated."""
    options = get_options(row)
    option_char = list(ALL_OPTIONS[: len(options)])
    rounds = []
    for round_id in range(len(options) if all_rounds else 1):
        question = row["question"] if is_none(row.get("hint")) else row["hint"] + "\n" + row["question"]
        for letter, option in zip(ALL_OPTIONS, options):
            question += "\n" + letter + ". " + option
        rounds.append(Round(row, round_id, question, list(options), list(option_char)))
        options = options[1:] + options[:1]
        option_char = option_char[1:] + option_char[:1]
    return rounds


def image_of(row: dict[str, Any]) -> Any:
    def decode() -> Any:
        try:
            return load_image_from_base64(row["image"] or "", f"the image of MMBench question {row['index']}")
        except ImageLoadError as err:
            raise ValueError(str(err)) from None

    return decode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.model_vqa_mmbench", description=__doc__.split("\n\n")[0])
    add_model_flags(parser)
    add_question_flags(parser, "an MMBench TSV")
    add_sampling_flags(parser)
    parser.add_argument("--all-rounds", action="store_true", help="ask each question once per rotation of its options")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option's letter only")
    parser.add_argument("--lang", type=str, default="en", choices=sorted(INSTRUCTIONS), help="language of the instruction")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args)
    try:
        rows = read_tsv(args.question_file)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    chunk = chunk_range(len(rows), args.num_chunks, args.chunk_idx)
    rounds, row_ids = [], []  # row ids: "<TSV row>/<round>"
    for number in chunk:
        for r in question_rounds(rows[number], args.all_rounds):
            rounds.append(r)
            row_ids.append(f"{number}/{r.round_id}")
    suffix = "\n" + INSTRUCTIONS[args.lang] if args.single_pred_prompt else ""
    settings = settings_from_flags(args, 128, trim_stop=True)
    prompts = [Prompt(r.prompt + suffix, image_of(r.row)) for r in rounds]
    try:
        answers = answer_rows(args, parser.prog, args.question_file, settings, [r.row["index"] for r in rounds], prompts, row_ids)
    except ValueError as err:
        sys.exit(f"error: {err}")
    model_id = get_model_name_from_path(args.model_path)
    records = [
        answer_record(
            r.row["index"], r.prompt, text, model_id, row=row_id,
            round_id=r.round_id, options=r.options, option_char=r.option_char,
        )
        for r, row_id, text in zip(rounds, row_ids, answers)
    ]
    write_jsonl(args.answers_file, records)
    return records


if __name__ == "__main__":
    main()
