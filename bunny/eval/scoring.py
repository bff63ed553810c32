"""Score one benchmark's answers the way `python -m bunny.eval run` reports them: the original's (legacy)
numbers exactly as our scorer modules print them, a corrected score beside them where the original's
parsing is wrong, counts of missing answers and random fallbacks, and the upload file of server-scored
benchmarks. Not a command; `python -m bunny.eval run` calls

    score(benchmark, data_dir, answers, run_dir, split=None) -> dict

`data_dir` is the benchmark's folder (question files from `bunny.eval.prepare`, official files);
`answers` the generator's output; everything written goes under `run_dir`. The returned dict:

    benchmark, score (the model zoo's headline number, in its units: percent, MME points; None when a
    server scores it), score_name, metrics (what the scorer module returns, made JSON-friendly),
    corrected ({score, metrics, changes} or None, see `bunny.eval.corrections`), counts (questions,
    answered, missing, random_fallbacks, unmatched_answers, ...), missing_rows (up to 20 question ids),
    upload ({file, to} or None), printed (the scorer's stdout), warnings (its stderr lines), files.

Answers are matched to the question file by row: the question's id plus, where ids repeat (MME, TextVQA),
the prompt. A scorer that needs every answer (MME, GQA, VizWiz, shapes) gets an empty answer for each
missing one, so it is scored wrong, and the legacy CMMMU score covers the answered questions only (the
original fails on both); with every answer there, the numbers are those of the scorer run on the answer
file. MME's and GQA's converted files are written in question order, so each MME image's two answers stay
paired whatever order the answer file has. MMBench has no local scorer in the original: its score here is
a single-pass letter match on the dev split (`mmbench_letter`), the official number is the server's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from bunny.eval.common import MissingDataError, read_json, read_jsonl, require_file
from bunny.eval.prepare import SOURCES
from bunny.util.utils import atomic_write, write_jsonl

MISSING_ROWS_LISTED = 20
UPLOAD_SERVERS = {
    "mmbench": "https://mmbench.opencompass.org.cn/mmbench-submission",
    "vqav2": "https://eval.ai/web/challenges/challenge-page/830/overview",
    "vizwiz": "https://eval.ai/web/challenges/challenge-page/1911/overview",
    "mmvet": "https://huggingface.co/spaces/whyu/MM-Vet_Evaluator",
    "mmmu": "https://eval.ai/web/challenges/challenge-page/2179/overview",
}
GQA_TIER = "testdev_balanced"
Row = dict[str, Any]


# --- plumbing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    benchmark: str
    data_dir: str
    answers: str
    run_dir: str
    split: str | None

    def data(self, name: str, what: str, source: str | None = None) -> str:
        """`data_dir/name`, which must exist; else MissingDataError saying what it is and where it comes from."""
        hint = f"`python -m bunny.eval.prepare {self.benchmark} --data-dir {self.data_dir}` builds it"
        return require_file(os.path.join(self.data_dir, name), what, source or hint)

    def official(self, name: str, what: str) -> str:
        return self.data(name, what, SOURCES.get(self.benchmark, ""))

    def out(self, name: str) -> str:
        return os.path.join(self.run_dir, name)


@dataclass
class Scored:
    """What one benchmark's scorer fills; `score` turns it into the report dict."""

    score: float | None
    score_name: str
    metrics: Any
    printed: str
    counts: dict[str, Any]
    missing_rows: list[Any]
    corrected: dict[str, Any] | None = None
    upload: dict[str, str] | None = None
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class Matched:
    """The answer of each question row (None: missing) and the answers that match no row."""

    rows: list[Row | None]
    unmatched: list[Row]

    @property
    def complete(self) -> bool:
        return all(answer is not None for answer in self.rows)


def jsonable(value: Any) -> Any:
    """`value` as JSON gives it back (tuples become lists, keys strings), so the report is plain JSON."""
    return json.loads(json.dumps(value))


