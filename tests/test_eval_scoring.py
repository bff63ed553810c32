"""`bunny.eval.scoring.score`, the scoring step of `python -m bunny.eval run`: for each benchmark, small
official-format files, a hand-written answer file, the headline score worked out by hand, the legacy
metrics and printout equal to what the scorer module's own `main` gives on the same files, corrected
scores on the corner cases, counts, missing rows and upload files. No model."""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
from pathlib import Path

import pytest

from benchmark_files import MAKERS
from bunny.eval import corrections, scoring, scoring_local
from bunny.eval.common import MissingDataError
from bunny.eval.prepare import DEFAULT_DATA_DIRS, prepare

SHORT = "\nAnswer the question using a single word or phrase."


def data_dir(tmp_path: Path, benchmark: str) -> Path:
    """The benchmark's official files (tests/benchmark_files.py) and its prepared question file."""
    MAKERS[benchmark](tmp_path / "eval")
    folder = tmp_path / DEFAULT_DATA_DIRS[benchmark]
    prepare(benchmark, str(folder))
    return folder


def questions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_answers(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def answer(question: dict, text: str, **extra) -> dict:
    return {"question_id": question["question_id"], "prompt": question["text"], "text": text, "answer_id": "x",
            "model_id": "m", "metadata": {}, **extra}


def run_main(main, argv) -> tuple[object, str]:
    """(what a scorer module's `main` returns, what it prints)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = main(argv)
    return result, out.getvalue()


def plain(value):
    return json.loads(json.dumps(value))


def check_report_shape(report: dict, benchmark: str) -> None:
    assert list(report) == ["benchmark", "score", "score_name", "metrics", "corrected", "counts", "missing_rows",
                            "upload", "printed", "warnings", "files"]
    assert report["benchmark"] == benchmark
    assert json.loads(json.dumps(report)) == report  # plain JSON, ready for report.json


# --- row matching --------------------------------------------------------------------------------------

def test_answers_match_rows_by_id_and_prompt_so_a_repeated_id_leaves_the_right_row_missing():
    rows = [{"question_id": "x/1.png", "text": "first"}, {"question_id": "x/1.png", "text": "second"},
            {"question_id": 7, "text": "third"}]
    given = [{"question_id": "x/1.png", "prompt": "second", "text": "b"}, {"question_id": "7", "prompt": "?", "text": "c"},
             {"question_id": "nope", "prompt": "", "text": "d"}]
    matched = scoring.match_answers(rows, given, by_prompt=True)
    assert matched.rows == [None, given[0], given[1]]  # "7" (text) matches 7; the repeated id by prompt
    assert matched.unmatched == [given[2]]
    counts, missing = scoring.tally(rows, matched)
    assert counts == {"questions": 3, "answered": 2, "missing": 1, "random_fallbacks": 0, "unmatched_answers": 1}
    assert missing == ["x/1.png"]
    # Without prompts, answers to one id fill its rows in order.
    assert scoring.match_answers(rows, given).rows == [given[0], None, given[1]]


def test_unknown_benchmark_and_missing_official_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="no scorer for benchmark 'mmx'.*mme"):
        scoring.score("mmx", str(tmp_path), str(tmp_path / "a.jsonl"), str(tmp_path / "run"))
    folder = data_dir(tmp_path, "pope")
    shutil.rmtree(folder / "coco")
    answers = write_answers(tmp_path / "a.jsonl", [])
    with pytest.raises(MissingDataError, match=r"coco.*POPE.*github.com/AoiDragon/POPE"):
        scoring.score("pope", str(folder), answers, str(tmp_path / "run"))
    (folder / "bunny_pope_test.jsonl").unlink()
    with pytest.raises(MissingDataError, match=r"bunny_pope_test.jsonl.*python -m bunny.eval.prepare pope"):
        scoring.score("pope", str(folder), answers, str(tmp_path / "run"))


# --- MME -------------------------------------------------------------------------------------------------

def mme_answers(rows: list[dict]) -> list[dict]:
    """Right everywhere (first question Yes, second No) except existence's second question."""
    out = []
    for number, row in enumerate(rows):
        wrong = row["category"] == "existence" and number % 2 == 1
        out.append(answer(row, "Yes" if number % 2 == 0 or wrong else "No"))
    return out


def test_mme_scores_like_the_converter_and_calculator_of_the_original_layout(tmp_path):
    from bunny.eval.mme import calculation_mme, convert_answer_to_mme

    folder = data_dir(tmp_path, "mme")
    rows = questions(folder / "bunny_mme.jsonl")
    answers = write_answers(folder / "answers" / "m.jsonl", mme_answers(rows))
    report = scoring.score("mme", str(folder), answers, str(tmp_path / "run"))
    check_report_shape(report, "mme")
    # existence: acc 1/2, acc+ 0 -> 50; the other nine perception tasks 200 each.
    assert report["score"] == 9 * 200 + 50
    assert report["metrics"]["Cognition"]["total"] == 4 * 200
    # The original's way: convert inside the MME folder, then calculate.
    convert_answer_to_mme.main(["--experiment", "m", "--data-dir", str(folder)])
    legacy, printed = run_main(calculation_mme.main, ["--results_dir", str(folder / "answers_upload" / "m")])
    assert report["metrics"] == plain(legacy)
    assert report["printed"] == printed and "total score: 1850.0" in printed
    assert report["corrected"] is None and report["upload"] is None
    assert report["counts"] == {"questions": 28, "answered": 28, "missing": 0, "random_fallbacks": 0, "unmatched_answers": 0}


def test_mme_missing_answer_is_scored_wrong_and_its_row_found_by_prompt(tmp_path):
    folder = data_dir(tmp_path, "mme")
    rows = questions(folder / "bunny_mme.jsonl")
    given = [a for a, row in zip(mme_answers(rows), rows) if not (row["category"] == "count" and "count" in row["text"])]
    report = scoring.score("mme", str(folder), write_answers(tmp_path / "a.jsonl", given), str(tmp_path / "run"))
    # count: its first question unanswered (wrong), its second still paired with its own answer -> 50.
    assert report["metrics"]["Perception"]["tasks"]["count"]["score"] == 50
    assert report["score"] == 8 * 200 + 50 + 50
    assert report["counts"]["missing"] == 1 and report["missing_rows"] == ["count/1.png"]
    # In question order: the blank answer on the first question's line.
    assert (tmp_path / "run" / "mme_results" / "count.txt").read_text().splitlines() == [
        "1.txt\tIs this a count picture? Please answer yes or no.\tYes\t",
        "1.txt\tIs it blue? Please answer yes or no.\tNo\tNo",
    ]


# --- POPE ------------------------------------------------------------------------------------------------

POPE_ANSWERS = {  # (category, question about the dog?) -> answer; labels: dog no, car yes
    ("adversarial", True): "NO", ("adversarial", False): "Yes",
    ("popular", True): "Not really.", ("popular", False): "Yes, there is no doubt.",
    ("random", True): "No",  # random's car question is left unanswered
}


def test_pope_legacy_case_sensitive_rule_and_the_corrected_one(tmp_path):
    from bunny.eval.pope import eval_pope

    folder = data_dir(tmp_path, "pope")
    rows = questions(folder / "bunny_pope_test.jsonl")
    given = [answer(row, POPE_ANSWERS[(row["category"], "dog" in row["text"])]) for row in rows
             if (row["category"], "dog" in row["text"]) in POPE_ANSWERS]
    answers = write_answers(tmp_path / "a.jsonl", given)
    report = scoring.score("pope", str(folder), answers, str(tmp_path / "run"))
    check_report_shape(report, "pope")
    # Legacy: adversarial "NO" is yes (FP) + TP -> F1 2/3; popular FP + FN -> 0; random one TN -> 0.
    assert report["score"] == pytest.approx(100 * (2 / 3) / 3)
    legacy, printed = run_main(eval_pope.main, [
        "--annotation-dir", str(folder / "coco"), "--question-file", str(folder / "bunny_pope_test.jsonl"),
        "--result-file", answers,
    ])
    assert report["metrics"] == plain(legacy) and report["printed"] == printed
    # Corrected: adversarial TN + TP, popular TN + TP -> 1 and 1; random TN + the missing yes as FN -> 0.
    corrected = report["corrected"]
    assert corrected["score"] == pytest.approx(100 * 2 / 3)
    assert corrected["metrics"]["categories"]["random"]["FN"] == 1
    assert "case-insensitively" in corrected["changes"]
    assert report["counts"]["missing"] == 1 and report["missing_rows"] == [10000002]


@pytest.mark.parametrize("text, label", [
    ("NO", "no"), ("Not really.", "no"), ("no.", "no"), ("Yes, there is no doubt.", "yes"), ("YES", "yes"),
    ("There is no dog.", "no"), ("There is a dog. No cat.", "yes"), ("nothing", "yes"), ("", "yes"),
])
def test_corrected_pope_label(text, label):
    assert corrections.pope_label(text) == label


# --- ScienceQA -------------------------------------------------------------------------------------------

def make_scienceqa(folder: Path) -> None:
    """Three image problems (answers A, B, A) and one text problem (answer B)."""
    problem = {"question": "Which?", "choices": ["x", "y"], "hint": "", "split": "test", "lecture": "", "solution": ""}
    problems = {
        "1": dict(problem, answer=0, image="image.png"), "2": dict(problem, answer=1, image="image.png"),
        "3": dict(problem, answer=0, image="image.png"), "4": dict(problem, answer=1, image=None),
    }
    folder.mkdir(parents=True)
    (folder / "problems.json").write_text(json.dumps(problems))
    (folder / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3", "4"]}))
    prepare("scienceqa", str(folder))


def test_scienceqa_legacy_image_accuracy_leaves_missing_out_and_the_corrected_one_counts_them(tmp_path):
    from bunny.eval.scienceqa import eval_science_qa

    folder = tmp_path / "scienceqa"
    make_scienceqa(folder)
    given = [
        {"question_id": "1", "prompt": "<image>\nWhich?", "text": "A"},  # right
        {"question_id": "2", "prompt": "<image>\nWhich?", "text": "The answer is A."},  # wrong
        {"question_id": "4", "prompt": "Which?", "text": "B"},  # right; image problem 3 unanswered
    ]
    answers = write_answers(tmp_path / "a.jsonl", given)
    report = scoring.score("scienceqa", str(folder), answers, str(tmp_path / "run"))
    check_report_shape(report, "scienceqa")
    assert report["score"] == 50.0  # 1 of the 2 answered image problems
    legacy, printed = run_main(eval_science_qa.main, [
        "--base-dir", str(folder), "--result-file", answers, "--output-file", str(tmp_path / "o.json"),
        "--output-result", str(tmp_path / "r.json"),
    ])
    assert report["metrics"] == {k: v for k, v in legacy.items() if k not in ("results", "outputs")}
    assert report["printed"] == printed == "Total: 4, Correct: 2, Accuracy: 50.00%, IMG-Accuracy: 50.00%\n"
    assert report["corrected"]["score"] == pytest.approx(100 / 3)
    assert report["corrected"]["metrics"]["image_count"] == 3
    assert report["counts"]["missing"] == 1 and report["missing_rows"] == ["3"]
    assert json.loads((tmp_path / "run" / "scienceqa_result.json").read_text())["results"]["2"] == 0


# --- TextVQA ---------------------------------------------------------------------------------------------

def make_textvqa(folder: Path) -> None:
    """Two questions about one image (so one question id twice)."""
    data = [
        {"image_id": "abc", "question": "What does the sign say?", "question_id": 1, "answers": ["stop"] * 6 + ["halt"] * 4,
         "ocr_tokens": ["stop"]},
        {"image_id": "abc", "question": "What colour is it?", "question_id": 2, "answers": ["red"] * 10, "ocr_tokens": []},
    ]
    folder.mkdir(parents=True)
    (folder / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
    prepare("textvqa", str(folder))


def test_textvqa_legacy_period_cap_and_the_corrected_score(tmp_path):
    from bunny.eval.textvqa import eval_textvqa

    folder = tmp_path / "textvqa"
    make_textvqa(folder)
    rows = questions(folder / "bunny_textvqa_val_v051_ocr.jsonl")
    # 40 periods: the original removes 32, so "stop" + 8 periods matches nothing; corrected removes all.
    answers = write_answers(tmp_path / "a.jsonl", [answer(rows[0], "stop" + "." * 40), answer(rows[1], "Red")])
    report = scoring.score("textvqa", str(folder), answers, str(tmp_path / "run"))
    check_report_shape(report, "textvqa")
    assert report["score"] == 50.0 and report["corrected"]["score"] == 100.0
    legacy, printed = run_main(eval_textvqa.main, ["--annotation-file", str(folder / "TextVQA_0.5.1_val.json"),
                                                   "--result-file", answers])
    assert report["metrics"] == legacy[answers] and report["printed"] == printed


def test_textvqa_missing_answer_counts_in_the_corrected_denominator(tmp_path):
    folder = tmp_path / "textvqa"
    make_textvqa(folder)
    rows = questions(folder / "bunny_textvqa_val_v051_ocr.jsonl")
    answers = write_answers(tmp_path / "a.jsonl", [answer(rows[1], "Red")])
    report = scoring.score("textvqa", str(folder), answers, str(tmp_path / "run"))
    assert report["score"] == 100.0 and report["metrics"]["samples"] == 1
    assert report["corrected"]["score"] == 50.0
    assert report["counts"]["missing"] == 1 and report["missing_rows"] == ["abc"]


# --- GQA, SEED, shapes -----------------------------------------------------------------------------------

def test_gqa_scores_like_the_converter_and_official_metrics_and_fills_missing_as_wrong(tmp_path):
    from bunny.eval.gqa import convert_gqa_for_eval, eval_gqa

    folder = data_dir(tmp_path, "gqa")
    rows = questions(folder / "bunny_gqa_testdev_balanced.jsonl")
    answers = write_answers(tmp_path / "a.jsonl", [answer(rows[0], "No."), answer(rows[1], "Red")])
    report = scoring.score("gqa", str(folder), answers, str(tmp_path / "run"))
    check_report_shape(report, "gqa")
    assert report["score"] == 100.0
    convert_gqa_for_eval.main(["--src", answers, "--dst", str(tmp_path / "p.json")])
    legacy, printed = run_main(eval_gqa.main, [
        "--tier", "testdev_balanced", "--questions", str(folder / "testdev_balanced_questions.json"),
        "--predictions", str(tmp_path / "p.json"), "--choices", str(folder / "testdev_balanced_choices.json"),
    ])
    assert report["metrics"] == plain(legacy) and report["printed"] == printed
    # The original fails without every prediction; here the missing one is wrong.
    answers = write_answers(tmp_path / "b.jsonl", [answer(rows[0], "No.")])
    report = scoring.score("gqa", str(folder), answers, str(tmp_path / "run2"))
    assert report["score"] == 50.0 and report["missing_rows"] == ["q2"]


def test_seedbench_image_accuracy_and_upload_file(tmp_path):
    from bunny.eval.seed_bench import convert_seed_for_submission as seed

    folder = data_dir(tmp_path, "seedbench")
    rows = questions(folder / "bunny-seed-bench.jsonl")
    answers = write_answers(tmp_path / "a.jsonl", [answer(rows[0], "A")])
    report = scoring.score("seedbench", str(folder), answers, str(tmp_path / "run"))
    check_report_shape(report, "seedbench")
    assert report["score"] == 100.0
    legacy, printed = run_main(seed.main, ["--annotation-file", str(folder / "SEED-Bench.json"), "--result-file", answers,
                                           "--result-upload-file", str(tmp_path / "u.jsonl")])
    assert report["metrics"] == plain(legacy) and report["printed"] == printed
    assert (tmp_path / "run" / "seed_bench_upload.jsonl").read_text() == (tmp_path / "u.jsonl").read_text()


def test_shapes_accuracy_and_a_missing_answer(tmp_path):
    folder = tmp_path / "shapes"
    rows = [{"question_id": n, "image": f"{n}.png", "text": text, "category": kind}
            for n, (text, kind) in enumerate([("How many shapes?", "count"), ("What colour?", "colour"), ("Which shape?", "shape")])]
    write_answers(folder / "questions.jsonl", rows)
    write_answers(folder / "answer_key.jsonl", [{"question_id": n, "answer": a, "category": r["category"]}
                                                for n, (a, r) in enumerate(zip(["2", "red", "square"], rows))])
    answers = write_answers(tmp_path / "a.jsonl", [answer(rows[0], "Two."), answer(rows[1], "Red"), answer(rows[2], "circle")])
    report = scoring.score("shapes", str(folder), answers, str(tmp_path / "run"))
    check_report_shape(report, "shapes")
    assert report["score"] == pytest.approx(200 / 3)
    assert report["metrics"]["accuracy_by_type"] == {"colour": 1.0, "count": 1.0, "shape": 0.0}
    assert report["printed"].startswith("accuracy: 66.67% of 3 questions")
    answers = write_answers(tmp_path / "b.jsonl", [answer(rows[0], "Two."), answer(rows[1], "Red")])
    report = scoring.score("shapes", str(folder), answers, str(tmp_path / "run2"))
    assert report["score"] == pytest.approx(200 / 3) and report["missing_rows"] == [2]


# --- MMBench, VQAv2, VizWiz, MM-Vet ----------------------------------------------------------------------

@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("(B)", "B"), ("B. green", "B"), ("The answer is B", "B"), ("green", "B"), ("答案是B", "B"),
    ("A or B", None), ("DNA", None), ("", None),
])
def test_mmbench_letter(text, letter):
    assert scoring_local.mmbench_letter(text, {"A": "red", "B": "green"}) == letter


def test_mmbench_dev_accuracy_and_the_upload_xlsx(tmp_path):
    import pandas as pd

    folder = data_dir(tmp_path, "mmbench")
    given = [{"question_id": 3, "round_id": 0, "prompt": "q", "text": "B"},
             {"question_id": 3, "round_id": 1, "prompt": "q", "text": "A"}]  # a rotated round: not scored
    report = scoring.score("mmbench", str(folder), write_answers(tmp_path / "a.jsonl", given), str(tmp_path / "run"))
    check_report_shape(report, "mmbench")
    assert report["score"] == 100.0 and report["metrics"]["categories"] == {"colour": 100.0}
    upload = tmp_path / "run" / "MMBench_DEV_EN_legacy.xlsx"
    assert report["upload"] == {"file": str(upload), "to": scoring.UPLOAD_SERVERS["mmbench"]}
    assert pd.read_excel(upload)["prediction"].tolist() == ["B"]
    report = scoring.score("mmbench", str(folder), write_answers(tmp_path / "b.jsonl", []), str(tmp_path / "run2"))
    assert report["score"] == 0.0 and report["missing_rows"] == ["3"] and report["counts"]["missing"] == 1
    # A test split: no answers in the TSV, so only the upload file.
    table = pd.read_table(folder / "MMBench_DEV_EN_legacy.tsv")
    table.drop(columns=["answer"]).to_csv(folder / "MMBench_TEST_EN_legacy.tsv", sep="\t", index=False)
    report = scoring.score("mmbench", str(folder), write_answers(tmp_path / "c.jsonl", given), str(tmp_path / "run3"),
                           split="MMBench_TEST_EN_legacy")
    assert report["score"] is None and "accuracy" not in report["metrics"]
    assert pd.read_excel(report["upload"]["file"])["prediction"].tolist() == ["B"]


def test_vqav2_upload_covers_test2015_and_counts_missing(tmp_path):
    folder = data_dir(tmp_path, "vqav2")
    rows = questions(folder / "bunny_vqav2_mscoco_test-dev2015.jsonl")
    report = scoring.score("vqav2", str(folder), write_answers(tmp_path / "a.jsonl", [answer(rows[0], "Two.")]),
                           str(tmp_path / "run"))
    check_report_shape(report, "vqav2")
    assert report["score"] is None and report["upload"]["to"].startswith("https://eval.ai/")
    assert json.loads(Path(report["upload"]["file"]).read_text()) == [
        {"question_id": 10, "answer": "2"}, {"question_id": 11, "answer": ""}]
    assert report["printed"] == "total results: 1, total split: 2, error_line: 0\n"
    assert report["counts"]["missing"] == 0
    report = scoring.score("vqav2", str(folder), write_answers(tmp_path / "b.jsonl", []), str(tmp_path / "run2"))
    assert report["counts"]["missing"] == 1 and report["missing_rows"] == [10]


def test_vizwiz_upload_with_and_without_every_answer(tmp_path):
    folder = data_dir(tmp_path, "vizwiz")
    rows = questions(folder / "bunny_test.jsonl")
    report = scoring.score("vizwiz", str(folder), write_answers(tmp_path / "a.jsonl", [answer(rows[0], "Unanswerable")]),
                           str(tmp_path / "run"))
    check_report_shape(report, "vizwiz")
    assert json.loads(Path(report["upload"]["file"]).read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"}]
    report = scoring.score("vizwiz", str(folder), write_answers(tmp_path / "b.jsonl", []), str(tmp_path / "run2"))
    assert report["counts"]["missing"] == 1 and report["missing_rows"] == [0]
    assert json.loads(Path(report["upload"]["file"]).read_text())[0]["answer"] == ""


def test_mmvet_writes_the_file_for_the_online_evaluator(tmp_path):
    folder = data_dir(tmp_path, "mmvet")
    rows = questions(folder / "bunny-mm-vet.jsonl")
    report = scoring.score("mmvet", str(folder), write_answers(tmp_path / "a.jsonl", [answer(rows[0], "A red card.")]),
                           str(tmp_path / "run"))
    check_report_shape(report, "mmvet")
    assert report["score"] is None
    assert report["upload"] == {"file": str(tmp_path / "run" / "mmvet_results.json"),
                                "to": "https://huggingface.co/spaces/whyu/MM-Vet_Evaluator"}
    assert json.loads(Path(report["upload"]["file"]).read_text()) == {"v1_0": "A red card."}


# --- MMMU ------------------------------------------------------------------------------------------------

def mmmu_run(tmp_path: Path, special: dict[str, tuple[str, bool]]) -> tuple[Path, str, dict]:
    """The MMMU folder, a prediction file and its responses made as the generator makes them (Python's
    `random` seeded 42, draws in question order). `special`: id -> (response, generated); every other
    multiple-choice question answers "B" (right), the open one "2" (right)."""
    from bunny.eval.mmmu.data import SUBJECTS
    from bunny.eval.mmmu.eval_mmmu import parse_multi_choice_response

    folder = data_dir(tmp_path, "mmmu")
    ids = [(f"validation_{subject}_1", "multiple-choice") for subject in SUBJECTS]
    ids.insert(1, ("validation_Accounting_2", "open"))
    random.seed(42)
    predictions, responses = {}, []
    for sample_id, kind in ids:
        response, generated = special.get(sample_id, ("B" if kind == "multiple-choice" else "2", True))
        if kind == "multiple-choice":
            if not generated:
                response = random.choice(["A", "B"])
            predictions[sample_id] = parse_multi_choice_response(response, ["A", "B"], {"A": "red", "B": "green"})
        else:
            predictions[sample_id] = response
        responses.append({"id": sample_id, "question_type": kind, "response": response, "generated": generated,
                          "all_choices": ["A", "B"] if kind == "multiple-choice" else [],
                          "index2ans": {"A": "red", "B": "green"} if kind == "multiple-choice" else {}})
    answers = tmp_path / "answers" / "m.json"
    answers.parent.mkdir()
    answers.write_text(json.dumps(predictions, indent=4))
    write_answers(answers.with_suffix(".responses.jsonl"), responses)
    return folder, str(answers), predictions


MMMU_SPECIAL = {
    "validation_Accounting_1": ("B,.", True),  # legacy strips "," then "." -> "B,": no letter, random
    "validation_Art_1": ("", False),  # not asked (several pictures): a random letter
    "validation_Biology_1": ("I cannot tell", True),  # no letter: random
}


def test_mmmu_legacy_scores_random_fallbacks_and_the_corrected_score(tmp_path):
    from bunny.eval.mmmu import eval_mmmu

    folder, answers, predictions = mmmu_run(tmp_path, MMMU_SPECIAL)
    report = scoring.score("mmmu", str(folder), answers, str(tmp_path / "run"), split="validation")
    check_report_shape(report, "mmmu")
    legacy, printed = run_main(eval_mmmu.main, ["--output-path", answers, "--answer_path", str(folder / "answer_dict_val.json")])
    assert report["metrics"] == legacy and report["printed"] == printed
    assert report["score"] == 100 * legacy["Overall"]["acc"]
    right = 28 + sum(predictions[i] == "B" for i in MMMU_SPECIAL)  # the random picks may be right
    assert legacy["Overall"] == {"num": 31, "acc": round(right / 31, 3)}
    assert report["counts"] == {"questions": 31, "answered": 31, "missing": 0, "random_fallbacks": 3,
                                "unmatched_answers": 0, "not_asked": 1, "parser_fallbacks": 2, "replay_mismatches": 0}
    # Corrected: "B,." reads B; the question not asked and the unreadable one are wrong.
    assert report["corrected"]["metrics"]["Overall"] == {"num": 31, "acc": round(29 / 31, 3)}
    assert report["corrected"]["score"] == 100 * round(29 / 31, 3)
    assert report["upload"] is None


def test_mmmu_missing_prediction_replay_mismatch_and_test_split(tmp_path):
    folder, answers, predictions = mmmu_run(tmp_path, {})
    del predictions["validation_Music_1"]
    predictions["validation_Math_1"] = "A"  # not what the response "B" reads: another run's file
    Path(answers).write_text(json.dumps(predictions))
    report = scoring.score("mmmu", str(folder), answers, str(tmp_path / "run"))
    assert report["counts"]["missing"] == 1 and report["missing_rows"] == ["validation_Music_1"]
    assert report["counts"]["replay_mismatches"] == 1
    assert report["metrics"]["Overall"]["num"] == 30  # the original scores only what it has
    # Corrected parses the raw responses (Math's "B" is right) and counts the missing Music wrong.
    assert report["corrected"]["metrics"]["Overall"] == {"num": 31, "acc": round(30 / 31, 3)}
    test = scoring.score("mmmu", str(folder), answers, str(tmp_path / "run2"), split="test")
    assert test["score"] is None and test["corrected"] is None
    assert test["upload"] == {"file": answers, "to": "https://eval.ai/web/challenges/challenge-page/2179/overview"}


# --- CMMMU -----------------------------------------------------------------------------------------------

CMMMU_ROWS = [  # (id, category, type, answer, response, generated); response None: no answer line
    (1, "艺术与设计", "选择", "B", "DNA 说明答案是 B", True),  # legacy counts A, B, D: "ABD"; corrected: B
    (2, "艺术与设计", "判断", "错", "不正确", True),  # legacy: positive (contains 正确); corrected: negative
    (3, "商业", "判断", "对", "我不知道", True),  # tie: legacy picks at random; corrected wrong
    (4, "商业", "选择", "A", "A", False),  # not asked, a random letter: legacy right; corrected wrong
    (5, "科学", "填空", "2", "有2个", True),
    (6, "科学", "选择", "C", "(C)", True),
    (7, "科学", "选择", "D", "D", True),
]


def cmmmu_run(tmp_path: Path, rows=CMMMU_ROWS) -> tuple[Path, str]:
    folder = tmp_path / "cmmmu"
    data = [{"id": i, "type": kind, "question": "?", "answer": gold, "category": category,
             **({"option1": "红", "option2": "绿", "option3": "蓝", "option4": "黄"} if kind == "选择" else {})}
            for i, category, kind, gold, _, _ in CMMMU_ROWS]
    write_answers(folder / "cmmmu-data-val-answer.jsonl", data)
    answered = [(i, kind, response, generated) for i, _, kind, _, response, generated in rows if response is not None]
    answers = write_answers(tmp_path / "answers" / "m.jsonl",
                            [{"id": i, "type": kind, "response": response} for i, kind, response, _ in answered])
    write_answers(tmp_path / "answers" / "m.responses.jsonl",
                  [{"id": i, "type": kind, "response": response, "generated": g} for i, kind, response, g in answered])
    return folder, answers


def test_cmmmu_legacy_random_picks_counted_and_the_corrected_score(tmp_path):
    from bunny.eval.cmmmu import eval_script

    folder, answers = cmmmu_run(tmp_path)
    report = scoring.score("cmmmu", str(folder), answers, str(tmp_path / "run"), split="val")
    check_report_shape(report, "cmmmu")
    legacy, printed = run_main(eval_script.main, ["--output_path", answers, "--data_path", str(folder / "cmmmu-data-val-answer.jsonl")])
    assert report["metrics"] == legacy and report["printed"] == printed
    tie_right = random.Random(42).choice(["对", "错"]) == "对"  # the scorer's first random pick is id 3's
    assert legacy["Overall"]["correct_num"] == 4 + tie_right  # ids 4, 5, 6, 7 (+ 3)
    assert report["score"] == 100 * (4 + tie_right) / 7
    assert report["counts"] == {"questions": 7, "answered": 7, "missing": 0, "random_fallbacks": 2, "unmatched_answers": 0,
                                "not_asked": 1, "scorer_random_picks": 1}
    # Corrected: ids 1, 2, 5, 6, 7 right.
    assert report["corrected"]["metrics"]["Overall"] == {"correct_num": 5, "entries_num": 7, "acc": 5 / 7}
    assert report["corrected"]["metrics"]["Business"]["correct_num"] == 0


def test_cmmmu_missing_answer(tmp_path):
    rows = [row if row[0] != 7 else row[:4] + (None, True) for row in CMMMU_ROWS]
    folder, answers = cmmmu_run(tmp_path, rows)
    report = scoring.score("cmmmu", str(folder), answers, str(tmp_path / "run"))
    # The original requires every id; the legacy score covers the answered ones, the corrected all.
    assert report["metrics"]["Overall"]["entries_num"] == 6 and report["metrics"]["Science"]["entries_num"] == 2
    assert report["corrected"]["metrics"]["Overall"] == {"correct_num": 4, "entries_num": 7, "acc": 4 / 7}
    assert report["counts"]["missing"] == 1 and report["missing_rows"] == [7]


@pytest.mark.parametrize("response, letters", [
    ("DNA", None), ("答案是B", "B"), ("(A) 和 (C)", "AC"), ("B.", "B"), ("绿色", "B"), ("我不知道", None), ("A, B", "AB"),
])
def test_corrected_cmmmu_choice(response, letters):
    assert corrections.cmmmu_choice(response, {"A": "红", "B": "绿", "C": "蓝", "D": ""}) == letters


@pytest.mark.parametrize("response, verdict", [
    ("不正确", "错"), ("正确", "对"), ("这个说法是错误的", "错"), ("答案是对的", "对"), ("不知道", None),
])
def test_corrected_cmmmu_true_false(response, verdict):
    assert corrections.cmmmu_true_false(response) == verdict


def test_corrected_mmmu_letter_strips_edge_punctuation_as_a_set():
    from bunny.eval.mmmu.eval_mmmu import parse_multi_choice_letter

    assert parse_multi_choice_letter("B,.", ["A", "B"], {}) is None  # legacy: one mark after the other
    assert corrections.mmmu_letter("B,.", ["A", "B"], {}) == "B"
    assert corrections.mmmu_letter("I cannot tell", ["A", "B"], {}) is None


def test_mmmu_without_the_responses_file_says_so_and_gives_no_corrected_score(tmp_path):
    folder, answers, _ = mmmu_run(tmp_path, {})
    Path(answers).with_suffix(".responses.jsonl").unlink()
    report = scoring.score("mmmu", str(folder), answers, str(tmp_path / "run"))
    assert report["score"] == 100.0 and report["corrected"] is None
    assert report["counts"]["random_fallbacks"] is None
    assert any("m.responses.jsonl" in warning for warning in report["warnings"])
