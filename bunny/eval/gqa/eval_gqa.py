"""Score GQA predictions with the metrics of the official GQA evaluation script.

Run as (from inside eval/gqa, after bunny.eval.gqa.convert_gqa_for_eval):
    python -m bunny.eval.gqa.eval_gqa --tier testdev_balanced

Reads `{tier}_questions.json` (the official dict {questionId: question}) and
`{tier}_predictions.json` (a list of {"questionId", "prediction"}); every question of the questions
file needs a prediction. Over the balanced questions (`isBalanced`) it prints, after an empty line:
Binary (structural type not `query`), Open (`query`) and Accuracy (exact string match with `answer`);
Consistency with `--consistency` (for each question answered right, the accuracy over the questions
it entails, averaged); Validity and Plausibility when the choices file `{tier}_choices.json` exists
(the test-dev tiers have none; the original then printed them as 0.00%); Distribution, the chi-square
between gold and predicted answer counts per global group, divided by 100 (lower is better). Then
the accuracy per structural type, semantic type, number of reasoning steps and number of words,
one `  <key>: yy.yy% (n questions)` line per key in sorted order. `--grounding` (attention scores,
which need scene graphs and attention maps that Bunny does not produce) is not supported.
"""

from __future__ import annotations

import argparse
import glob
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from bunny.eval.common import read_json

# (key, printed title) of the per-category accuracies, in print order.
DETAILED_METRICS = (
    ("accuracyPerStructuralType", "Accuracy / structural type"),
    ("accuracyPerSemanticType", "Accuracy / semantic type"),
    ("accuracyPerSteps", "Accuracy / steps number"),
    ("accuracyPerLength", "Accuracy / words number"),
)
# The headline metrics in print order (grounding, never computed here, sat before distribution).
HEADLINE_METRICS = ("binary", "open", "accuracy", "consistency", "validity", "plausibility", "distribution")
# Semantic operations that do not count as a reasoning step (substrings of "operation: argument").
NON_STEPS = ("exist", "query: name", "choose name")
Questions = dict[str, dict[str, Any]]


def load_json(path: str) -> Any:
    """A JSON file, or, when `path` is absent but a folder named like it without the extension
    exists, the union of the dicts in its `<folder name>_*<ext>` chunks (how GQA ships big files)."""
    if os.path.isfile(path):
        return read_json(path)
    folder, ext = os.path.splitext(path)
    if os.path.isdir(folder):
        merged: dict[str, Any] = {}
        for chunk in sorted(glob.glob(os.path.join(folder, f"{os.path.basename(folder)}_*{ext}"))):
            merged.update(read_json(chunk))
        return merged
    raise FileNotFoundError(f"can't find {path} (nor a folder {folder} of chunks)")


def json_exists(path: str) -> bool:
    return os.path.isfile(path) or os.path.isdir(os.path.splitext(path)[0])


def load_predictions(path: str) -> dict[Any, Any]:
    """{questionId: prediction}; a later prediction for the same question replaces an earlier one."""
    rows = load_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: not a list of {{'questionId', 'prediction'}}")
    predictions = {}
    for number, row in enumerate(rows):
        if not isinstance(row, dict) or "questionId" not in row or "prediction" not in row:
            raise ValueError(f"{path}: entry {number} needs 'questionId' and 'prediction'")
        predictions[row["questionId"]] = row["prediction"]
    return predictions


def check_predictions(questions: Questions, predictions: dict[Any, Any], path: str) -> None:
    missing = [qid for qid in questions if qid not in predictions]
    if missing:
        raise ValueError(
            f"{path}: no prediction for question {missing[0]!r} ({len(missing)} of {len(questions)} questions"
            " have none); every question of the questions file needs one"
        )


def steps_number(question: dict[str, Any]) -> int:
    """Reasoning steps: semantic operations other than existence checks and name queries/choices."""
    return sum(
        not any(word in f"{step['operation']}: {step['argument']}" for word in NON_STEPS) for step in question["semantic"]
    )


def words_number(question: dict[str, Any]) -> int:
    return len(question["question"].split())


def belongs(answer: Any, group: Sequence[Any], question: dict[str, Any]) -> bool:
    """Whether `answer` is in `group`; "common attribute" questions accept color, material, shape."""
    if "Common" in question["types"]["detailed"]:
        group = ["color", "material", "shape"]
    return answer in group