def captured(function: Callable[..., Any], *args: Any) -> tuple[Any, str, list[str]]:
    """(result, stdout, stderr lines) of `function(*args)`; stderr is passed on too, so the user sees the
    scorer's warnings. A scorer that exits (its `main` on an error) is a ValueError with its message."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = function(*args)
    except SystemExit as exit_:
        raise ValueError(err.getvalue().strip() or f"{function.__module__} exited with status {exit_.code}") from None
    finally:
        sys.stderr.write(err.getvalue())
    return result, out.getvalue(), err.getvalue().splitlines()


def read_answers(path: str) -> list[Row]:
    return read_jsonl(require_file(path, "the answer file"), ("question_id", "text"))


def id_key(question_id: Any) -> str:
    """Ids compared as text, so `3` in an answer file matches `"3"` in a TSV."""
    return str(question_id)


def match_answers(questions: Sequence[Row], answers: Sequence[Row], by_prompt: bool = False) -> Matched:
    """Pair each question row with an answer of the same `question_id`, each answer used once, in file
    order. With `by_prompt`, an answer whose `prompt` is the question's `text` is preferred (MME asks two
    questions per image under one id; TextVQA repeats ids), so a missing answer is the right row."""
    waiting: dict[str, list[int]] = {}
    for index, answer in enumerate(answers):
        waiting.setdefault(id_key(answer["question_id"]), []).append(index)
    used: set[int] = set()
    rows: list[Row | None] = [None] * len(questions)
    for prompt_must_match in (True, False) if by_prompt else (False,):
        for row, question in enumerate(questions):
            if rows[row] is not None:
                continue
            for index in waiting.get(id_key(question["question_id"]), ()):
                if index in used or (prompt_must_match and answers[index].get("prompt") != question.get("text")):
                    continue
                used.add(index)
                rows[row] = answers[index]
                break
    return Matched(rows, [answer for index, answer in enumerate(answers) if index not in used])


def tally(
    questions: Sequence[Row], matched: Matched, random_fallbacks: int | None = 0, **extra: Any
) -> tuple[dict[str, Any], list[Any]]:
    """(counts, the ids of the first missing rows)."""
    missing = [question["question_id"] for question, answer in zip(questions, matched.rows) if answer is None]
    counts = {
        "questions": len(questions), "answered": len(questions) - len(missing), "missing": len(missing),
        "random_fallbacks": random_fallbacks, "unmatched_answers": len(matched.unmatched), **extra,
    }
    return counts, missing[:MISSING_ROWS_LISTED]


def blank_answer(question: Row) -> Row:
    """What a missing answer is scored as: an empty text (wrong under every rule)."""
    return {"question_id": question["question_id"], "prompt": question.get("text", ""), "text": ""}


def completed(questions: Sequence[Row], matched: Matched) -> list[Row]:
    """The answers in question order, a blank answer where one is missing."""
    return [answer if answer is not None else blank_answer(q) for q, answer in zip(questions, matched.rows)]


def answers_for_scorer(run: Run, questions: Sequence[Row], matched: Matched) -> str:
    """The answer file itself when every question has an answer; else a copy in run_dir with a blank
    answer added for each missing one (for scorers that need them all)."""
    if matched.complete:
        return run.answers
    path = run.out("answers_completed.jsonl")
    blanks = [blank_answer(q) for q, answer in zip(questions, matched.rows) if answer is None]
    write_jsonl(path, read_answers(run.answers) + blanks)
    return path


def write_json(path: str, value: Any, indent: int | None = None) -> str:
    with atomic_write(path) as f:
        json.dump(value, f, indent=indent)
    return path


def percent(fraction: float) -> float:
    return 100 * fraction


# --- MME, GQA, POPE, TextVQA, SEED, shapes: scored here -------------------------------------------------

def score_mme(run: Run) -> Scored:
    from bunny.eval.mme import calculation_mme, convert_answer_to_mme as convert

    questions = read_jsonl(run.data("bunny_mme.jsonl", "MME's question file"), ("question_id", "text"))
    matched = match_answers(questions, read_answers(run.answers), by_prompt=True)
    truth = convert.read_ground_truth(run.official(convert.GROUND_TRUTH_DIR, "MME's images and questions"))
    # In question order, so each image's two answers stay on consecutive lines whatever the file's order.
    lines = convert.result_lines(completed(questions, matched), truth, run.answers)
    results_dir = run.out("mme_results")
    for task, task_lines in lines.items():
        with atomic_write(os.path.join(results_dir, f"{task}.txt")) as f:
            f.writelines(line + "\n" for line in task_lines)
    metrics, printed, warnings = captured(calculation_mme.process_result, results_dir)
    counts, missing = tally(questions, matched)
    return Scored(
        metrics["Perception"]["total"], "MME perception total (cognition in metrics)", jsonable(metrics), printed,
        counts, missing, warnings=warnings, files=[results_dir],
    )


def escape_braces(path: str) -> str:
    """A path for eval_gqa's `{tier}` file-name patterns."""
    return path.replace("{", "{{").replace("}", "}}")


