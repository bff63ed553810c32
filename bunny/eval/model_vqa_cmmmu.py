"""Answer CMMMU questions with a Bunny model and write the answer file its scorer reads.

Run as:
    python -m bunny.eval.model_vqa_cmmmu --model-path PATH [--model-base BASE] --model-type phi-2 \\
        --data-path eval/cmmmu/CMMMU --config-path eval/cmmmu/prompt.yaml \\
        --output-path eval/cmmmu/answers_upload/val/bunny-phi-2.jsonl [--split val] \\
        [--seed 42] [--batch-size 8] [--device cpu]

`--data-path` is the CMMMU dataset as the hub holds it (six subject groups, parquet files);
`--config-path` the task instructions and prompt formats (`python -m bunny.eval.prepare cmmmu` writes
one). Answers are greedy, at most 128 tokens, and kept as generated (the scorer parses them).
A question with a second picture is not asked: it gets a random letter (choice questions) or
`INVALID GENERATION FOR MULTIPLE IMAGE INPUTS`, drawn from Python's `random` seeded with `--seed`, in
question order. A question with no picture is asked as text (the original failed on it). Output: one
`{"id", "type", "response"}` per line, and beside it `<output>.responses.jsonl`, the same lines with
`generated` (false for the random answers). Answers are kept as they are made: an interrupted run
resumes.
"""

from __future__ import annotations

import argparse
import random
from typing import Any, Sequence

from bunny.eval.answering import add_model_flags
from bunny.eval.model_vqa_mmmu import MULTIPLE_IMAGES, add_dataset_flags, answer_dataset
from bunny.util.utils import write_jsonl


def responses(queries: Sequence[Any], answers: dict[Any, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The answer file's lines, random draws made in question order, and the same lines marked with
    whether the model answered (`generated`) or the answer was drawn at random."""
    rows, raw = [], []
    for query in queries:
        generated = query.sample_id in answers
        if generated:
            response = answers[query.sample_id]
        elif query.question_type == "选择":
            response = random.choice(query.all_choices)
        else:
            response = MULTIPLE_IMAGES
        rows.append({"id": query.sample_id, "type": query.question_type, "response": response})
        raw.append(dict(rows[-1], generated=generated))
    return rows, raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.model_vqa_cmmmu", description=__doc__.split("\n\n")[0])
    add_model_flags(parser, temperature=None)
    add_dataset_flags(parser, "val")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from bunny.eval.cmmmu import data

    args, rows = answer_dataset(build_parser(), argv, data, responses)
    write_jsonl(args.output_path, rows)
    return rows


if __name__ == "__main__":
    main()
