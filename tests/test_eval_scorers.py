"""The MME, POPE, ScienceQA, SEED-Bench and MMBench converters and scorers on small files in the
official formats, with the expected numbers worked out by hand in the comments."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bunny.eval.mmbench import convert_mmbench_for_submission as mmbench
from bunny.eval.mme import calculation_mme, convert_answer_to_mme
from bunny.eval.pope import eval_pope
from bunny.eval.scienceqa import eval_science_qa
from bunny.eval.seed_bench import convert_seed_for_submission as seed
from bunny.eval.seed_bench import extract_video_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIX = "\nAnswer the question using a single word or phrase."


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def run_module(module, *args, cwd=None):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=120
    )


# ----------------------------------------------------------------------------------------------- MME


@pytest.mark.parametrize(
    "answer, label",
    [
        ("Yes", "yes"), ("no", "no"), ("YES.", "yes"), ("Yes, there is a dog.", "yes"),
        ("Not sure", "no"),  # "not " contains "no"
        ("None", "no"), ("eyes closed", "yes"),  # "eyes" contains "yes"
        ("The answer is yes", "other"),  # "the " has neither
        ("", "other"), ("n", "other"),
    ],
)
def test_mme_prediction_label_looks_at_the_first_four_characters(answer, label):
    assert calculation_mme.parse_pred_ans(answer) == label


@pytest.fixture
def mme_dir(tmp_path):
    """Two MME tasks in both layouts: `existence` keeps its txt files beside the images, `artwork`
    has images/ and questions_answers_YN/ (where one question has two spaces before "Please")."""
    release = tmp_path / "MME_Benchmark_release_version"
    (release / "existence").mkdir(parents=True)
    (release / "existence" / "000000006040.jpg").write_bytes(b"")
    (release / "existence" / "000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image? Please answer yes or no.\tNo\n"
    )
    (release / "artwork" / "images").mkdir(parents=True)
    (release / "artwork" / "questions_answers_YN").mkdir()
    (release / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork created by Dürer?  Please answer yes or no.\tYes\n"
        "Is this artwork created by Monet?  Please answer yes or no.\tNo\n",
        encoding="utf-8",
    )
    (release / "README.md").write_text("not a task folder")
    (tmp_path / "answers").mkdir()
    return tmp_path


def mme_answer(question_id, question, text):
    return {
        "question_id": question_id, "prompt": question + SUFFIX, "text": text, "answer_id": "x", "model_id": "m",
        "metadata": {},
    }


def test_mme_conversion_writes_one_line_per_answer_and_sanitises_tabs(mme_dir):
    write_jsonl(mme_dir / "answers" / "exp.jsonl", [
        mme_answer("existence/000000006040.jpg", "Is there a train in this image? Please answer yes or no.", "Yes"),
        # An answer with a tab and line breaks would split the line: they become spaces.
        mme_answer("existence/000000006040.jpg", "Is there a bed in this image? Please answer yes or no.", "No\tthere\r\nisn't"),
        # Without "Please answer yes or no." the suffix is appended, with two spaces as the ground truth has.
        mme_answer("artwork/images/10002.jpg", "Is this artwork created by Dürer?", "yes"),
        mme_answer("artwork/images/10002.jpg", "Is this artwork created by Monet?  Please answer yes or no.", "No"),
    ])
    result = convert_answer_to_mme.main(["--experiment", "exp", "--data-dir", str(mme_dir)])
    assert result["answers"] == {"existence": 2, "artwork": 2}
    upload = mme_dir / "answers_upload" / "exp"
    assert (upload / "existence.txt").read_text() == (
        "000000006040.txt\tIs there a train in this image? Please answer yes or no.\tYes\tYes\n"
        "000000006040.txt\tIs there a bed in this image? Please answer yes or no.\tNo\tNo there  isn't\n"
    )
    assert (upload / "artwork.txt").read_text(encoding="utf-8") == (
        "10002.txt\tIs this artwork created by Dürer?  Please answer yes or no.\tYes\tyes\n"
        "10002.txt\tIs this artwork created by Monet?  Please answer yes or no.\tNo\tNo\n"
    )


def test_mme_conversion_names_an_answer_missing_from_the_ground_truth(mme_dir, capsys):
    write_jsonl(mme_dir / "answers" / "exp.jsonl", [
        mme_answer("existence/000000006040.jpg", "Is there a cat in this image? Please answer yes or no.", "No"),
    ])
    with pytest.raises(SystemExit) as exit_info:
        convert_answer_to_mme.main(["--experiment", "exp", "--data-dir", str(mme_dir)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "existence/000000006040.jpg" in err and "Is there a cat in this image?" in err
    assert not (mme_dir / "answers_upload" / "exp" / "existence.txt").exists()


def mme_line(image, truth, answer):
    return f"{image}.png\tIs it? Please answer yes or no.\t{truth}\t{answer}\n"


def write_mme_results(directory, overrides):
    """Every task: one image with both questions right (score 100 * (1 + 1) = 200), unless overridden."""
    directory.mkdir(exist_ok=True)
    for tasks in calculation_mme.EVAL_TYPES.values():
        for task in tasks:
            text = overrides.get(task, mme_line("a", "Yes", "Yes") + mme_line("a", "No", "No"))
            (directory / f"{task}.txt").write_text(text, encoding="utf-8")


def test_mme_scores_and_printed_report(tmp_path, capsys):
    results = tmp_path / "results"
    write_mme_results(results, {
        # image a: both right; image b: "No" vs Yes wrong, "no, ..." right -> 3 of 4 right, 1 of 2 images
        "existence": mme_line("a", "Yes", "Yes, it is") + mme_line("a", "No", "NO") + mme_line("b", "Yes", "No")
        + mme_line("b", "No", "no, it is not"),
        # image a: both right; b: right + "other" (wrong); c: both wrong -> 3 of 6 right, 1 of 3 images
        "code_reasoning": mme_line("a", "Yes", "yes") + mme_line("a", "No", "No") + mme_line("b", "Yes", "Yes")
        + mme_line("b", "No", "Maybe") + mme_line("c", "Yes", "No") + mme_line("c", "No", "Yes"),
    })
    report = calculation_mme.main(["--results_dir", str(results)])
    existence = 3 / 4 * 100 + 1 / 2 * 100  # 125.0
    code_reasoning = 3 / 6 * 100 + 1 / 3 * 100
    perception = 0
    for score in [existence] + [200.0] * 9:
        perception += score
    cognition = 0
    for score in [200.0, 200.0, 200.0, code_reasoning]:
        cognition += score
    assert report["Perception"]["total"] == perception == 1925.0
    assert report["Cognition"]["total"] == cognition
    assert report["Perception"]["tasks"]["existence"]["acc_plus"] == 0.5
    assert report["Cognition"]["tasks"]["code_reasoning"]["other_num"] == 1
    # print's separators: "total score: X \n\n", "\t task  score: X", then print("\n").
    expected = "=========== Perception ===========\n" + f"total score: {perception} \n\n"
    expected += f"\t existence  score: {existence}\n"
    for task in calculation_mme.EVAL_TYPES["Perception"][1:]:
        expected += f"\t {task}  score: 200.0\n"
    expected += "\n\n=========== Cognition ===========\n" + f"total score: {cognition} \n\n"
    for task in calculation_mme.EVAL_TYPES["Cognition"][:3]:
        expected += f"\t {task}  score: 200.0\n"
    expected += f"\t code_reasoning  score: {code_reasoning}\n\n\n"
    assert capsys.readouterr().out == expected


def test_mme_lines_without_four_fields_are_reported_and_not_counted(tmp_path, capsys):
    results = tmp_path / "results"
    # Image b's two answers had tabs (5 fields): not counted, as in the original; image a remains,
    # with one right answer -> acc 1/2, acc_plus 0/1 -> 50.0.
    write_mme_results(results, {
        "color": mme_line("a", "Yes", "Yes") + mme_line("a", "No", "Yes") + mme_line("b", "Yes", "Yes\tsure")
        + mme_line("b", "No", "No\tway") + "\n",
    })
    report = calculation_mme.main(["--results_dir", str(results)])
    assert report["Perception"]["tasks"]["color"]["score"] == 1 / 2 * 100 + 0 / 1 * 100
    err = capsys.readouterr().err
    assert "color.txt" in err and "2 line(s)" in err and "lines 3, 4" in err


@pytest.mark.parametrize(
    "content, message",
    [
        (mme_line("a", "Yes", "Yes") + mme_line("a", "No", "No") + mme_line("b", "Yes", "Yes"), "odd number"),
        (mme_line("a", "Maybe", "Yes") + mme_line("a", "No", "No"), "neither yes nor no"),
        ("", "no result lines"),
    ],
)
def test_mme_bad_task_files_are_errors_naming_the_file(tmp_path, capsys, content, message):
    results = tmp_path / "results"
    write_mme_results(results, {"OCR": content})
    with pytest.raises(SystemExit) as exit_info:
        calculation_mme.main(["--results_dir", str(results)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "OCR.txt" in err and message in err


def test_mme_missing_task_file_is_an_error_naming_it(tmp_path, capsys):
    results = tmp_path / "results"
    write_mme_results(results, {})
    (results / "scene.txt").unlink()
    with pytest.raises(SystemExit):
        calculation_mme.main(["--results_dir", str(results)])
    captured = capsys.readouterr()
    assert "scene.txt" in captured.err and captured.out == ""


def test_mme_scripts_run_as_modules_from_the_mme_folder(mme_dir):
    write_jsonl(mme_dir / "answers" / "exp.jsonl", [
        mme_answer("existence/000000006040.jpg", "Is there a train in this image? Please answer yes or no.", "Yes"),
    ])
    done = run_module("bunny.eval.mme.convert_answer_to_mme", "--experiment", "exp", cwd=mme_dir)
    assert done.returncode == 0, done.stderr
    assert (mme_dir / "answers_upload" / "exp" / "existence.txt").read_text().endswith("\tYes\tYes\n")
    write_mme_results(mme_dir / "LaVIN", {})
    done = run_module("bunny.eval.mme.calculation_mme", cwd=mme_dir)  # default --results_dir ./LaVIN
    assert done.returncode == 0, done.stderr
    assert "total score: 2000.0 \n" in done.stdout and "total score: 800.0 \n" in done.stdout


# ---------------------------------------------------------------------------------------------- POPE


@pytest.mark.parametrize(
    "text, label",
    [
        ("Yes", "yes"), ("No", "no"), ("no", "no"), ("No, there is not.", "no"),
        ("Not really.", "yes"), ("NO", "yes"),  # case-sensitive words: only No, not, no
        ("There is no dog.", "no"), ("Yes. But no.", "yes"),  # only the first sentence counts
        ("yes, not sure", "no"), ("No\nthere", "yes"),  # split on spaces only
    ],
)
def test_pope_answer_label(text, label):
    assert eval_pope.answer_label(text) == label


@pytest.fixture
def pope_files(tmp_path):
    """Two categories; the question file offsets ids (random 10000001.., popular 20000001..) while
    the annotation files number from 1; the answers come in a shuffled order."""
    annotations = tmp_path / "coco"
    annotations.mkdir()
    random_labels = [("a.jpg", "dog", "yes"), ("a.jpg", "cat", "no"), ("b.jpg", "car", "yes"), ("b.jpg", "bus", "no")]
    popular_labels = [("c.jpg", "cup", "no"), ("d.jpg", "pen", "no")]  # no positives at all
    questions = []
    for category, labels, offset in (("random", random_labels, 10000000), ("popular", popular_labels, 20000000)):
        rows = []
        for number, (image, thing, label) in enumerate(labels, start=1):
            text = f"Is there a {thing} in the image?"
            rows.append({"question_id": number, "image": image, "text": text, "label": label})
            questions.append({"question_id": offset + number, "image": image, "text": text + SUFFIX, "category": category})
        write_jsonl(annotations / f"coco_pope_{category}.json", rows)
    write_jsonl(tmp_path / "questions.jsonl", questions)
    return tmp_path


def pope_answer(question_id, text):
    return {"question_id": question_id, "prompt": "...", "text": text, "answer_id": "x", "model_id": "m", "metadata": {}}


def test_pope_pairs_by_image_and_question_and_prints_the_original_report(pope_files, capsys):
    write_jsonl(pope_files / "answers.jsonl", [
        pope_answer(20000002, "No"),  # popular pen: no / no -> TN
        pope_answer(10000003, "Not really."),  # random car: yes / yes -> TP
        pope_answer(10000002, "NO"),  # random cat: yes / no -> FP
        pope_answer(10000001, "No, there is not."),  # random dog: no / yes -> FN
        pope_answer(10000004, "There is no bus."),  # random bus: no / no -> TN
        pope_answer(20000001, "no"),  # popular cup: no / no -> TN
    ])
    result = eval_pope.main([
        "--annotation-dir", str(pope_files / "coco"), "--question-file", str(pope_files / "questions.jsonl"),
        "--result-file", str(pope_files / "answers.jsonl"),
    ])
    # random: TP 1, FP 1, TN 1, FN 1 -> precision 1/2, recall 1/2, F1 2*.5*.5/1 = 0.5, accuracy 2/4,
    # yes ratio 2/4.
    random_metrics = {
        "TP": 1, "FP": 1, "TN": 1, "FN": 1, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5,
    }
    # popular: TN 2 only -> precision, recall and F1 have zero denominators: 0; accuracy 2/2; yes ratio 0/2.
    popular_metrics = {
        "TP": 0, "FP": 0, "TN": 2, "FN": 0, "accuracy": 1.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0,
    }
    assert {k: result["categories"]["random"][k] for k in random_metrics} == random_metrics
    assert {k: result["categories"]["popular"][k] for k in popular_metrics} == popular_metrics
    assert result["average_f1"] == (0.5 + 0.0) / 2
    blocks = {
        "random": "Category: random, # samples: 4\nTP\tFP\tTN\tFN\t\n1\t1\t1\t1\nAccuracy: 0.5\nPrecision: 0.5\n"
        "Recall: 0.5\nF1 score: 0.5\nYes ratio: 0.5\n0.500, 0.500, 0.500, 0.500, 0.500\n" + "=" * 36 + "\n",
        "popular": "Category: popular, # samples: 2\nTP\tFP\tTN\tFN\t\n0\t0\t2\t0\nAccuracy: 1.0\nPrecision: 0.0\n"
        "Recall: 0.0\nF1 score: 0.0\nYes ratio: 0.0\n0.000, 1.000, 0.000, 0.000, 0.000\n" + "=" * 36 + "\n",
    }
    order = [name[len("coco_pope_"):-len(".json")] for name in os.listdir(pope_files / "coco")]
    captured = capsys.readouterr()
    assert captured.out == "".join(blocks[c] for c in order) + "Average F1 score: 0.25\n"
    assert captured.err == ""


def test_pope_reports_unpaired_answers_and_labels(pope_files, capsys):
    write_jsonl(pope_files / "answers.jsonl", [
        pope_answer(10000001, "Yes"),  # dog: yes / yes -> TP
        pope_answer(10000002, "No"),  # cat: no / no -> TN
        pope_answer(10000003, "Yes"),  # car: yes / yes -> TP; bus has no answer
        pope_answer(99, "Yes"),  # not in the question file
        pope_answer(20000001, "No"), pope_answer(20000002, "No"),
    ])
    (pope_files / "coco" / "notes.txt").write_text("not an annotation file")
    result = eval_pope.main([
        "--annotation-dir", str(pope_files / "coco"), "--question-file", str(pope_files / "questions.jsonl"),
        "--result-file", str(pope_files / "answers.jsonl"),
    ])
    # random: 3 paired, TP 2, TN 1 -> precision 1, recall 1, F1 1, accuracy 1, yes ratio 2/3.
    assert result["categories"]["random"]["samples"] == 3
    assert result["categories"]["random"]["yes_ratio"] == 2 / 3
    assert result["average_f1"] == (1.0 + 0.0) / 2
    err = capsys.readouterr().err
    assert "1 answer(s) whose question_id is not in the question file" in err and "99" in err
    assert "1 label(s) without an answer" in err and "(question ids 4)" in err
    assert "skipping notes.txt" in err


def test_pope_runs_as_a_module(pope_files):
    question_ids = (10000001, 10000002, 10000003, 10000004, 20000001, 20000002)
    write_jsonl(pope_files / "answers.jsonl", [pope_answer(q, "Yes") for q in question_ids])
    done = run_module(
        "bunny.eval.pope.eval_pope", "--annotation-dir", str(pope_files / "coco"),
        "--question-file", str(pope_files / "questions.jsonl"), "--result-file", str(pope_files / "answers.jsonl"),
    )
    assert done.returncode == 0, done.stderr
    # random: TP 2, FP 2 -> precision 1/2, recall 1, F1 2*.5*1/1.5 = 2/3; popular: FP 2 -> F1 0.
    assert done.stdout.endswith(f"Average F1 score: {(2 * 0.5 * 1.0 / 1.5 + 0.0) / 2}\n")


# ----------------------------------------------------------------------------------------- ScienceQA


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"), ("B. A rock", "B"), ("B.", "FAILED"),  # "B." is not "X. " followed by text
        ("The answer is C.", "C"), ("I think The answer is C!", "C"),  # the "." of the pattern is any character
        ("The answer is C. The answer is D.", "FAILED"),  # more than one match
        ("F", "FAILED"), ("b", "FAILED"), ("", "FAILED"),
    ],
)
def test_scienceqa_answer_parsing(text, letter):
    assert eval_science_qa.parse_answer(text, eval_science_qa.OPTIONS) == letter


@pytest.fixture
def sqa_dir(tmp_path):
    problems = {
        "1": {"question": "q1", "choices": ["x", "y", "z"], "answer": 1},
        "2": {"question": "q2", "choices": ["x", "y", "z"], "answer": 2},
        "3": {"question": "q3", "choices": ["x", "y"], "answer": 0},
        "4": {"question": "q4", "choices": ["x", "y", "z", "w"], "answer": 3},
        "5": {"question": "q5", "choices": ["x", "y"], "answer": 1},
        "6": {"question": "q6", "choices": ["x", "y", "z"], "answer": 0},
        "7": {"question": "q7", "choices": ["x", "y"], "answer": 0},  # not in the test split
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3", "4", "5", "6"], "val": ["7"]}))
    return tmp_path


def sqa_answer(question_id, text, image):
    prompt = ("<image>\n" if image else "") + "Question?\nAnswer with the option's letter from the given choices directly."
    return {"question_id": question_id, "prompt": prompt, "text": text, "answer_id": "x", "model_id": "m", "metadata": {}}


def test_scienceqa_scores_and_writes_both_documents(sqa_dir, capsys):
    write_jsonl(sqa_dir / "answers.jsonl", [
        sqa_answer("1", "B. y", image=True),  # B = 1: right (image)
        sqa_answer("2", "The answer is C.", image=True),  # C = 2: right (image)
        sqa_answer("3", "C", image=True),  # C is beyond the 2 choices -> -1: wrong (image)
        sqa_answer("4", "The answer is D. The answer is D.", image=False),  # two matches -> FAILED: wrong
        sqa_answer(5, "B", image=False),  # numeric id matches "5"; right (text only)
        # problem "6" (an image question) has no answer: FAILED, prompt "Unknown", not an image question
    ])
    output_file, output_result = sqa_dir / "out" / "output.jsonl", sqa_dir / "out" / "result.json"
    result = eval_science_qa.main([
        "--base-dir", str(sqa_dir), "--result-file", str(sqa_dir / "answers.jsonl"),
        "--output-file", str(output_file), "--output-result", str(output_result),
    ])
    # 3 right of 6 -> 50.00%; image questions 1, 2, 3 (6 is unanswered) -> 2 of 3 = 66.67%.
    assert capsys.readouterr().out == "Total: 6, Correct: 3, Accuracy: 50.00%, IMG-Accuracy: 66.67%\n"
    written = json.loads(output_result.read_text())
    assert written == result
    assert list(written) == ["acc", "correct", "count", "results", "outputs", "image_acc", "image_correct", "image_count"]
    assert (written["acc"], written["correct"], written["count"]) == (3 / 6 * 100, 3, 6)
    assert (written["image_acc"], written["image_correct"], written["image_count"]) == (2 / 3 * 100, 2, 3)
    assert written["results"] == {"1": 1, "2": 2, "3": -1, "4": -1, "5": 1, "6": -1}
    assert written["outputs"]["6"] == "FAILED" and written["outputs"]["4"] == "The answer is D. The answer is D."
    analysis = json.loads(output_file.read_text())
    assert [a["question_id"] for a in analysis["correct"]] == ["1", "2", "5"]
    assert [a["question_id"] for a in analysis["incorrect"]] == ["3", "4", "6"]
    assert analysis["incorrect"][2] == {
        "question_id": "6", "parsed_ans": "FAILED", "ground_truth": "A", "question": "Unknown", "pred": "FAILED",
        "is_multimodal": False,
    }
    assert output_file.read_text().startswith('{\n  "correct": [\n    {\n      "question_id": "1",')


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--split", "minival"], "no split 'minival'"),
        (["--options", "AB"], "problem '2': answer 2 is not the index of one of the options AB"),
    ],
)
def test_scienceqa_bad_split_or_options_are_errors(sqa_dir, capsys, flags, message):
    write_jsonl(sqa_dir / "answers.jsonl", [])
    with pytest.raises(SystemExit):
        eval_science_qa.main([
            "--base-dir", str(sqa_dir), "--result-file", str(sqa_dir / "answers.jsonl"), "--output-file",
            str(sqa_dir / "o.json"), "--output-result", str(sqa_dir / "r.json"), *flags,
        ])
    assert message in capsys.readouterr().err
    assert not (sqa_dir / "o.json").exists()


def test_scienceqa_runs_as_a_module_with_the_options_flag(sqa_dir):
    write_jsonl(sqa_dir / "answers.jsonl", [sqa_answer(str(i), "A", image=True) for i in range(1, 7)])
    done = run_module(
        "bunny.eval.scienceqa.eval_science_qa", "--base-dir", str(sqa_dir), "--result-file", str(sqa_dir / "answers.jsonl"),
        "--output-file", str(sqa_dir / "o.json"), "--output-result", str(sqa_dir / "r.json"), "--options", "ABCD",
    )
    assert done.returncode == 0, done.stderr
    # "A" is right for problems 3 and 6 -> 2 of 6 = 33.33%, all six are image questions.
    assert done.stdout == "Total: 6, Correct: 2, Accuracy: 33.33%, IMG-Accuracy: 33.33%\n"


# ---------------------------------------------------------------------------------------- SEED-Bench


def seed_annotation(path, questions):
    types = {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10}
    path.write_text(json.dumps({"question_type": types, "questions": questions}))


def seed_question(question_id, type_id, data_type, answer):
    return {"question_id": question_id, "question_type_id": type_id, "data_type": data_type, "data_id": "x.jpg", "answer": answer}


def test_seed_accuracy_per_type_and_upload_file(tmp_path, capsys):
    seed_annotation(tmp_path / "SEED-Bench.json", [
        seed_question("101", 2, "image", "A"),
        seed_question("102", 1, "image", "B"),
        seed_question("103", 1, "image", "C"),
        seed_question("104", 2, "image", "D"),
        seed_question("201", 10, "video", "A"),
    ])
    write_jsonl(tmp_path / "merge.jsonl", [
        {"question_id": 101, "prompt": "p", "text": "A"},  # right (int id)
        {"question_id": "102", "prompt": "p", "text": "B"},  # right (string id)
        {"question_id": 103, "prompt": "p", "text": "c"},  # wrong: exact match only
        # 104 has no answer: wrong, prediction ""
        {"question_id": 201, "prompt": "p", "text": "B"},  # wrong
    ])
    upload = tmp_path / "upload" / "bunny.jsonl"
    result = seed.main(["--annotation-file", str(tmp_path / "SEED-Bench.json"), "--result-file", str(tmp_path / "merge.jsonl"),
                        "--result-upload-file", str(upload)])
    # type 1: 1 of 2 = 50.00%; type 2: 1 of 2 = 50.00%; type 10: 0 of 1 (no right, no missing answer:
    # the original's crash) = 0.00%; total 2 of 5 = 40.00%; image 2 of 4 = 50.00%; video 0 of 1.
    captured = capsys.readouterr()
    assert captured.out == (
        "Scene Understanding: 50.00%\nInstance Identity: 50.00%\nAction Recognition: 0.00%\n"
        "Total accuracy: 40.00%\nimage accuracy: 50.00%\nvideo accuracy: 0.00%\n"
    )
    assert "1 question(s) without an answer" in captured.err
    assert (result["total"], result["image"], result["video"], result["missing"]) == (2 / 5 * 100, 2 / 4 * 100, 0.0, 1)
    assert upload.read_text() == (
        '{"question_id": "101", "prediction": "A"}\n{"question_id": "102", "prediction": "B"}\n'
        '{"question_id": "103", "prediction": "c"}\n{"question_id": "104", "prediction": ""}\n'
        '{"question_id": "201", "prediction": "B"}\n'
    )


def test_seed_without_video_questions_prints_zero_video_accuracy(tmp_path):
    seed_annotation(tmp_path / "SEED-Bench.json", [seed_question("1", 1, "image", "A"), seed_question("2", 1, "image", "B")])
    write_jsonl(tmp_path / "merge.jsonl", [{"question_id": 1, "text": "A"}, {"question_id": 2, "text": "A"}])
    done = run_module(
        "bunny.eval.seed_bench.convert_seed_for_submission", "--annotation-file", str(tmp_path / "SEED-Bench.json"),
        "--result-file", str(tmp_path / "merge.jsonl"), "--result-upload-file", str(tmp_path / "up.jsonl"),
    )
    assert done.returncode == 0, done.stderr
    # 1 of 2 right -> 50.00% everywhere but video, which has no questions.
    assert done.stdout == (
        "Scene Understanding: 50.00%\nTotal accuracy: 50.00%\nimage accuracy: 50.00%\nvideo accuracy: 0.00%\n"
    )


@pytest.mark.parametrize(
    "question, num_frames, fps, index",
    [
        ({"question_type_id": 10}, 10, 30.0, 4),  # middle of 10 - 1 = 9 frames: int(8 / 2)
        ({"question_type_id": 10}, 2, 30.0, 0),
        # seconds 0.5-1.5 at 10 fps -> frames 5-15, 10 frames -> 5 + int(9 / 2)
        ({"question_type_id": 11, "segment": [0.5, 1.5]}, 30, 10.0, 9),
        # 2.0 s -> frame 20; 100 s clamps to the last frame, 29 -> 9 frames -> 20 + int(8 / 2)
        ({"question_type_id": 11, "segment": [2.0, 100.0]}, 30, 10.0, 24),
        # frames 3-100, the end clamped to the 10 frames -> 7 frames -> 3 + int(6 / 2)
        ({"question_type_id": 12, "segment": [3, 100]}, 10, 15.0, 6),
        ({"question_type_id": 12, "segment": [0, 1]}, 10, 15.0, 0),
    ],
)
def test_seed_video_frame_index(question, num_frames, fps, index):
    assert extract_video_frames.frame_index(question, num_frames, fps) == index


@pytest.mark.parametrize(
    "question, num_frames",
    [
        ({"question_type_id": 10}, 1),  # 0 frames after dropping the last
        ({"question_type_id": 11, "segment": [2.0, 2.05]}, 30),  # frames 20-20
        ({"question_type_id": 12, "segment": [5, 5]}, 10),
    ],
)
def test_seed_video_without_a_frame_to_take_is_an_error(question, num_frames):
    with pytest.raises(ValueError, match="no frame to take"):
        extract_video_frames.frame_index(question, num_frames, 10.0)


def write_gray_video(path, levels, fps=10):
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        stream.options = {"qscale": "1"}
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), level, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_seed_video_frames_are_extracted(tmp_path):
    import av  # noqa: F401
    from PIL import Image

    levels = [20 * i for i in range(10)]
    for dimension in ("20bn-something-something-v2", "BreakfastII_15fps_qvga_sync"):
        (tmp_path / "SEED-Bench-video" / dimension).mkdir(parents=True)
    write_gray_video(tmp_path / "SEED-Bench-video" / "20bn-something-something-v2" / "7.webm.mp4", levels)
    write_gray_video(tmp_path / "SEED-Bench-video" / "BreakfastII_15fps_qvga_sync" / "P03_cam01.mp4", levels)
    (tmp_path / "SEED-Bench.json").write_text(json.dumps({"question_type": {"a": 10, "b": 12}, "questions": [
        {"question_id": "v1", "question_type_id": 10, "data_type": "video", "data_id": "7.webm.mp4", "answer": "A"},
        {
            "question_id": "v2", "question_type_id": 12, "data_type": "video", "data_id": "P03_cam01.mp4",
            "segment": [2, 8], "answer": "A",
        },
        {"question_id": "i1", "question_type_id": 1, "data_type": "image", "data_id": "x.jpg", "answer": "A"},
    ]}))
    result = extract_video_frames.main(["--data-dir", str(tmp_path), "--num-workers", "2"])
    assert result["written"] == 2
    images = tmp_path / "SEED-Bench-video-image"
    assert sorted(os.listdir(images)) == ["10_v1.png", "12_v2.png"]

    def level(name):
        pixels = list(Image.open(images / name).convert("L").getdata())
        return sum(pixels) / len(pixels)

    # type 10: frame int((10 - 1 - 1) / 2) = 4 -> level 80; type 12: frames 2-8 -> 2 + int(5 / 2) = 4 too;
    assert abs(level("10_v1.png") - 80) < 6
    assert abs(level("12_v2.png") - 80) < 6


def test_seed_video_frames_name_a_missing_video_and_pyav(tmp_path, capsys, monkeypatch):
    (tmp_path / "SEED-Bench.json").write_text(json.dumps({"question_type": {}, "questions": [
        {"question_id": "v1", "question_type_id": 10, "data_type": "video", "data_id": "gone.mp4", "answer": "A"},
    ]}))
    if _has_av():
        with pytest.raises(SystemExit):
            extract_video_frames.main(["--data-dir", str(tmp_path)])
        err = capsys.readouterr().err
        assert "gone.mp4" in err and "1 of 1 video frame(s) not extracted" in err
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(SystemExit):
        extract_video_frames.main(["--data-dir", str(tmp_path)])
    assert "pip install av" in capsys.readouterr().err


def _has_av():
    return importlib.util.find_spec("av") is not None


# ------------------------------------------------------------------------------------------- MMBench

MMBENCH_TSV = (
    "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit\n"
    "0\tWhat is it?\tNone\tcat\tdog\tNA\tnull\tA\tc1\tiVBOR\ts\tl2\tnan\tdev\n"
    "1\tHow many?\tA hint\t3\t4\t5\t6\tB\tc2\tiVBOR\ts\tl2\t\tdev\n"
    "2\tWhich one?\t\tred\tblue\t7\t\tA\tc3\tiVBOR\ts\tl2\t\tdev\n"
    "3\tWhere?\t\tup\tdown\tleft\tright\tC\tc4\tiVBOR\ts\tl2\t\tdev\n"
)


def test_mmbench_upload_file_columns_cells_and_rounds(tmp_path, capsys):
    import openpyxl
    (tmp_path / "dev.tsv").write_text(MMBENCH_TSV)
    (tmp_path / "answers").mkdir()
    write_jsonl(tmp_path / "answers" / "exp.jsonl", [
        {"question_id": 0, "round_id": 0, "prompt": "p", "text": "A"},
        {"question_id": "1", "round_id": 0, "prompt": "p", "text": "B"},  # string id matches index 1
        # index 2 has no answer: its cell stays empty
        {"question_id": 3, "round_id": 0, "prompt": "p", "text": "C"},
        {"question_id": 3, "round_id": 1, "prompt": "p", "text": "A"},  # a later round: not the upload's answer
        {"question_id": 9, "round_id": 0, "prompt": "p", "text": "D"},  # no such index
    ])
    result = mmbench.main([
        "--annotation-file", str(tmp_path / "dev.tsv"), "--result-dir", str(tmp_path / "answers"),
        "--upload-dir", str(tmp_path / "upload" / "dev"), "--experiment", "exp",
    ])
    assert result["unanswered"] == 1
    err = capsys.readouterr().err
    assert "1 of 4 question(s) without an answer" in err and "1 answer(s) whose question_id is no index" in err
    rows = list(openpyxl.load_workbook(tmp_path / "upload" / "dev" / "exp.xlsx").active.iter_rows(values_only=True))
    assert rows[0] == ("index", "question", "A", "B", "C", "D", "prediction", "answer", "split")
    # pandas reads None / NA / null / empty cells as missing (empty in the xlsx); every option
    # column here has some text, so "3", "4", ... stay text.
    assert rows[1] == (0, "What is it?", "cat", "dog", None, None, "A", "A", "dev")
    assert rows[2] == (1, "How many?", "3", "4", "5", "6", "B", "B", "dev")
    assert rows[3] == (2, "Which one?", "red", "blue", "7", None, None, "A", "dev")
    assert rows[4] == (3, "Where?", "up", "down", "left", "right", "C", "C", "dev")


def test_mmbench_numeric_option_columns_stay_numbers_and_module_runs(tmp_path):
    import openpyxl
    tsv = (
        "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit\n"
        "10\tHow many?\tnan\t3\t4\t5\tNone\tA\tc\tiVBOR\ts\tl2\tnan\tdev\n"
        "11\tHow much?\tnan\t1.5\t2\t3\tNone\tB\tc\tiVBOR\ts\tl2\tnan\tdev\n"
    )
    (tmp_path / "dev.tsv").write_text(tsv)
    write_jsonl(tmp_path / "exp.jsonl", [{"question_id": 10, "text": "A"}, {"question_id": 11, "text": "B"}])
    done = run_module(
        "bunny.eval.mmbench.convert_mmbench_for_submission", "--annotation-file", str(tmp_path / "dev.tsv"),
        "--result-dir", str(tmp_path), "--upload-dir", str(tmp_path / "up"), "--experiment", "exp",
    )
    assert done.returncode == 0, done.stderr
    rows = list(openpyxl.load_workbook(tmp_path / "up" / "exp.xlsx").active.iter_rows(values_only=True))
    # All-numeric columns are numbers (A is float because of 1.5); the all-missing D is empty.
    assert rows[1] == (10, "How many?", 3, 4, 5, None, "A", "A", "dev")
    assert rows[2] == (11, "How much?", 1.5, 2, 3, None, "B", "B", "dev")


def test_mmbench_tsv_without_a_dropped_column_is_an_error(tmp_path, capsys):
    (tmp_path / "dev.tsv").write_text("index\tquestion\tA\tB\n0\tq\ta\tb\n")
    write_jsonl(tmp_path / "exp.jsonl", [])
    with pytest.raises(SystemExit):
        mmbench.main(["--annotation-file", str(tmp_path / "dev.tsv"), "--result-dir", str(tmp_path),
                      "--upload-dir", str(tmp_path / "up"), "--experiment", "exp"])
    assert "no column(s) ['hint', 'category', 'source', 'image', 'comment', 'l2-category']" in capsys.readouterr().err