def score_gqa(run: Run) -> Scored:
    from bunny.eval.gqa import convert_gqa_for_eval, eval_gqa

    questions = read_jsonl(run.data(f"bunny_gqa_{GQA_TIER}.jsonl", "GQA's question file"), ("question_id",))
    matched = match_answers(questions, read_answers(run.answers))
    questions_path = os.path.join(run.data_dir, f"{GQA_TIER}_questions.json")
    if not eval_gqa.json_exists(questions_path):
        raise MissingDataError(questions_path, "GQA's test-dev balanced questions", SOURCES["gqa"])
    predictions_path = write_json(
        run.out(f"{GQA_TIER}_predictions.json"),
        convert_gqa_for_eval.gqa_predictions(completed(questions, matched), run.answers),
    )
    args = eval_gqa.build_parser().parse_args([
        "--tier", GQA_TIER, "--questions", escape_braces(questions_path),
        "--predictions", escape_braces(predictions_path),
        "--choices", escape_braces(os.path.join(run.data_dir, f"{GQA_TIER}_choices.json")),
    ])
    metrics, printed, warnings = captured(eval_gqa.evaluate, args)
    counts, missing = tally(questions, matched)
    return Scored(
        metrics["accuracy"], "GQA accuracy (%)", jsonable(metrics), printed, counts, missing,
        warnings=warnings, files=[predictions_path],
    )


def pope_corrected(run: Run, annotation_dir: str, questions: Sequence[Row], matched: Matched) -> dict[str, Any]:
    """POPE under `corrections.pope_label`, a missing answer counted as the wrong label; categories in
    the legacy order (the annotation folder's listing)."""
    from bunny.eval import corrections
    from bunny.eval.pope import eval_pope

    results: dict[str, Any] = {}
    for file_name in os.listdir(annotation_dir):
        category = eval_pope.category_of(file_name)
        if category is None:
            continue
        waiting: dict[tuple[str, str], list[str]] = {}
        for label in eval_pope.read_labels(os.path.join(annotation_dir, file_name)):
            waiting.setdefault(eval_pope.question_key(label["image"], label["text"]), []).append(label["label"])
        pairs = []
        for question, answer in zip(questions, matched.rows):
            labels = waiting.get(eval_pope.question_key(question["image"], question["text"]))
            if question["category"] != category or not labels:
                continue
            truth = labels.pop(0)
            wrong = "no" if truth == "yes" else "yes"
            pairs.append((corrections.pope_label(answer["text"]) if answer is not None else wrong, truth))
        results[category] = eval_pope.pope_metrics(pairs)
    average_f1 = sum(metrics["f1"] for metrics in results.values()) / len(results) if results else 0.0
    return {
        "score": percent(average_f1), "metrics": {"categories": results, "average_f1": average_f1},
        "changes": corrections.CHANGES["pope"],
    }


def score_pope(run: Run) -> Scored:
    from bunny.eval.pope import eval_pope

    question_file = run.data("bunny_pope_test.jsonl", "POPE's question file")
    annotation_dir = run.official("coco", "POPE's coco_pope_<category>.json files")
    questions = read_jsonl(question_file, ("question_id", "image", "text", "category"))
    matched = match_answers(questions, read_answers(run.answers))
    metrics, printed, warnings = captured(eval_pope.evaluate, annotation_dir, question_file, run.answers)
    counts, missing = tally(questions, matched)
    return Scored(
        percent(metrics["average_f1"]), "POPE average F1 (%)", jsonable(metrics), printed, counts, missing,
        corrected=pope_corrected(run, annotation_dir, questions, matched), warnings=warnings,
    )


def textvqa_corrected(annotations: dict[Any, Row], questions: Sequence[Row], matched: Matched) -> dict[str, Any]:
    """Soft VQA accuracy without the 32-period cap, over every question (missing answers score 0)."""
    from bunny.eval import corrections
    from bunny.eval.m4c_evaluator import soft_accuracy
    from bunny.eval.textvqa.eval_textvqa import question_from_prompt

    total = 0.0
    for question, answer in zip(questions, matched.rows):
        if answer is not None:
            lookup = (question["question_id"], question_from_prompt(question["text"]))
            if lookup not in annotations:
                raise ValueError(f"question {lookup[0]!r}, {lookup[1]!r}: not in the TextVQA annotations")
            total += soft_accuracy(answer["text"], annotations[lookup]["answers"], period_cap=False)
    accuracy = total / len(questions) if questions else 0.0
    return {
        "score": percent(accuracy), "metrics": {"samples": len(questions), "accuracy": accuracy},
        "changes": corrections.CHANGES["textvqa"],
    }


