"""Score answers to the synthetic shapes questions (`python -m bunny.demo.synthetic`) against their key.

Run as:
    python -m bunny.eval.eval_shapes --answer-key eval/answer_key.jsonl --result-file answers.jsonl [--json]

An answer is right when, lower-cased, stripped of surrounding punctuation and with number words as
digits, it equals the key's answer. Every question of the key needs an answer: a missing one is an
error naming it, not a silent skip.
"""

from __future__ import annotations

import argparse
import json
import string
from collections import defaultdict
from typing import Any, Sequence

from bunny.eval.common import read_jsonl

NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}


def normalize(text: str) -> str:
    text = text.strip().lower().strip(string.punctuation + string.whitespace)
    return NUMBER_WORDS.get(text, text)


def score(key: Sequence[dict[str, Any]], answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"accuracy", "accuracy_by_type", "num_questions"}; raises ValueError if an answer is missing."""
    by_id = {answer["question_id"]: answer["text"] for answer in answers}
    missing = [entry["question_id"] for entry in key if entry["question_id"] not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} questions have no answer, e.g. question_id {missing[:5]}")
    right: dict[str, list[bool]] = defaultdict(list)
    for entry in key:
        right[entry["category"]].append(normalize(by_id[entry["question_id"]]) == normalize(entry["answer"]))
    every = [r for rows in right.values() for r in rows]
    return {
        "accuracy": sum(every) / len(every),
        "accuracy_by_type": {kind: sum(rows) / len(rows) for kind, rows in sorted(right.items())},
        "num_questions": len(every),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.eval_shapes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--answer-key", required=True, help="answer_key.jsonl written by bunny.demo.synthetic")
    parser.add_argument("--result-file", required=True, help="answers written by bunny.eval.model_vqa_loader")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    args = parser.parse_args(argv)
    try:
        result = score(
            read_jsonl(args.answer_key, ("question_id", "answer", "category")),
            read_jsonl(args.result_file, ("question_id", "text")),
        )
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"accuracy: {100 * result['accuracy']:.2f}% of {result['num_questions']} questions")
        for kind, accuracy in result["accuracy_by_type"].items():
            print(f"  {kind}: {100 * accuracy:.2f}%")
    return result


if __name__ == "__main__":
    main()