@dataclass
class Tally:
    """Per-question scores (1.0 right, 0.0 wrong) and answer counts, over the balanced questions."""

    lists: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    per_key: dict[str, dict[Any, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    # {global group: {answer: count}}, in first-seen order (the chi-square sums in this order).
    gold: dict[str, dict[Any, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    predicted: dict[str, dict[Any, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))


def entailed_consistency(
    qid: str, question: dict[str, Any], questions: Questions, predictions: dict[Any, Any]
) -> list[float]:
    """[mean accuracy over the questions `qid` entails], or [] when it entails none but itself."""
    entailed = [eid for eid in question["entailed"] if eid != qid]
    if not entailed:
        return []
    unknown = [eid for eid in entailed if eid not in questions]
    if unknown:
        raise ValueError(
            f"entails question {unknown[0]!r}, which is not in the questions file (--consistency needs them all)"
        )
    return [sum(float(predictions[eid] == questions[eid]["answer"]) for eid in entailed) / len(entailed)]


def tally_question(tally: Tally, qid: str, question: dict[str, Any], predicted: Any, choices: Questions | None) -> bool:
    """Add one balanced question's scores; whether it was answered right."""
    gold = question["answer"]
    score = float(predicted == gold)
    structural = question["types"]["structural"]
    tally.lists["accuracy"].append(score)
    tally.lists["open" if structural == "query" else "binary"].append(score)
    tally.per_key["accuracyPerLength"][words_number(question)].append(score)
    tally.per_key["accuracyPerSteps"][steps_number(question)].append(score)
    tally.per_key["accuracyPerStructuralType"][structural].append(score)
    tally.per_key["accuracyPerSemanticType"][question["types"]["semantic"]].append(score)
    if choices is not None:
        if qid not in choices:
            raise ValueError("has no entry in the choices file")
        tally.lists["validity"].append(float(belongs(predicted, choices[qid]["valid"], question)))
        tally.lists["plausibility"].append(float(belongs(predicted, choices[qid]["plausible"], question)))
    group = question["groups"]["global"]
    if group is not None:
        tally.gold[group][gold] += 1
        tally.predicted[group][predicted] += 1
    return score == 1.0


def tally_scores(
    questions: Questions, predictions: dict[Any, Any], choices: Questions | None, consistency: bool, path: str
) -> Tally:
    tally = Tally()
    for qid, question in questions.items():
        try:
            if not question["isBalanced"]:
                continue
            correct = tally_question(tally, qid, question, predictions[qid], choices)
            if consistency and correct:
                tally.lists["consistency"] += entailed_consistency(qid, question, questions, predictions)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: question {qid!r} lacks or has a malformed field ({err!r})") from None
        except ValueError as err:
            raise ValueError(f"{path}: question {qid!r} {err}") from None
    return tally


def chi_square(gold: dict[str, dict[Any, int]], predicted: dict[str, dict[Any, int]]) -> float:
    """Sum over global groups of the group's chi-square times its size, divided by the total size;
    0.0 when no balanced question has a global group (the original divides by zero)."""
    weighted, total = 0.0, 0
    for group, counts in gold.items():
        score, size = 0.0, 0
        for answer, expected in counts.items():
            observed = predicted[group].get(answer, 0)
            score += float(observed - expected) ** 2 / expected
            size += expected
        weighted += score * size
        total += size
    return weighted / total if total else 0.0


def average(scores: Sequence[float]) -> float:
    """0.0 for no scores."""
    return float(sum(scores)) / len(scores) if scores else 0.0


def summarize(tally: Tally, consistency: bool, with_choices: bool) -> dict[str, Any]:
    """The headline metrics (percentages; distribution as printed) in print order, then
    {detailed metric: {key: (percentage, number of questions)}}."""
    names = ["binary", "open", "accuracy"]
    if consistency:
        names.append("consistency")
    if with_choices:
        names += ["validity", "plausibility"]
    summary: dict[str, Any] = {name: average(tally.lists[name]) * 100 for name in names}
    summary["distribution"] = chi_square(tally.gold, tally.predicted) / 100
    for metric, _ in DETAILED_METRICS:
        summary[metric] = {key: (average(s) * 100, len(s)) for key, s in tally.per_key[metric].items()}
    return summary


def report_lines(summary: dict[str, Any]) -> list[str]:
    lines = [""]
    for name in HEADLINE_METRICS:
        if name in summary:
            suffix = " (lower is better)" if name == "distribution" else "%"
            lines.append(f"{name.capitalize()}: {summary[name]:.2f}{suffix}")
    for metric, title in DETAILED_METRICS:
        lines += ["", f"{title}:"]
        for key in sorted(summary[metric]):
            score, amount = summary[metric][key]
            lines.append(f"  {key}: {score:.2f}% ({amount} questions)")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.gqa.eval_gqa", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", default="val", type=str, help="e.g. testdev_balanced; fills {tier} in the file names")
    parser.add_argument("--scenes", default="{tier}_sceneGraphs.json", type=str, help="scene graphs (grounding only)")
    parser.add_argument("--questions", default="{tier}_questions.json", type=str, help="questions file")
    parser.add_argument("--choices", default="{tier}_choices.json", type=str, help="choices file (validity, plausibility)")
    parser.add_argument("--predictions", default="{tier}_predictions.json", type=str, help="predictions file")
    parser.add_argument("--attentions", default="{tier}_attentions.json", type=str, help="attention maps (grounding only)")
    parser.add_argument("--consistency", action="store_true", help="also score consistency (needs every entailed question)")
    parser.add_argument("--grounding", action="store_true", help="attention grounding score: not supported")
    parser.add_argument("--objectFeatures", action="store_true", help="object-based attention (grounding only)")
    parser.add_argument("--mapSize", default=7, type=int, help="attention map size (grounding only)")
    return parser


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    questions_path, choices_path, predictions_path = (
        pattern.format(tier=args.tier) for pattern in (args.questions, args.choices, args.predictions)
    )
    print("Loading questions...")
    questions = load_json(questions_path)
    if not isinstance(questions, dict):
        raise ValueError(f"{questions_path}: not a dict {{questionId: question}}")
    print("Loading choices...")
    choices = load_json(choices_path) if json_exists(choices_path) else None
    if choices is None:
        print(f"No {choices_path}: validity and plausibility are not scored")
    elif not isinstance(choices, dict):
        raise ValueError(f"{choices_path}: not a dict {{questionId: {{'valid', 'plausible'}}}}")
    print("Loading predictions...")
    predictions = load_predictions(predictions_path)
    check_predictions(questions, predictions, predictions_path)
    tally = tally_scores(questions, predictions, choices, args.consistency, questions_path)
    summary = summarize(tally, args.consistency, choices is not None)
    print("\n".join(report_lines(summary)))
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.grounding:
        parser.error(
            "--grounding is not supported: it scores attention maps against scene graphs, which Bunny does not produce"
        )
    try:
        return evaluate(args)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