def score_textvqa(run: Run) -> Scored:
    from bunny.eval.textvqa import eval_textvqa

    question_file = run.data("bunny_textvqa_val_v051_ocr.jsonl", "TextVQA's question file")
    questions = read_jsonl(question_file, ("question_id", "text"))
    matched = match_answers(questions, read_answers(run.answers), by_prompt=True)
    annotations = eval_textvqa.index_annotations(run.official("TextVQA_0.5.1_val.json", "TextVQA's val annotations"))
    metrics, printed, warnings = captured(eval_textvqa.eval_single, annotations, run.answers)
    counts, missing = tally(questions, matched)
    return Scored(
        percent(metrics["accuracy"]), "TextVQA accuracy (%)", jsonable(metrics), printed, counts, missing,
        corrected=textvqa_corrected(annotations, questions, matched), warnings=warnings,
    )


def score_seedbench(run: Run) -> Scored:
    from bunny.eval.seed_bench import convert_seed_for_submission as seed

    questions = read_jsonl(run.data("bunny-seed-bench.jsonl", "SEED-Bench's question file"), ("question_id",))
    matched = match_answers(questions, read_answers(run.answers))
    annotation = run.official("SEED-Bench.json", "SEED-Bench's annotation")
    upload = run.out("seed_bench_upload.jsonl")
    metrics, printed, warnings = captured(seed.convert, annotation, run.answers, upload)
    counts, missing = tally(questions, matched)
    return Scored(
        metrics["image"], "SEED-Bench image accuracy (%)", jsonable(metrics), printed, counts, missing,
        warnings=warnings, files=[upload],
    )


def score_shapes(run: Run) -> Scored:
    from bunny.eval import eval_shapes

    source = "`python -m bunny.demo.synthetic` writes it"
    questions = read_jsonl(run.data("questions.jsonl", "the shapes questions", source), ("question_id",))
    key = run.data("answer_key.jsonl", "the shapes answer key", source)
    matched = match_answers(questions, read_answers(run.answers))
    source = answers_for_scorer(run, questions, matched)
    metrics, printed, warnings = captured(eval_shapes.main, ["--answer-key", key, "--result-file", source])
    counts, missing = tally(questions, matched)
    return Scored(
        percent(metrics["accuracy"]), "shapes accuracy (%)", jsonable(metrics), printed, counts, missing,
        warnings=warnings,
    )


# --- ScienceQA, MMBench ----------------------------------------------------------------------------------

def scienceqa_corrected(run: Run) -> dict[str, Any]:
    """IMG-Accuracy over every image problem of the split (legacy leaves unanswered ones out)."""
    from bunny.eval import corrections
    from bunny.eval.scienceqa import eval_science_qa as sqa

    problems = sqa.load_split(run.data_dir, "test")
    predictions = sqa.read_predictions(run.answers)
    correct = count = 0
    for pid, problem in problems.items():
        if problem.get("image"):
            letter = sqa.parse_answer(predictions.get(pid, sqa.MISSING)["text"], sqa.OPTIONS)
            correct += sqa.get_pred_idx(letter, problem["choices"], sqa.OPTIONS) == problem["answer"]
            count += 1
    metrics = {"image_acc": sqa.percent(correct, count), "image_correct": correct, "image_count": count}
    return {"score": metrics["image_acc"], "metrics": metrics, "changes": corrections.CHANGES["scienceqa"]}


def score_scienceqa(run: Run) -> Scored:
    from bunny.eval.scienceqa import eval_science_qa as sqa

    entries = read_json(run.data("bunny_test_CQM-A.json", "ScienceQA's question file"))
    questions = [{"question_id": entry["id"]} for entry in entries]
    matched = match_answers(questions, read_answers(run.answers))
    run.official("problems.json", "ScienceQA's problems")
    run.official("pid_splits.json", "ScienceQA's split lists")
    args = argparse.Namespace(
        base_dir=run.data_dir, result_file=run.answers, output_file=run.out("scienceqa_output.json"),
        output_result=run.out("scienceqa_result.json"), split="test", options=sqa.OPTIONS,
    )
    result, printed, warnings = captured(sqa.evaluate, args)
    # The per-problem letters and texts stay in the result file.
    metrics = {key: value for key, value in result.items() if key not in ("results", "outputs")}
    counts, missing = tally(questions, matched)
    return Scored(
        metrics["image_acc"], "ScienceQA IMG-Accuracy (%)", jsonable(metrics), printed, counts, missing,
        corrected=scienceqa_corrected(run), warnings=warnings, files=[args.output_file, args.output_result],
    )


