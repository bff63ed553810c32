"""Turn MME answers into the per-task result files that `calculation_mme` scores.

Run as (from inside `eval/mme`, like the original, or from anywhere with `--data-dir eval/mme`):
    python -m bunny.eval.mme.convert_answer_to_mme --experiment bunny-phi-2 [--data-dir .]

Reads the ground truth from `<data-dir>/MME_Benchmark_release_version/<task>/` (either `images/` +
`questions_answers_YN/*.txt`, or the txt files beside the images; each line `question<TAB>answer`)
and the answers from `<data-dir>/answers/<experiment>.jsonl`, and writes
`<data-dir>/answers_upload/<experiment>/<task>.txt`, one line `image file<TAB>question<TAB>ground
truth<TAB>answer` per answer, in the answers' order.

An answer's task is its `question_id` up to the first `/`, its ground-truth file the image name with
`.txt` for the extension. Its question is the saved `prompt` without the benchmark's prompt suffix
("Answer the question using a single word or phrase." or "Answer the question directly with a
short sentence or phrase."), stripped, with " Please answer yes or no." appended when missing (two
spaces where the ground truth has two).

Differences from the original, on purpose: tabs, carriage returns and line feeds in an answer are
replaced by spaces, because a line that does not split into exactly 4 tab-separated fields is not
counted by the scorer and would break its two-questions-per-image pairing; the prompt is stripped
even when it has no suffix; an image name keeps its dots up to the extension; an answer whose
question is not in the ground truth, or a malformed ground-truth line, is an error naming it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

from bunny.eval.common import read_jsonl
from bunny.util.utils import atomic_write

GROUND_TRUTH_DIR = "MME_Benchmark_release_version"
PROMPT_SUFFIXES = (
    "Answer the question using a single word or phrase.",
    "Answer the question directly with a short sentence or phrase.",
)
YES_NO = "Please answer yes or no."

GroundTruth = dict[tuple[str, str, str], str]  # (task, txt file, question) -> "Yes" / "No"


def qa_directory(task_dir: str) -> str:
    """Where a task keeps its question files: `questions_answers_YN/` when the images are in
    `images/`, else the task folder itself."""
    if os.path.exists(os.path.join(task_dir, "images")):
        qa_dir = os.path.join(task_dir, "questions_answers_YN")
        if not os.path.isdir(qa_dir):
            raise ValueError(f"{task_dir} has images/ but no questions_answers_YN/ folder")
        return qa_dir
    return task_dir


def read_qa_file(path: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs of one ground-truth file; blank lines are skipped."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.strip().split("\t")
            if len(fields) != 2:
                raise ValueError(
                    f"{path}, line {number}: {len(fields)} tab-separated fields, expected question<TAB>answer"
                )
            pairs.append((fields[0], fields[1]))
    return pairs


def read_ground_truth(data_path: str) -> GroundTruth:
    """Every (task, txt file, question) of the MME release folder with its answer."""
    if not os.path.isdir(data_path):
        raise ValueError(f"no MME ground-truth folder {data_path} (the MME_Benchmark_release_version download)")
    ground_truth: GroundTruth = {}
    for task in sorted(os.listdir(data_path)):
        task_dir = os.path.join(data_path, task)
        if not os.path.isdir(task_dir):
            continue
        qa_dir = qa_directory(task_dir)
        for name in sorted(os.listdir(qa_dir)):
            if name.endswith(".txt"):
                for question, answer in read_qa_file(os.path.join(qa_dir, name)):
                    ground_truth[(task, name, question)] = answer
    return ground_truth


def sanitise(text: str) -> str:
    """`text` on one line without tabs: each tab, carriage return and line feed becomes a space."""
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def mme_question(prompt: str, task: str, qa_file: str, ground_truth: GroundTruth) -> str:
    """The ground truth's wording of a saved prompt (see the module docstring)."""
    for suffix in PROMPT_SUFFIXES:
        prompt = prompt.replace(suffix, "")
    prompt = prompt.strip()
    if YES_NO not in prompt:
        one_space = f"{prompt} {YES_NO}"
        prompt = one_space if (task, qa_file, one_space) in ground_truth else f"{prompt}  {YES_NO}"
    return prompt


def result_lines(answers: Sequence[dict[str, Any]], ground_truth: GroundTruth, source: str) -> dict[str, list[str]]:
    """{task: its result lines}, tasks in order of first answer, lines in the answers' order."""
    lines: dict[str, list[str]] = {}
    for number, answer in enumerate(answers, start=1):
        question_id = answer["question_id"]
        if not isinstance(question_id, str) or "/" not in question_id:
            raise ValueError(f"{source}, answer {number}: question_id {question_id!r} is not '<task>/<image>'")
        if not isinstance(answer["prompt"], str) or not isinstance(answer["text"], str):
            raise ValueError(
                f"{source}, answer {number} (question_id {question_id!r}): 'prompt' and 'text' must be strings"
            )
        task = question_id.split("/")[0]
        qa_file = os.path.splitext(question_id.split("/")[-1])[0] + ".txt"
        question = mme_question(answer["prompt"], task, qa_file, ground_truth)
        if (task, qa_file, question) not in ground_truth:
            raise ValueError(
                f"{source}, answer {number} (question_id {question_id!r}): question {question!r} "
                f"is not in the ground truth {task}/{qa_file}"
            )
        truth = ground_truth[(task, qa_file, question)]
        lines.setdefault(task, []).append("\t".join((qa_file, question, truth, sanitise(answer["text"]))))
    return lines


def convert(data_dir: str, experiment: str) -> dict[str, Any]:
    ground_truth = read_ground_truth(os.path.join(data_dir, GROUND_TRUTH_DIR))
    source = os.path.join(data_dir, "answers", f"{experiment}.jsonl")
    answers = read_jsonl(source, ("question_id", "prompt", "text"))
    lines = result_lines(answers, ground_truth, source)
    out_dir = os.path.join(data_dir, "answers_upload", experiment)
    os.makedirs(out_dir, exist_ok=True)
    for task, task_lines in lines.items():
        with atomic_write(os.path.join(out_dir, f"{task}.txt")) as f:
            f.writelines(line + "\n" for line in task_lines)
    return {"output_dir": out_dir, "answers": {task: len(task_lines) for task, task_lines in lines.items()}}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.mme.convert_answer_to_mme", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--experiment", type=str, required=True, help="answers/<experiment>.jsonl is converted")
    parser.add_argument(
        "--data-dir", type=str, default=".",
        help="the MME folder holding MME_Benchmark_release_version/, answers/ and answers_upload/ (default: .)",
    )
    args = parser.parse_args(argv)
    try:
        return convert(args.data_dir, args.experiment)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
