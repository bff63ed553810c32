"""Score MME result files: the Perception and Cognition totals and the score of each task.

Run as (the result files are the ones `convert_answer_to_mme` writes):
    python -m bunny.eval.mme.calculation_mme --results_dir answers_upload/bunny-phi-2

Reads `<results_dir>/<task>.txt` for the 10 Perception and 4 Cognition tasks, lines `image
file<TAB>question<TAB>ground truth<TAB>answer`, two consecutive lines per image. An answer is `yes`
or `no` when, lower-cased, it is exactly that word; otherwise when its first 4 characters contain
`yes` (checked first) or `no`; otherwise it is `other`. A task scores 100 * (acc + acc_plus):
acc is the fraction of questions answered right, acc_plus the fraction of images with both questions
right. Prints, per category, `total score:` (the sum of its task scores) and each task's score, as
the original does (Python's `str` of the float).

As in the original, a line that does not split into exactly 4 tab-separated fields is not counted
(an answer with a tab, or the continuation of an answer with a line break; `convert_answer_to_mme`
no longer writes such lines). Differences, on purpose: such lines are reported on stderr with
their numbers, as is a pair of lines naming two different images; a missing task file, an odd
number of counted lines, a task without lines or a ground truth other than yes/no is an error naming
the file, where the original crashed on an assertion or a division by zero.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

EVAL_TYPES: dict[str, tuple[str, ...]] = {
    "Perception": (
        "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
    ),
    "Cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}
REPORTED_LINES = 5  # how many line numbers a warning lists


@dataclass(frozen=True)
class ResultLine:
    image: str
    question: str
    truth: str  # "yes" or "no"
    prediction: str  # "yes", "no" or "other"
    number: int  # line number in the task file


def parse_pred_ans(answer: str) -> str:
    """`yes`, `no` or `other` for an answer (the original's rule, see the module docstring)."""
    answer = answer.lower()
    if answer in ("yes", "no"):
        return answer
    if "yes" in answer[:4]:
        return "yes"
    if "no" in answer[:4]:
        return "no"
    return "other"


def read_task_file(path: str) -> list[ResultLine]:
    """The counted lines of one task file; the others are reported on stderr."""
    results, skipped = [], []
    # Default newline handling, as the original reads the file: "\r" ends a line too.
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 4:
                if line.strip():
                    skipped.append(number)
                continue
            image, question, truth, answer = fields
            if truth.lower() not in ("yes", "no"):
                raise ValueError(f"{path}, line {number}: ground truth {truth!r} is neither yes nor no")
            results.append(ResultLine(image, question, truth.lower(), parse_pred_ans(answer), number))
    if skipped:
        shown = ", ".join(map(str, skipped[:REPORTED_LINES])) + (", ..." if len(skipped) > REPORTED_LINES else "")
        print(
            f"warning: {path}: {len(skipped)} line(s) without exactly 4 tab-separated fields not counted "
            f"(lines {shown}); answers with tabs or line breaks?",
            file=sys.stderr,
        )
    return results


def pair_lines(results: Sequence[ResultLine], path: str) -> list[tuple[ResultLine, ResultLine]]:
    """Consecutive pairs of lines: the two questions of one image."""
    if not results:
        raise ValueError(f"{path}: no result lines")
    if len(results) % 2:
        raise ValueError(
            f"{path}: {len(results)} counted lines, an odd number; MME asks two questions per image "
            f"and pairs consecutive lines"
        )
    pairs = [(results[i], results[i + 1]) for i in range(0, len(results), 2)]
    for first, second in pairs:
        if first.image != second.image:
            print(
                f"warning: {path}, lines {first.number} and {second.number}: paired lines name different "
                f"images ({first.image!r}, {second.image!r})",
                file=sys.stderr,
            )
    return pairs


def task_metrics(pairs: Sequence[tuple[ResultLine, ResultLine]]) -> dict[str, Any]:
    """acc, acc_plus and score of one task, with the confusion counts, precision and recall on the
    yes/no predictions (`other` left out) that the original computes but does not print."""
    results = [line for pair in pairs for line in pair]
    correct = sum(line.prediction == line.truth for line in results)
    both_correct = sum(a.prediction == a.truth and b.prediction == b.truth for a, b in pairs)
    acc = correct / len(results)
    acc_plus = both_correct / len(pairs)
    counts = {
        key: sum(line.truth == truth and line.prediction == prediction for line in results)
        for key, truth, prediction in (
            ("TP", "yes", "yes"), ("FN", "yes", "no"), ("TN", "no", "no"), ("FP", "no", "yes"),
        )
    }
    tp, fp, fn = counts["TP"], counts["FP"], counts["FN"]
    return {
        **counts,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "other_num": sum(line.prediction == "other" for line in results),
        "acc": acc,
        "acc_plus": acc_plus,
        "score": acc * 100 + acc_plus * 100,
    }


def task_path(results_dir: str, task: str) -> str:
    return os.path.join(results_dir, f"{task}.txt")


def check_task_files(results_dir: str) -> None:
    missing = [task_path(results_dir, task) for tasks in EVAL_TYPES.values() for task in tasks]
    missing = [path for path in missing if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"{len(missing)} MME task file(s) missing: {', '.join(missing)}")


def print_category(eval_type: str, total: float, scores: dict[str, float]) -> None:
    """The original's lines, byte for byte (print's spaces included)."""
    print("===========", eval_type, "===========")
    print("total score:", total, "\n")
    for task, score in scores.items():
        print("\t", task, " score:", score)
    print("\n")


def process_result(results_dir: str) -> dict[str, Any]:
    """Score every task, print the report and return {category: {"total", "tasks": {task: metrics}}}."""
    check_task_files(results_dir)
    report: dict[str, Any] = {}
    for eval_type, tasks in EVAL_TYPES.items():
        metrics = {}
        for task in tasks:
            path = task_path(results_dir, task)
            metrics[task] = task_metrics(pair_lines(read_task_file(path), path))
        total = 0  # summed in task order, as the original does
        for task in tasks:
            total += metrics[task]["score"]
        print_category(eval_type, total, {task: metrics[task]["score"] for task in tasks})
        report[eval_type] = {"total": total, "tasks": metrics}
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.mme.calculation_mme", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--results_dir", default="./LaVIN", type=str,
        help="folder with one <task>.txt per MME task (default: ./LaVIN)",
    )
    args = parser.parse_args(argv)
    try:
        return process_result(args.results_dir)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