def is_blank(value: Any) -> bool:
    """A missing TSV cell, as the MMBench generator reads them."""
    return not isinstance(value, str) or value.lower() in ("nan", "none")


def mmbench_letter(text: str, options: dict[str, str]) -> str | None:
    """The option letter an MMBench answer picks: the answer itself once stripped of spaces, brackets and
    punctuation; else the only option letter standing alone in it; else the only option whose text it
    contains (case-insensitively); None when none or several fit."""
    from bunny.eval.corrections import standalone_count

    bare = text.strip().strip("()[]{}.,:;!?'\"` ")
    if bare in options:
        return bare
    alone = [letter for letter in options if standalone_count(text, letter)]
    if len(alone) == 1:
        return alone[0]
    named = [letter for letter, option in options.items() if option.lower() in text.lower()]
    return named[0] if len(named) == 1 else None


def mmbench_accuracy(table: Sequence[Row], matched: Matched) -> dict[str, Any]:
    """Single-pass accuracy on the round-0 answers (a local check; the official number is the server's
    circular evaluation): right when `mmbench_letter` reads the `answer` letter; missing is wrong."""
    right: dict[str, list[bool]] = {}
    unparsed = 0
    for row, answer in zip(table, matched.rows):
        options = {}
        for letter in "ABCD":
            if is_blank(row.get(letter)):
                break
            options[letter] = row[letter]
        letter = mmbench_letter(answer["text"], options) if answer is not None else None
        unparsed += answer is not None and letter is None
        right.setdefault(str(row.get("category")), []).append(letter == row["answer"])
    every = [value for values in right.values() for value in values]
    return {
        "accuracy": percent(sum(every) / len(every)) if every else 0.0, "correct": sum(every),
        "unparsed": unparsed, "categories": {name: percent(sum(v) / len(v)) for name, v in sorted(right.items())},
    }


def score_mmbench(run: Run) -> Scored:
    import pandas as pd

    from bunny.eval.mmbench import convert_mmbench_for_submission as mmbench

    split = run.split or "MMBench_DEV_EN_legacy"
    tsv = run.official(f"{split}.tsv", f"MMBench's {split} questions")
    table = pd.read_table(tsv, dtype=str).to_dict("records")
    questions = [{"question_id": row["index"]} for row in table]
    answers = [answer for answer in read_answers(run.answers) if answer.get("round_id", 0) == 0]
    matched = match_answers(questions, answers)
    upload = run.out(f"{split}.xlsx")
    converted, printed, warnings = captured(mmbench.convert_files, tsv, run.answers, upload)
    metrics: dict[str, Any] = {"converter": converted}
    score = None
    if table and all(not is_blank(row.get("answer")) for row in table):  # dev splits; test TSVs have no answers
        metrics.update(mmbench_accuracy(table, matched))
        score = metrics["accuracy"]
    counts, missing = tally(questions, matched)
    return Scored(
        score, f"MMBench {split} accuracy (%, single pass, local)", jsonable(metrics), printed, counts, missing,
        upload={"file": upload, "to": UPLOAD_SERVERS["mmbench"]}, warnings=warnings,
    )


# --- server-scored: VQAv2, VizWiz, MM-Vet ----------------------------------------------------------------

def score_vqav2(run: Run) -> Scored:
    from bunny.eval.vqav2 import convert_vqav2_for_submission as vqav2

    split = run.split or "bunny_vqav2_mscoco_test-dev2015"
    questions = read_jsonl(run.data(f"{split}.jsonl", f"VQAv2's {split} question file"), ("question_id",))
    matched = match_answers(questions, read_answers(run.answers))
    test_list = run.data(vqav2.TEST_LIST, "the full VQAv2 test2015 question list")
    upload = run.out(f"{split}_upload.json")
    metrics, printed, warnings = captured(vqav2.convert_files, test_list, run.answers, upload)
    counts, missing = tally(questions, matched)
    return Scored(
        None, "VQAv2 (scored by the EvalAI server)", jsonable(metrics), printed, counts, missing,
        upload={"file": upload, "to": UPLOAD_SERVERS["vqav2"]}, warnings=warnings,
    )


