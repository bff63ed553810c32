"""Score TextVQA answers with the soft VQA accuracy.

Run as:
    python -m bunny.eval.textvqa.eval_textvqa --annotation-file ./eval/textvqa/TextVQA_0.5.1_val.json \
        --result-file ./eval/textvqa/answers/bunny-phi-2.jsonl
    python -m bunny.eval.textvqa.eval_textvqa --annotation-file ... --result-dir ./eval/textvqa/answers

Each answer is matched to its annotation by (question_id == image_id, question), the question being
recovered from the answer's `prompt` and lower-cased; its score is the mean over the 10 leave-one-out
subsets of the human answers of min(1, matches / 3), all EvalAI-normalised. For each result file it
prints the file's stem, `Samples: N` and `Accuracy: xx.xx%`; `--result-dir` scores every `*.jsonl`
in sorted order and prints `Skipping X` for other files. An answer whose prompt has none of the known
formats, or with no annotation, is an error naming its question_id.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, Sequence

from bunny.eval.common import read_json, read_jsonl
from bunny.eval.m4c_evaluator import TextVQAAccuracyEvaluator

_OCR_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)
AnnotationIndex = dict[tuple[Any, str], dict[str, Any]]


def question_from_prompt(prompt: str) -> str:
    """The lower-cased question inside an answer's prompt; ValueError for an unknown format.

    Formats: `OCR tokens: … Question: <q> Short answer: …`; 3 lines with a `Reference OCR token: `
    line (the question is line 2 when the prompt starts with that line, else line 1); 2 lines
    (line 1)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_QUESTION.search(prompt)
        if match is None:
            raise ValueError("prompt starts with 'OCR tokens: ' but has no 'Question: … Short answer:'")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"prompt of {len(lines)} lines in none of the TextVQA formats: {prompt!r}")
    return question.lower()


def index_annotations(path: str) -> AnnotationIndex:
    """{(image_id, question lower-cased): annotation} of the official annotation file."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: not a TextVQA annotation file (no 'data' list)")
    index: AnnotationIndex = {}
    for number, entry in enumerate(data["data"]):
        try:
            index[(entry["image_id"], entry["question"].lower())] = entry
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"{path}: data[{number}] needs 'image_id' and a text 'question'") from None
    return index


def pred_list(results: Sequence[dict[str, Any]], annotations: AnnotationIndex, result_file: str) -> list[dict[str, Any]]:
    """The `{"pred_answer", "gt_answers"}` of each result, in order."""
    preds = []
    for result in results:
        qid = result["question_id"]
        try:
            question = question_from_prompt(result["prompt"])
            annotation = annotations.get((qid, question))
            if annotation is None:
                raise ValueError(f"no annotation with image_id {qid!r} and question {question!r}")
            answers = annotation.get("answers")
            if not isinstance(answers, list) or len(answers) != 10 or not all(isinstance(a, str) for a in answers):
                raise ValueError("its annotation does not have the 10 text answers the VQA accuracy needs")
            if not isinstance(result["text"], str):
                raise ValueError(f"the answer {result['text']!r} is not text")
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{result_file}: question_id {qid!r}: {err}") from None
        preds.append({"pred_answer": result["text"], "gt_answers": annotation["answers"]})
    return preds


def eval_single(annotations: AnnotationIndex, result_file: str) -> dict[str, Any]:
    """Score one result file and print its block: stem, `Samples: N`, `Accuracy: xx.xx%`, blank line."""
    experiment_name = os.path.splitext(os.path.basename(result_file))[0]
    print(experiment_name)
    preds = pred_list(read_jsonl(result_file, ("question_id", "prompt", "text")), annotations, result_file)
    accuracy = TextVQAAccuracyEvaluator().eval_pred_list(preds)
    print("Samples: {}\nAccuracy: {:.2f}%\n".format(len(preds), 100.0 * accuracy))
    return {"samples": len(preds), "accuracy": accuracy}


def evaluate(annotation_file: str, result_file: str | None, result_dir: str | None) -> dict[str, Any]:
    """{result file path: {"samples", "accuracy" (0-1)}} for every file scored."""
    annotations = index_annotations(annotation_file)
    scored = {}
    if result_file is not None:
        scored[result_file] = eval_single(annotations, result_file)
    if result_dir is not None:
        for name in sorted(os.listdir(result_dir)):
            if not name.endswith(".jsonl"):
                print(f"Skipping {name}")
                continue
            path = os.path.join(result_dir, name)
            scored[path] = eval_single(annotations, path)
    return scored


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.textvqa.eval_textvqa", description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotation-file", type=str, required=True, help="the official TextVQA_0.5.1_val.json")
    parser.add_argument("--result-file", type=str, default=None, help="one answer file to score")
    parser.add_argument("--result-dir", type=str, default=None, help="score every *.jsonl in this folder")
    args = parser.parse_args(argv)
    if args.result_file is None and args.result_dir is None:
        parser.error("give --result-file and/or --result-dir")
    try:
        return evaluate(args.annotation_file, args.result_file, args.result_dir)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
