"""Turn merged VQAv2 answers into the JSON file the EvalAI server scores.

Run as:
    python -m bunny.eval.vqav2.convert_vqav2_for_submission --dir ./eval/vqav2 --ckpt bunny-phi-2 \
        --split bunny_vqav2_mscoco_test-dev2015

Reads `<dir>/answers/<split>/<ckpt>/merge.jsonl` and the full test2015 question list
`<dir>/bunny_vqav2_mscoco_test2015.jsonl`, and writes `<dir>/answers_upload/<split>/<ckpt>.json`:
one `{"question_id", "answer"}` per test2015 question, in the list's order, the answer
EvalAI-normalised, or "" for a question without one (test-dev is a subset of test2015, so most
have none). Answer lines that are not JSON are counted and reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

from bunny.eval.common import read_jsonl, require_file
from bunny.eval.m4c_evaluator import normalize_answer
from bunny.util.utils import atomic_write

TEST_LIST = "bunny_vqav2_mscoco_test2015.jsonl"


def read_answer_texts(path: str) -> tuple[dict[Any, str], int]:
    """({question_id: text}, number of lines that are not JSON) of an answer file. A later answer to
    the same question replaces an earlier one. A JSON line without `question_id` or a text `text`
    is an error naming the file and line."""
    texts: dict[Any, str] = {}
    error_lines = 0
    # Default newline handling, as the original iterates the file: blank lines count as errors.
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except ValueError:
                error_lines += 1
                continue
            if not isinstance(row, dict) or "question_id" not in row or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}, line {number}: not an answer (needs 'question_id' and a text 'text')")
            texts[row["question_id"]] = row["text"]
    return texts, error_lines


def submission(questions: Sequence[dict[str, Any]], texts: dict[Any, str]) -> list[dict[str, Any]]:
    """One `{"question_id", "answer"}` per question; "" where there is no answer."""
    rows = []
    for question in questions:
        qid = question["question_id"]
        rows.append({"question_id": qid, "answer": normalize_answer(texts[qid]) if qid in texts else ""})
    return rows


def convert(directory: str, ckpt: str, split: str) -> dict[str, Any]:
    test_list = require_file(
        os.path.join(directory, TEST_LIST),
        "the full VQAv2 test2015 question list",
        "`python -m bunny.eval.prepare vqav2` builds it",
    )
    src = require_file(
        os.path.join(directory, "answers", split, ckpt, "merge.jsonl"),
        "the merged answers",
        "script/eval/full/vqav2.sh writes them",
    )
    return convert_files(test_list, src, os.path.join(directory, "answers_upload", split, f"{ckpt}.json"))


def convert_files(test_list: str, src: str, dst: str) -> dict[str, Any]:
    """`convert` with the three paths given: the test2015 list, the merged answers, the upload file."""
    texts, error_lines = read_answer_texts(src)
    questions = read_jsonl(test_list, ("question_id",))
    print(f"total results: {len(texts)}, total split: {len(questions)}, error_line: {error_lines}")
    answers = submission(questions, texts)
    with atomic_write(dst) as f:
        json.dump(answers, f)
    return {
        "total_results": len(texts),
        "total_split": len(questions),
        "error_line": error_lines,
        "answered": sum(q["question_id"] in texts for q in questions),
        "output": dst,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.vqav2.convert_vqav2_for_submission", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dir", type=str, default="./eval/vqav2", help="the VQAv2 evaluation folder")
    parser.add_argument("--ckpt", type=str, required=True, help="the answers' folder name (the model's TARGET_DIR)")
    parser.add_argument("--split", type=str, required=True, help="the split answered, e.g. bunny_vqav2_mscoco_test-dev2015")
    args = parser.parse_args(argv)
    try:
        return convert(args.dir, args.ckpt, args.split)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