def score_vizwiz(run: Run) -> Scored:
    from bunny.eval.viswiz import convert_viswiz_for_submission as vizwiz

    question_file = run.data("bunny_test.jsonl", "VizWiz's question file")
    questions = read_jsonl(question_file, ("question_id", "image"))
    matched = match_answers(questions, read_answers(run.answers))
    upload = run.out("vizwiz_upload.json")
    source = answers_for_scorer(run, questions, matched)
    metrics, printed, warnings = captured(vizwiz.convert, question_file, source, upload)
    counts, missing = tally(questions, matched)
    return Scored(
        None, "VizWiz (scored by the EvalAI server)", jsonable(metrics), printed, counts, missing,
        upload={"file": upload, "to": UPLOAD_SERVERS["vizwiz"]}, warnings=warnings,
    )


def score_mmvet(run: Run) -> Scored:
    from bunny.eval.mm_vet import convert_mmvet_for_eval

    questions = read_jsonl(run.data("bunny-mm-vet.jsonl", "MM-Vet's question file"), ("question_id",))
    matched = match_answers(questions, read_answers(run.answers))
    upload = run.out("mmvet_results.json")
    results, printed, warnings = captured(convert_mmvet_for_eval.main, ["--src", run.answers, "--dst", upload])
    counts, missing = tally(questions, matched)
    return Scored(
        None, "MM-Vet (scored by the online GPT-4 evaluator)", {"answers": len(results)}, printed, counts, missing,
        upload={"file": upload, "to": UPLOAD_SERVERS["mmvet"]}, warnings=warnings,
    )


# --- MMMU, CMMMU: raw responses beside the answers, random draws replayed -------------------------------

def responses_path(answers: str) -> str:
    """The generator's raw responses beside its output: `x.json` / `x.jsonl` -> `x.responses.jsonl`."""
    return os.path.splitext(answers)[0] + ".responses.jsonl"


def read_responses(answers: str, warnings: list[str]) -> dict[Any, Row] | None:
    """{id: raw response row} in question order, or None (and a warning) when the generator wrote no
    responses file."""
    path = responses_path(answers)
    if not os.path.exists(path):
        warning = f"warning: no {path}: random fallbacks not counted, no corrected score"
        print(warning, file=sys.stderr)
        warnings.append(warning)
        return None
    return {row["id"]: row for row in read_jsonl(path, ("id", "response", "generated"))}


def mmmu_replay(responses: dict[Any, Row], predictions: dict[str, Any]) -> dict[str, list[Any]]:
    """Replay the MMMU generator's random draws (Python's `random` seeded 42, in question order): the ids
    not asked (answered at random), those whose response has no readable letter (a random letter), and
    those whose replayed prediction differs from the prediction file (another seed or order)."""
    from bunny.eval.mmmu.eval_mmmu import parse_multi_choice_letter

    rng = random.Random(42)
    replay: dict[str, list[Any]] = {"not_asked": [], "parser_fallbacks": [], "replay_mismatches": []}
    for sample_id, row in responses.items():
        multiple_choice = row["question_type"] == "multiple-choice"
        choices = list(row.get("all_choices") or [])
        prediction, drawn_ok = row["response"], True
        if not row["generated"]:
            replay["not_asked"].append(sample_id)
            drawn_ok = not (multiple_choice and choices) or rng.choice(choices) == row["response"]
        if multiple_choice and choices:
            prediction = parse_multi_choice_letter(row["response"], choices, row.get("index2ans") or {})
            if prediction is None:
                replay["parser_fallbacks"].append(sample_id)
                prediction = rng.choice(choices)
        if not drawn_ok or (sample_id in predictions and predictions[sample_id] != prediction):
            replay["replay_mismatches"].append(sample_id)
    return replay


def mmmu_corrected(
    key: dict[str, Row], predictions: dict[str, Any], responses: dict[Any, Row], where: str
) -> dict[str, Any]:
    """Every id of the answer key scored under `corrections.mmmu_letter`; not asked or missing is wrong."""
    from bunny.eval import corrections
    from bunny.eval.mmmu import eval_mmmu

    right: dict[str, list[bool]] = {}
    for sample_id, entry in key.items():
        row = responses.get(sample_id) if sample_id in predictions else None
        correct = False
        if row is not None and row["generated"] and entry.get("question_type") == "multiple-choice":
            letter = corrections.mmmu_letter(row["response"], row.get("all_choices") or [], row.get("index2ans") or {})
            correct = letter is not None and eval_mmmu.eval_multi_choice(entry["ground_truth"], letter)
        elif row is not None and row["generated"]:
            correct = eval_mmmu.is_correct(sample_id, row["response"], entry, where)
        right.setdefault(eval_mmmu.subject_of(sample_id), []).append(correct)
    results = {
        subject: (sum(right[subject]) / len(right[subject]), len(right[subject]))
        for subject in eval_mmmu.SUBJECTS if subject in right
    }
    metrics = eval_mmmu.summarize(results)
    return {"score": percent(metrics["Overall"]["acc"]), "metrics": metrics, "changes": corrections.CHANGES["mmmu"]}


