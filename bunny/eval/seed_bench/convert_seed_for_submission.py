"""Score SEED-Bench-1 answers per question type, over all, image and video questions, and write the
upload file.

Run as:
    python -m bunny.eval.seed_bench.convert_seed_for_submission \\
        --annotation-file eval/seed-bench/SEED-Bench.json \\
        --result-file eval/seed-bench/answers/bunny-phi-2/merge.jsonl \\
        --result-upload-file eval/seed-bench/answers_upload/bunny-phi-2.jsonl

The annotation is the official `{"question_type": {name: id}, "questions": [{"question_id",
"question_type_id", "data_type", "answer", ...}]}`. An answer is right when its text equals the
question's `answer` exactly (e.g. "A"); a question without an answer counts as wrong. Question ids
are compared as integers where they parse as one. Prints `<type name>: xx.xx%` per question type
(by type id), `Total accuracy: xx.xx%`, `image accuracy: xx.xx%` and `video accuracy: xx.xx%`,
and writes one `{"question_id", "prediction"}` line per annotation question, in its order.

Differences from the original, on purpose: answer ids written as strings match too (the original
left them out of the scores but not of the upload file); a question without an answer gets the
prediction "" instead of a crash and is counted on stderr; an accuracy over no questions (e.g. no
video questions) is 0.00% instead of a division by zero; a type with no right answer prints 0.00%
instead of a crash.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from bunny.eval.common import read_json, read_jsonl
from bunny.util.utils import atomic_write

DATA_TYPES = ("image", "video")


def id_key(question_id: Any) -> Any:
    """The int a question id stands for when it is one or parses as one, else the id itself."""
    if isinstance(question_id, bool):
        return question_id
    try:
        return int(question_id) if isinstance(question_id, (int, str)) else question_id
    except ValueError:
        return question_id


def read_answers(path: str) -> dict[Any, str]:
    """{id key: answer text}; a later answer to the same question replaces an earlier one."""
    texts = {}
    for number, row in enumerate(read_jsonl(path, ("question_id", "text")), start=1):
        if not isinstance(row["text"], str):
            raise ValueError(f"{path}, answer {number} (question_id {row['question_id']!r}): 'text' is not a string")
        texts[id_key(row["question_id"])] = row["text"]
    return texts


def read_annotation(path: str) -> tuple[dict[Any, str], list[dict[str, Any]]]:
    """({type id: type name}, questions)."""
    data = read_json(path)
    if not isinstance(data, dict) or "question_type" not in data or "questions" not in data:
        raise ValueError(f"{path} is not a SEED-Bench annotation (needs 'question_type' and 'questions')")
    type_names = {type_id: name for name, type_id in data["question_type"].items()}
    for question in data["questions"]:
        for key in ("question_id", "question_type_id", "data_type", "answer"):
            if key not in question:
                raise ValueError(f"{path}: question {question.get('question_id')!r} has no {key!r}")
        if question["question_type_id"] not in type_names:
            raise ValueError(
                f"{path}: question {question['question_id']!r} has type id {question['question_type_id']!r}, "
                f"not in 'question_type'"
            )
    return type_names, data["questions"]


def percent(part: int, whole: int) -> float:
    return part / whole * 100 if whole else 0.0


def accuracies(questions: Sequence[dict[str, Any]], texts: dict[Any, str]) -> dict[Any, tuple[int, int]]:
    """{question type id: (right answers, questions)}, type ids sorted."""
    counts: dict[Any, list[int]] = {}
    for question in questions:
        key = id_key(question["question_id"])
        right = key in texts and texts[key] == question["answer"]
        count = counts.setdefault(question["question_type_id"], [0, 0])
        count[0] += right
        count[1] += 1
    return {type_id: (counts[type_id][0], counts[type_id][1]) for type_id in sorted(counts)}


def total_accuracy(per_type: dict[Any, tuple[int, int]]) -> float:
    return percent(sum(right for right, _ in per_type.values()), sum(n for _, n in per_type.values()))


def report(type_names: dict[Any, str], questions: Sequence[dict[str, Any]], texts: dict[Any, str]) -> dict[str, Any]:
    """Print the original's lines; return the accuracies (percent)."""
    per_type = accuracies(questions, texts)
    result: dict[str, Any] = {"types": {}}
    for type_id, (right, count) in per_type.items():
        result["types"][type_names[type_id]] = percent(right, count)
        print(f"{type_names[type_id]}: {percent(right, count):.2f}%")
    result["total"] = total_accuracy(per_type)
    print(f"Total accuracy: {result['total']:.2f}%")
    for data_type in DATA_TYPES:
        subset = [question for question in questions if question["data_type"] == data_type]
        result[data_type] = total_accuracy(accuracies(subset, texts))
        print(f"{data_type} accuracy: {result[data_type]:.2f}%")
    return result


def convert(annotation_file: str, result_file: str, upload_file: str) -> dict[str, Any]:
    type_names, questions = read_annotation(annotation_file)
    texts = read_answers(result_file)
    result = report(type_names, questions, texts)
    keys = [id_key(question["question_id"]) for question in questions]
    missing = [question["question_id"] for question, key in zip(questions, keys) if key not in texts]
    if missing:
        print(
            f"warning: {result_file}: {len(missing)} question(s) without an answer, scored wrong, "
            f"prediction \"\" (e.g. {missing[:5]})",
            file=sys.stderr,
        )
    unknown = set(texts) - set(keys)
    if unknown:
        print(
            f"warning: {result_file}: {len(unknown)} answer(s) to questions not in {annotation_file}, ignored",
            file=sys.stderr,
        )
    with atomic_write(upload_file) as f:
        for question, key in zip(questions, keys):
            f.write(json.dumps({"question_id": question["question_id"], "prediction": texts.get(key, "")}) + "\n")
    result["missing"] = len(missing)
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.seed_bench.convert_seed_for_submission", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--annotation-file", type=str, required=True, help="the official SEED-Bench.json")
    parser.add_argument("--result-file", type=str, required=True, help="the merged answers, one JSON object per line")
    parser.add_argument(
        "--result-upload-file", type=str, required=True, help="written: one {question_id, prediction} per line"
    )
    args = parser.parse_args(argv)
    try:
        return convert(args.annotation_file, args.result_file, args.result_upload_file)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
