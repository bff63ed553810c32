"""The scorers of `bunny.eval.scoring` for the benchmarks scored here from an answer file (MME, GQA,
POPE, TextVQA, SEED, shapes, ScienceQA, MMBench) and for the server-scored ones (VQAv2, VizWiz, MM-Vet)."""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

from bunny.eval.common import MissingDataError, read_json, read_jsonl
from bunny.eval.prepare import SOURCES
from bunny.eval.scoring import (
    UPLOAD_SERVERS,
    GQA_TIER,
    Row,
    Run,
    Scored,
    Matched,
    jsonable,
    captured,
    read_answers,
    match_answers,
    tally,
    completed,
    answers_for_scorer,
    write_json,
    percent,
)
from bunny.util.utils import atomic_write


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