def score_mmmu(run: Run) -> Scored:
    from bunny.eval.mmmu import eval_mmmu
    from bunny.eval.mmmu.data import ANSWER_FILE

    split = run.split or "validation"
    prediction_file = require_file(run.answers, "the MMMU prediction file")
    predictions = eval_mmmu.read_json_object(prediction_file, "the prediction dict")
    warnings: list[str] = []
    responses = read_responses(run.answers, warnings)
    replay = mmmu_replay(responses, predictions) if responses is not None else None
    fallbacks = len(set(replay["not_asked"]) | set(replay["parser_fallbacks"])) if replay else None
    extra = {name: len(ids) for name, ids in replay.items()} if replay else {}
    score, metrics, printed, corrected, upload = None, {}, "", None, None
    if split == "validation":
        key_path = run.data(ANSWER_FILE, "MMMU's validation answer key")
        key = eval_mmmu.read_json_object(key_path, "the answer key")
        metrics, printed, scorer_warnings = captured(eval_mmmu.evaluate, predictions, key, key_path)
        warnings += scorer_warnings
        score = percent(metrics["Overall"]["acc"])
        corrected = mmmu_corrected(key, predictions, responses, key_path) if responses is not None else None
        ids = list(key)
    else:
        ids = list(responses) if responses is not None else list(predictions)
        if split == "test":
            upload = {"file": run.answers, "to": UPLOAD_SERVERS["mmmu"]}
    questions = [{"question_id": sample_id} for sample_id in ids]
    matched = match_answers(questions, [{"question_id": sample_id} for sample_id in predictions])
    counts, missing = tally(questions, matched, fallbacks, **extra)
    name = "MMMU validation overall accuracy (%)" if split == "validation" else f"MMMU {split} (no local answer key)"
    return Scored(score, name, jsonable(metrics), printed, counts, missing, corrected, upload, warnings)


