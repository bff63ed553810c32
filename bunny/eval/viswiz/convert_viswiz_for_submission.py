"""Turn VizWiz answers into the JSON file the EvalAI server scores.

Run as:
    python -m bunny.eval.viswiz.convert_viswiz_for_submission --annotation-file ./eval/viswiz/bunny_test.jsonl \
        --result-file ./eval/viswiz/answers/bunny-phi-2.jsonl --result-upload-file ./eval/viswiz/answers_upload/bunny-phi-2.json

Writes one `{"image", "answer"}` per question of the question file, in its order, the answer
EvalAI-normalised. Every question needs an answer: a missing one is an error naming it. Answer
lines that are not JSON are counted and reported.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from bunny.eval.common import read_jsonl
from bunny.eval.m4c_evaluator import normalize_answer
from bunny.eval.vqav2.convert_vqav2_for_submission import read_answer_texts
from bunny.util.utils import atomic_write


def submission(questions: Sequence[dict[str, Any]], texts: dict[Any, str], result_file: str) -> list[dict[str, Any]]:
    """One `{"image", "answer"}` per question; ValueError naming the questions without an answer."""
    missing = [q["question_id"] for q in questions if q["question_id"] not in texts]
    if missing:
        raise ValueError(
            f"{result_file}: no answer for question_id {missing[0]!r}"
            f" ({len(missing)} of {len(questions)} questions have none; every question needs one)"
        )
    return [{"image": q["image"], "answer": normalize_answer(texts[q["question_id"]])} for q in questions]


def convert(annotation_file: str, result_file: str, upload_file: str) -> dict[str, Any]:
    texts, error_lines = read_answer_texts(result_file)
    questions = read_jsonl(annotation_file, ("question_id", "image"))
    print(f"total results: {len(texts)}, total split: {len(questions)}, error_line: {error_lines}")
    answers = submission(questions, texts, result_file)
    with atomic_write(upload_file) as f:
        json.dump(answers, f)
    return {"total_results": len(texts), "total_split": len(questions), "error_line": error_lines, "output": upload_file}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.viswiz.convert_viswiz_for_submission", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--annotation-file", type=str, required=True, help="the VizWiz question file (bunny_test.jsonl)")
    parser.add_argument("--result-file", type=str, required=True, help="the answers, one JSON object per line")
    parser.add_argument("--result-upload-file", type=str, required=True, help="the JSON file to upload")
    args = parser.parse_args(argv)
    try:
        return convert(args.annotation_file, args.result_file, args.result_upload_file)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
