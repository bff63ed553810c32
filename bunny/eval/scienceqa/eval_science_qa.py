"""Score ScienceQA answers: accuracy over a split and over its image questions (SQA-IMG, the number
reported).

Run as:
    python -m bunny.eval.scienceqa.eval_science_qa --base-dir eval/scienceqa \\
        --result-file eval/scienceqa/answers/bunny-phi-2.jsonl \\
        --output-file eval/scienceqa/answers/bunny-phi-2_output.jsonl \\
        --output-result eval/scienceqa/answers/bunny-phi-2_result.json [--split test]

`--base-dir` holds the official `pid_splits.json` and `problems.json`. An answer text gives a
letter when it (a) is exactly one of the options (`--options`, default A-E), (b) starts with an
option letter followed by ". ", or (c) matches `The answer is ([A-Z]).` exactly once; otherwise,
and for a problem without an answer, it is `FAILED`. It is right when the letter's position among
the problem's choices is the problem's `answer`. An image question is one whose saved prompt has
`<image>`; a problem without an answer has no prompt, so it is left out of the image count.

Prints `Total: N, Correct: C, Accuracy: xx.xx%, IMG-Accuracy: yy.yy%` and writes two JSON documents
(indent 2): `--output-file` `{"correct": [...], "incorrect": [...]}` (one analysis per problem;
a single JSON document although the scripts name it `.jsonl`) and `--output-result` `{acc, correct,
count, results {id: letter index or -1}, outputs {id: text}, image_acc, image_correct,
image_count}`.

Differences from the original, on purpose: an accuracy over no problems is 0 instead of a division
by zero; answer ids written as numbers match the problem ids (strings); answers to problems outside
the split are counted on stderr; a split or problem missing from the base files is an error naming
it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Sequence

from bunny.eval.common import read_json, read_jsonl
from bunny.util.utils import atomic_write

OPTIONS = ["A", "B", "C", "D", "E"]
ANSWER_PATTERN = re.compile(r"The answer is ([A-Z]).")
MISSING = {"text": "FAILED", "prompt": "Unknown"}


def parse_answer(text: str, options: Sequence[str]) -> str:
    """The answer letter of a prediction text, or `FAILED` (rules (a)-(c) of the module docstring)."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = ANSWER_PATTERN.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def get_pred_idx(prediction: str, choices: Sequence[Any], options: Sequence[str]) -> int:
    """The index of the answer letter among the problem's choices (`C` -> 2), -1 if it is not one."""
    return list(options).index(prediction) if prediction in options[: len(choices)] else -1


def load_split(base_dir: str, split: str) -> dict[str, dict[str, Any]]:
    """{problem id: problem} of a split, in the split's order."""
    splits = read_json(os.path.join(base_dir, "pid_splits.json"))
    if split not in splits:
        splits_file = os.path.join(base_dir, "pid_splits.json")
        raise ValueError(f"{splits_file} has no split {split!r} (it has {sorted(splits)})")
    problems_file = os.path.join(base_dir, "problems.json")
    problems = read_json(problems_file)
    missing = [pid for pid in splits[split] if pid not in problems]
    if missing:
        raise ValueError(f"{problems_file} lacks {len(missing)} problem(s) of split {split!r}, e.g. {missing[:5]}")
    return {pid: problems[pid] for pid in splits[split]}


def read_predictions(path: str) -> dict[Any, dict[str, Any]]:
    """{question id: answer}; a later answer to the same question replaces an earlier one."""
    predictions = {}
    for row in read_jsonl(path, ("question_id", "prompt", "text")):
        qid = row["question_id"]
        predictions[str(qid) if isinstance(qid, int) and not isinstance(qid, bool) else qid] = row
    return predictions


def score(
    problems: dict[str, dict[str, Any]], predictions: dict[Any, dict[str, Any]], options: Sequence[str]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """(the `--output-file` document, the `--output-result` document)."""
    analyses: dict[str, list[dict[str, Any]]] = {"correct": [], "incorrect": []}
    sqa: dict[str, Any] = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    for pid, problem in problems.items():
        prediction = predictions.get(pid, MISSING)
        answer = parse_answer(prediction["text"], options)
        pred_idx = get_pred_idx(answer, problem["choices"], options)
        analysis = {
            "question_id": pid,
            "parsed_ans": answer,
            "ground_truth": options[problem["answer"]],
            "question": prediction["prompt"],
            "pred": prediction["text"],
            "is_multimodal": "<image>" in prediction["prompt"],
        }
        sqa["results"][pid] = pred_idx
        sqa["outputs"][pid] = prediction["text"]
        analyses["correct" if pred_idx == problem["answer"] else "incorrect"].append(analysis)
    correct, total = len(analyses["correct"]), len(problems)
    image_correct = sum(a["is_multimodal"] for a in analyses["correct"])
    image_total = image_correct + sum(a["is_multimodal"] for a in analyses["incorrect"])
    sqa.update(acc=percent(correct, total), correct=correct, count=total)
    sqa.update(image_acc=percent(image_correct, image_total), image_correct=image_correct, image_count=image_total)
    return analyses, sqa


def percent(part: int, whole: int) -> float:
    return part / whole * 100 if whole else 0.0


def check_inputs(
    problems: dict[str, Any], predictions: dict[Any, Any], options: Sequence[str], result_file: str
) -> None:
    for pid, problem in problems.items():
        for key in ("choices", "answer"):
            if key not in problem:
                raise ValueError(f"problem {pid!r} has no {key!r}")
        if not isinstance(problem["answer"], int) or not 0 <= problem["answer"] < len(options):
            raise ValueError(
                f"problem {pid!r}: answer {problem['answer']!r} is not the index of one of the options {''.join(options)}"
            )
        if pid in predictions and not all(isinstance(predictions[pid][k], str) for k in ("text", "prompt")):
            raise ValueError(f"{result_file}, question_id {pid!r}: 'text' and 'prompt' must be strings")
    outside = [qid for qid in predictions if qid not in problems]
    if outside:
        print(
            f"warning: {result_file}: {len(outside)} answer(s) to problems outside the split, not scored "
            f"(e.g. {outside[:5]})",
            file=sys.stderr,
        )


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    problems = load_split(args.base_dir, args.split)
    predictions = read_predictions(args.result_file)
    check_inputs(problems, predictions, args.options, args.result_file)
    analyses, sqa = score(problems, predictions, args.options)
    print(
        f"Total: {sqa['count']}, Correct: {sqa['correct']}, Accuracy: {sqa['acc']:.2f}%, "
        f"IMG-Accuracy: {sqa['image_acc']:.2f}%"
    )
    with atomic_write(args.output_file) as f:
        json.dump(analyses, f, indent=2)
    with atomic_write(args.output_result) as f:
        json.dump(sqa, f, indent=2)
    return sqa


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.scienceqa.eval_science_qa", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--base-dir", type=str, required=True, help="folder with pid_splits.json and problems.json")
    parser.add_argument("--result-file", type=str, required=True, help="the answers, one JSON object per line")
    parser.add_argument(
        "--output-file", type=str, required=True, help="written: the per-problem analysis (one JSON document)"
    )
    parser.add_argument(
        "--output-result", type=str, required=True, help="written: the scores and per-problem letter indices (JSON)"
    )
    parser.add_argument("--split", type=str, default="test", help="split of pid_splits.json to score (default: test)")
    parser.add_argument(
        "--options", type=list, default=OPTIONS,
        help="the option letters, given as one word (default: ABCDE)",
    )
    args = parser.parse_args(argv)
    try:
        return evaluate(args)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