class CountingRandom(random.Random):
    """A `random.Random` that counts its `choice` calls (the CMMMU scorer's random picks), same draws."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.picks = 0

    def choice(self, seq: Sequence[Any]) -> Any:
        self.picks += 1
        return super().choice(seq)


def cmmmu_replay(data_path: str, output_path: str) -> dict[int, tuple[bool, bool]]:
    """{id: (legacy correct, legacy drew at random)}, replaying `eval_script.evaluate` in its order with
    its `random.Random(42)`."""
    from bunny.eval.cmmmu import eval_script

    data = eval_script.by_id(read_jsonl(data_path, ("id",)), data_path)
    rows = read_jsonl(output_path)
    mode = eval_script.output_mode(rows, output_path)
    outputs = eval_script.by_id([r for r in rows if eval_script.integer_id(r, output_path) in data], output_path)
    rng = CountingRandom(42)
    replay = {}
    for category in eval_script.CATEGORIES:
        for output, row in eval_script.category_pairs(data, outputs, category, output_path):
            picks = rng.picks
            if mode == "response":
                correct = eval_script.response_correct(output, row, rng)
            else:
                correct = eval_script.answer_correct(output, row)
            replay[eval_script.integer_id(row, data_path)] = (correct, rng.picks > picks)
    return replay


def cmmmu_corrected(data: Sequence[Row], outputs: dict[int, Row], responses: dict[int, Row]) -> dict[str, Any]:
    """Every question of the data file under `corrections.cmmmu_correct`; not asked or missing is wrong."""
    from bunny.eval import corrections
    from bunny.eval.cmmmu import eval_script

    results: dict[str, dict[str, Any]] = {}
    for category, name in eval_script.CATEGORIES.items():
        rows = [row for row in data if row.get("category") == category]
        correct = 0
        for row in rows:
            output, raw = outputs.get(int(row["id"])), responses.get(int(row["id"]))
            if output is not None and raw is not None and raw["generated"] and isinstance(output.get("response"), str):
                correct += corrections.cmmmu_correct(output["response"], row)
        results[name] = {"correct_num": correct, "entries_num": len(rows), "acc": correct / len(rows) if rows else 0}
    correct = sum(counts["correct_num"] for counts in results.values())
    entries = sum(counts["entries_num"] for counts in results.values())
    results["Overall"] = {"correct_num": correct, "entries_num": entries, "acc": correct / entries if entries else 0}
    return {"score": percent(results["Overall"]["acc"]), "metrics": results, "changes": corrections.CHANGES["cmmmu"]}


def cmmmu_data_for_scorer(run: Run, data_path: str, data: Sequence[Row], answered: set[int]) -> str:
    """The data file itself when every question has an answer, else a copy of the answered rows only."""
    if all(int(row["id"]) in answered for row in data):
        return data_path
    path = run.out("cmmmu-data-answered.jsonl")
    write_jsonl(path, [row for row in data if int(row["id"]) in answered])
    return path


def score_cmmmu(run: Run) -> Scored:
    from bunny.eval.cmmmu import eval_script
    from bunny.eval.cmmmu.data import ANSWER_FILE

    split = run.split or "val"
    answer_file = require_file(run.answers, "the CMMMU answer file")
    outputs = {int(row["id"]): row for row in read_jsonl(answer_file, ("id", "type"))}
    warnings: list[str] = []
    raw = read_responses(run.answers, warnings)
    responses = {int(key): row for key, row in raw.items()} if raw is not None else None
    not_asked = {key for key, row in responses.items() if not row["generated"]} if responses is not None else set()
    score, metrics, printed, corrected, picks = None, {}, "", None, set()
    if split == "val":
        data_path = run.data(ANSWER_FILE, "CMMMU's val questions with answers")
        data = read_jsonl(data_path, ("id", "type", "answer", "category"))
        scored_data = cmmmu_data_for_scorer(run, data_path, data, set(outputs))
        metrics, printed, scorer_warnings = captured(eval_script.evaluate, scored_data, run.answers)
        warnings += scorer_warnings
        picks = {key for key, (_, drew) in cmmmu_replay(scored_data, run.answers).items() if drew}
        score = percent(metrics["Overall"]["acc"])
        with_responses = responses is not None and all("response" in row for row in outputs.values())
        corrected = cmmmu_corrected(data, outputs, responses) if with_responses else None
        ids = [int(row["id"]) for row in data]
    else:
        ids = list(responses) if responses is not None else list(outputs)
    questions = [{"question_id": key} for key in ids]
    matched = match_answers(questions, [{"question_id": key} for key in outputs])
    counts, missing = tally(
        questions, matched, len(not_asked | picks) if responses is not None else None,
        not_asked=len(not_asked) if responses is not None else None, scorer_random_picks=len(picks),
    )
    name = "CMMMU val overall accuracy (%)" if split == "val" else f"CMMMU {split} (no local answers)"
    return Scored(score, name, jsonable(metrics), printed, counts, missing, corrected, None, warnings)


# --- the entry point -------------------------------------------------------------------------------------

SCORERS: dict[str, Callable[[Run], Scored]] = {
    "mme": score_mme,
    "mmbench": score_mmbench,
    "seedbench": score_seedbench,
    "mmmu": score_mmmu,
    "cmmmu": score_cmmmu,
    "vqav2": score_vqav2,
    "gqa": score_gqa,
    "scienceqa": score_scienceqa,
    "pope": score_pope,
    "mmvet": score_mmvet,
    "textvqa": score_textvqa,
    "vizwiz": score_vizwiz,
    "shapes": score_shapes,
}


def score(benchmark: str, data_dir: str, answers: str, run_dir: str, split: str | None = None) -> dict[str, Any]:
    """Score `answers` for `benchmark` (see the module docstring for the dict returned); files go to
    `run_dir`. A missing official or question file is a MissingDataError naming it and where it comes
    from; malformed files are ValueErrors naming them."""
    if benchmark not in SCORERS:
        raise ValueError(f"no scorer for benchmark {benchmark!r}; choose one of {', '.join(SCORERS)}")
    os.makedirs(run_dir, exist_ok=True)
    scored = SCORERS[benchmark](Run(benchmark, data_dir, answers, run_dir, split))
    return {
        "benchmark": benchmark,
        "score": scored.score,
        "score_name": scored.score_name,
        "metrics": scored.metrics,
        "corrected": jsonable(scored.corrected),
        "counts": scored.counts,
        "missing_rows": jsonable(scored.missing_rows),
        "upload": scored.upload,
        "printed": scored.printed,
        "warnings": scored.warnings,
        "files": scored.files + ([scored.upload["file"]] if scored.upload else []),
    }
