"""Score POPE answers: accuracy, precision, recall, F1 and yes ratio per sampling strategy, and the
average F1 score over the strategies (the number reported).

Run as:
    python -m bunny.eval.pope.eval_pope --annotation-dir eval/pope/coco \\
        --question-file eval/pope/bunny_pope_test.jsonl --result-file eval/pope/answers/bunny-phi-2.jsonl

The annotation folder holds the official `coco_pope_<category>.json` files (JSON lines
`{"question_id", "image", "text", "label"}`); categories are scored in `os.listdir` order. An
answer's category, image and question come from the question file, by `question_id`. An answer is
*no* when its first sentence (the text before the first `.`), with commas removed and split on
spaces, has one of the words `No`, `not`, `no` (case-sensitive: `NO` and `Not really.` are *yes*);
otherwise it is *yes*.

Difference from the original, on purpose: it paired a category's answers with its labels by
position, which only works when both are in the same order, and the official files number their
questions from 1 while the question file offsets them. Here an answer is paired with the label of
the same image and question (the question file's text without its "Answer the question using a
single word or phrase." line); answers without a label and labels without an answer are counted,
reported on stderr (with the first few ids) and left out. A metric whose denominator is 0 is 0.
Other files in the annotation folder are reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict, deque
from typing import Any, Iterable, Sequence

from bunny.eval.common import read_jsonl

PREFIX, SUFFIX = "coco_pope_", ".json"
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
SEPARATOR = "=" * 36
REPORTED_IDS = 5  # how many ids a warning lists

Key = tuple[str, str]  # (image, question)


def answer_label(text: str) -> str:
    """`yes` or `no` for an answer text (the original's rule, see the module docstring)."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def question_key(image: str, text: str) -> Key:
    """What pairs a question with its label: the image and the question without the prompt suffix."""
    if text.endswith(PROMPT_SUFFIX):
        text = text[: -len(PROMPT_SUFFIX)]
    return image, text.strip()


def category_of(file_name: str) -> str | None:
    """`random` for `coco_pope_random.json`; None for a file that is not a POPE annotation file."""
    if file_name.startswith(PREFIX) and file_name.endswith(SUFFIX) and len(file_name) > len(PREFIX) + len(SUFFIX):
        return file_name[len(PREFIX) : -len(SUFFIX)]
    return None


def read_labels(path: str) -> list[dict[str, Any]]:
    labels = read_jsonl(path, ("question_id", "image", "text", "label"))
    for label in labels:
        if label["label"] not in ("yes", "no"):
            raise ValueError(
                f"{path}, question_id {label['question_id']!r}: label {label['label']!r} is neither yes nor no"
            )
    return labels


def pair_answers(
    answers: Iterable[tuple[Key, dict[str, Any]]], labels: Sequence[dict[str, Any]]
) -> tuple[list[tuple[str, str]], list[Any], list[Any]]:
    """([(predicted, true label)], ids of answers without a label, ids of labels without an answer).
    Answers and labels with the same key pair in their order (a repeated question pairs in turn)."""
    waiting: dict[Key, deque[dict[str, Any]]] = defaultdict(deque)
    for label in labels:
        waiting[question_key(label["image"], label["text"])].append(label)
    pairs, lonely_answers = [], []
    for key, answer in answers:
        if waiting[key]:
            pairs.append((answer_label(answer["text"]), waiting[key].popleft()["label"]))
        else:
            lonely_answers.append(answer["question_id"])
    lonely_labels = [label["question_id"] for queue in waiting.values() for label in queue]
    return pairs, lonely_answers, lonely_labels


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def pope_metrics(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Counts and rates of (predicted, true label) pairs, computed as the original does."""
    tp = sum(pair == ("yes", "yes") for pair in pairs)
    fp = sum(pair == ("yes", "no") for pair in pairs)
    tn = sum(pair == ("no", "no") for pair in pairs)
    fn = sum(pair == ("no", "yes") for pair in pairs)
    precision = ratio(float(tp), float(tp + fp))
    recall = ratio(float(tp), float(tp + fn))
    f1 = ratio(2 * precision * recall, precision + recall)
    return {
        "samples": len(pairs), "TP": tp, "FP": fp, "TN": tn, "FN": fn,
        "accuracy": ratio(tp + tn, tp + tn + fp + fn), "precision": precision, "recall": recall, "f1": f1,
        "yes_ratio": ratio(tp + fp, len(pairs)),
    }


def print_metrics(category: str, m: dict[str, Any]) -> None:
    """The original's lines for one category."""
    print(f"Category: {category}, # samples: {m['samples']}")
    print("TP\tFP\tTN\tFN\t")
    print(f"{m['TP']}\t{m['FP']}\t{m['TN']}\t{m['FN']}")
    print(f"Accuracy: {m['accuracy']}")
    print(f"Precision: {m['precision']}")
    print(f"Recall: {m['recall']}")
    print(f"F1 score: {m['f1']}")
    print(f"Yes ratio: {m['yes_ratio']}")
    print("%.3f, %.3f, %.3f, %.3f, %.3f" % (m["f1"], m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]))
    print(SEPARATOR)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def warn_unpaired(what: str, ids: Sequence[Any], source: str) -> None:
    if ids:
        shown = ", ".join(map(repr, ids[:REPORTED_IDS])) + (", ..." if len(ids) > REPORTED_IDS else "")
        warn(f"{source}: {len(ids)} {what}, not scored (question ids {shown})")


def answers_by_category(
    answers: Sequence[dict[str, Any]], questions: dict[Any, dict[str, Any]], result_file: str
) -> dict[str, list[tuple[Key, dict[str, Any]]]]:
    """{category: [(key, answer)]} in the answers' order; answers to unknown questions are reported."""
    grouped: dict[str, list[tuple[Key, dict[str, Any]]]] = defaultdict(list)
    unknown = []
    for answer in answers:
        if not isinstance(answer["text"], str):
            raise ValueError(f"{result_file}, question_id {answer['question_id']!r}: 'text' is not a string")
        question = questions.get(answer["question_id"])
        if question is None:
            unknown.append(answer["question_id"])
            continue
        grouped[question["category"]].append((question_key(question["image"], question["text"]), answer))
    warn_unpaired("answer(s) whose question_id is not in the question file", unknown, result_file)
    return grouped


def read_questions(path: str) -> dict[Any, dict[str, Any]]:
    questions = {}
    for question in read_jsonl(path, ("question_id", "image", "text", "category")):
        questions[question["question_id"]] = question
    return questions


def evaluate(annotation_dir: str, question_file: str, result_file: str) -> dict[str, Any]:
    questions = read_questions(question_file)
    grouped = answers_by_category(read_jsonl(result_file, ("question_id", "text")), questions, result_file)
    results: dict[str, dict[str, Any]] = {}
    for file_name in os.listdir(annotation_dir):
        category = category_of(file_name)
        if category is None:
            warn(f"{annotation_dir}: skipping {file_name}, not a coco_pope_<category>.json file")
            continue
        label_file = os.path.join(annotation_dir, file_name)
        pairs, lonely_answers, lonely_labels = pair_answers(grouped.pop(category, []), read_labels(label_file))
        warn_unpaired(f"{category} answer(s) without a label in {file_name}", lonely_answers, result_file)
        warn_unpaired("label(s) without an answer", lonely_labels, label_file)
        results[category] = pope_metrics(pairs)
        print_metrics(category, results[category])
    if not results:
        raise ValueError(f"no coco_pope_<category>.json annotation files in {annotation_dir}")
    for category, rest in grouped.items():
        ids = [answer["question_id"] for _, answer in rest]
        warn_unpaired(f"answer(s) of category {category!r}, which has no annotation file", ids, result_file)
    average_f1 = 0.0  # summed in listing order, as the original does
    for metrics in results.values():
        average_f1 += metrics["f1"]
    average_f1 /= len(results)
    print(f"Average F1 score: {average_f1}")
    return {"categories": results, "average_f1": average_f1}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.pope.eval_pope", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--annotation-dir", type=str, required=True, help="folder of the official coco_pope_<category>.json files"
    )
    parser.add_argument(
        "--question-file", type=str, required=True, help="the question file answered (bunny_pope_test.jsonl)"
    )
    parser.add_argument("--result-file", type=str, required=True, help="the answers, one JSON object per line")
    args = parser.parse_args(argv)
    try:
        return evaluate(args.annotation_dir, args.question_file, args.result_file)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
