"""EvalAI normalisation, soft VQA accuracy, and the VQAv2 / VizWiz / MM-Vet / GQA / TextVQA
converters and scorers, on small files in the official formats with hand-computed expectations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bunny.eval.gqa import convert_gqa_for_eval, eval_gqa
from bunny.eval.m4c_evaluator import EvalAIAnswerProcessor, TextVQAAccuracyEvaluator, normalize_answer, soft_accuracy
from bunny.eval.mm_vet import convert_mmvet_for_eval
from bunny.eval.textvqa import eval_textvqa
from bunny.eval.viswiz import convert_viswiz_for_submission
from bunny.eval.vqav2 import convert_vqav2_for_submission

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def answer(question_id: Any, text: str, prompt: str = "q") -> dict[str, Any]:
    return {"question_id": question_id, "prompt": prompt, "text": text, "answer_id": "x", "model_id": "m", "metadata": {}}


# ---------------------------------------------------------------- EvalAI normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes.", "yes"),  # lower-cased, final period (no digit after it) removed
        ("The Cat's hat", "cat 's hat"),  # 's split off, article dropped
        ("two, three?", "2 3"),  # commas and ? dropped first, then number words
        ("None", "0"),
        ("eleven", "eleven"),  # only zero..ten map
        ("1,000", "1000"),
        ("v.2 .5 end.", "v.2 .5 end"),  # a period followed by a digit stays
        ("3.", "3"),
        ("a-b", "b"),  # '-' touches no space -> space: "a b", then the article goes
        ("x - y-z", "x yz"),  # '-' touches a space somewhere -> every '-' deleted: "x  yz"
        ("(hello)", "hello"),  # no space next to the brackets -> spaces, then split
        ("hello (world)", "hello world"),  # " (" -> '(' deleted everywhere; ')' touches no space -> space
        ("@home!", "home"),
        ("line\nbreak\ttab", "line break tab"),
        ("  Dont  ", "don't"),
        ("Im", "im"),  # contractions are looked up in lower case: "Im" never expands
        ("ive", "ive"),
        ("somebody'd", "somebodyd"),  # the table's odd entry
        ("an apple", "apple"),
        ("it's", "it 's"),
        ("", ""),
    ],
)
def test_evalai_normalisation(raw, expected):
    assert normalize_answer(raw) == expected
    assert EvalAIAnswerProcessor()(raw) == expected


def test_only_32_periods_are_removed():
    # The original passes re.UNICODE (32) as the substitution count: 40 periods leave 8.
    assert normalize_answer("." * 40) == "." * 8
    assert normalize_answer("." * 32) == ""
    # "a. " x 40: the first 32 periods go and those 32 "a" are articles; the last 8 keep their period.
    assert normalize_answer("a. " * 40) == " ".join(["a."] * 8)


# ---------------------------------------------------------------- soft VQA accuracy


def test_soft_accuracy_by_hand():
    assert soft_accuracy("Yes", ["yes"] * 10) == 1.0  # every leave-one-out subset has 9 matches -> 1
    # 2 x cat: leaving out a cat leaves 1 match (1/3, twice), leaving out a dog leaves 2 (2/3, 8 times)
    # -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert soft_accuracy("cat", ["cat"] * 2 + ["dog"] * 8) == pytest.approx(0.6)
    # 3 x cat: (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert soft_accuracy("Cat.", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    assert soft_accuracy("bird", ["cat"] * 10) == 0.0
    # answers are normalised too: "two" and "2" are the same answer
    assert soft_accuracy("2", ["two"] * 3 + ["2"] + ["3"] * 6) == 1.0
    with pytest.raises(ValueError, match="needs exactly 10"):
        soft_accuracy("cat", ["cat"] * 9)


def test_eval_pred_list_averages():
    preds = [
        {"pred_answer": "cat", "gt_answers": ["cat"] * 2 + ["dog"] * 8},  # 0.6
        {"pred_answer": "cow", "gt_answers": ["cat"] * 10},  # 0
    ]
    assert TextVQAAccuracyEvaluator().eval_pred_list(preds) == pytest.approx(0.3)
    assert TextVQAAccuracyEvaluator().eval_pred_list([]) == 0.0


# ---------------------------------------------------------------- VQAv2


def vqav2_dir(tmp_path: Path) -> Path:
    root = tmp_path / "vqav2"
    write_jsonl(root / "bunny_vqav2_mscoco_test2015.jsonl", [{"question_id": i, "image": f"{i}.jpg", "text": "q"} for i in (4, 1, 3, 2)])
    merge = root / "answers" / "test-dev" / "ckpt" / "merge.jsonl"
    merge.parent.mkdir(parents=True)
    merge.write_text(
        json.dumps(answer(1, "Two dogs.")) + "\n"
        + "{not json\n"
        + "\n"  # a blank line fails to parse too, as in the original
        + json.dumps(answer(3, "first")) + "\n"
        + json.dumps(answer(3, "The Red car")) + "\n"  # a later answer replaces an earlier one
    )
    return root


def test_vqav2_converter_writes_every_test_question(tmp_path, capsys):
    root = vqav2_dir(tmp_path)
    result = convert_vqav2_for_submission.main(["--dir", str(root), "--ckpt", "ckpt", "--split", "test-dev"])
    # 2 distinct answered ids, 4 test questions, 2 lines that are not JSON
    assert capsys.readouterr().out == "total results: 2, total split: 4, error_line: 2\n"
    written = (root / "answers_upload" / "test-dev" / "ckpt.json").read_text()
    expected = [
        {"question_id": 4, "answer": ""},
        {"question_id": 1, "answer": "2 dogs"},
        {"question_id": 3, "answer": "red car"},
        {"question_id": 2, "answer": ""},
    ]
    assert written == json.dumps(expected)
    assert result["error_line"] == 2 and result["answered"] == 2


def test_vqav2_converter_names_the_missing_test_list(tmp_path, capsys):
    root = vqav2_dir(tmp_path)
    (root / "bunny_vqav2_mscoco_test2015.jsonl").unlink()
    with pytest.raises(SystemExit) as exit_info:
        convert_vqav2_for_submission.main(["--dir", str(root), "--ckpt", "ckpt", "--split", "test-dev"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert str(root / "bunny_vqav2_mscoco_test2015.jsonl") in err
    assert "python -m bunny.eval.prepare vqav2" in err


def test_vqav2_converter_rejects_an_answer_without_id(tmp_path, capsys):
    root = vqav2_dir(tmp_path)
    with open(root / "answers" / "test-dev" / "ckpt" / "merge.jsonl", "a") as f:
        f.write('{"text": "x"}\n')
    with pytest.raises(SystemExit):
        convert_vqav2_for_submission.main(["--dir", str(root), "--ckpt", "ckpt", "--split", "test-dev"])
    assert "merge.jsonl, line 6" in capsys.readouterr().err


# ---------------------------------------------------------------- VizWiz


def test_viswiz_converter_in_question_order_with_bare_upload_path(tmp_path, monkeypatch, capsys):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": i, "image": f"VizWiz_test_{i}.jpg", "text": "q"} for i in (1, 0)])
    results = write_jsonl(tmp_path / "a.jsonl", [answer(0, "Unanswerable"), answer(1, "A can of beans.")])
    monkeypatch.chdir(tmp_path)
    convert_viswiz_for_submission.main(["--annotation-file", str(questions), "--result-file", str(results), "--result-upload-file", "up.json"])
    assert capsys.readouterr().out == "total results: 2, total split: 2, error_line: 0\n"
    expected = [{"image": "VizWiz_test_1.jpg", "answer": "can of beans"}, {"image": "VizWiz_test_0.jpg", "answer": "unanswerable"}]
    assert (tmp_path / "up.json").read_text() == json.dumps(expected)


def test_viswiz_converter_names_an_unanswered_question(tmp_path, capsys):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": i, "image": f"{i}.jpg", "text": "q"} for i in (0, 7)])
    results = write_jsonl(tmp_path / "a.jsonl", [answer(0, "yes")])
    with pytest.raises(SystemExit) as exit_info:
        convert_viswiz_for_submission.main(
            ["--annotation-file", str(questions), "--result-file", str(results), "--result-upload-file", str(tmp_path / "u.json")]
        )
    assert exit_info.value.code == 1
    assert "no answer for question_id 7" in capsys.readouterr().err
    assert not (tmp_path / "u.json").exists()


# ---------------------------------------------------------------- MM-Vet and the GQA converter


def test_mmvet_converter(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [answer(0, "A cat.\nIt sleeps."), answer(12, "5")])
    result = convert_mmvet_for_eval.main(["--src", str(src), "--dst", str(tmp_path / "out" / "r.json")])
    expected = {"v1_0": "A cat.\nIt sleeps.", "v1_12": "5"}
    assert (tmp_path / "out" / "r.json").read_text() == json.dumps(expected, indent=2)
    assert result == expected


def test_gqa_converter(tmp_path):
    src = write_jsonl(tmp_path / "merge.jsonl", [answer("201", "Yes."), answer("7", "A Cat..."), answer("9", "U.S.")])
    convert_gqa_for_eval.main(["--src", str(src), "--dst", str(tmp_path / "p.json")])
    expected = [
        {"questionId": "201", "prediction": "yes"},
        {"questionId": "7", "prediction": "a cat"},  # every trailing period goes, then lower-case
        {"questionId": "9", "prediction": "u.s"},
    ]
    assert (tmp_path / "p.json").read_text() == json.dumps(expected)


# ---------------------------------------------------------------- TextVQA


def textvqa_annotations(tmp_path: Path) -> Path:
    data = [
        {"image_id": "img1", "question": "What brand is this?", "answers": ["Sony"] * 10},
        {"image_id": "img2", "question": "What number?", "answers": ["5", "5", "five"] + ["6"] * 7},
        {"image_id": "img3", "question": "Who wrote it?", "answers": ["Bob"] * 2 + ["alice"] * 8},
    ]
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps({"dataset_name": "textvqa", "data": data}))
    return path


SUFFIX = "Answer the question using a single word or phrase."
TEXTVQA_RESULTS = [
    # 3 lines, question first: 10 x "sony" -> 1.0
    answer("img1", "SONY", f"WHAT BRAND is this?\nReference OCR token: SONY, tv\n{SUFFIX}"),
    # 3 lines starting with the OCR line -> line 2; "Five." -> "5", 3 matches: (3 * 2/3 + 7 * 1) / 10 = 0.9
    answer("img2", "Five.", f"Reference OCR token: 5\nWhat number?\n{SUFFIX}"),
    # OCR-tokens format; 2 x bob: (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    answer("img3", "Bob", "OCR tokens: bob, alice Question: Who wrote it? Short answer:"),
    # 2 lines -> line 1; wrong answer -> 0
    answer("img1", "panasonic", f"What brand is this?\n{SUFFIX}"),
]


def test_textvqa_prompt_formats():
    assert eval_textvqa.question_from_prompt(f"Q One?\nReference OCR token: a\n{SUFFIX}") == "q one?"
    assert eval_textvqa.question_from_prompt(f"Reference OCR token: a\nQ Two?\n{SUFFIX}") == "q two?"
    assert eval_textvqa.question_from_prompt("OCR tokens: x Question: Q\nThree? Short answer: y") == "q\nthree?"
    assert eval_textvqa.question_from_prompt(f"Q Four?\n{SUFFIX}") == "q four?"
    for bad in ["just one line", "a\nb\nc\nd", "OCR tokens: x but no question", "a\nb\nc"]:
        with pytest.raises(ValueError):
            eval_textvqa.question_from_prompt(bad)


def test_textvqa_scores_a_result_file(tmp_path, capsys):
    annotations = textvqa_annotations(tmp_path)
    results = write_jsonl(tmp_path / "bunny-phi-2.jsonl", TEXTVQA_RESULTS)
    scored = eval_textvqa.main(["--annotation-file", str(annotations), "--result-file", str(results)])
    # (1.0 + 0.9 + 0.6 + 0) / 4 = 0.625
    assert capsys.readouterr().out == "bunny-phi-2\nSamples: 4\nAccuracy: 62.50%\n\n"
    assert scored[str(results)]["accuracy"] == pytest.approx(0.625)


def test_textvqa_result_dir_sorted_with_skipping(tmp_path, capsys):
    annotations = textvqa_annotations(tmp_path)
    folder = tmp_path / "answers"
    write_jsonl(folder / "b.jsonl", TEXTVQA_RESULTS[:2])  # (1.0 + 0.9) / 2 = 0.95
    write_jsonl(folder / "a.jsonl", TEXTVQA_RESULTS[2:])  # (0.6 + 0) / 2 = 0.3
    (folder / "notes.txt").write_text("x")
    eval_textvqa.main(["--annotation-file", str(annotations), "--result-dir", str(folder)])
    assert capsys.readouterr().out == (
        "a\nSamples: 2\nAccuracy: 30.00%\n\n" "b\nSamples: 2\nAccuracy: 95.00%\n\n" "Skipping notes.txt\n"
    )


@pytest.mark.parametrize(
    "row, message",
    [
        (answer("img9", "x", f"What brand is this?\n{SUFFIX}"), "question_id 'img9': no annotation"),
        (answer("img1", "x", "one line only"), "question_id 'img1': prompt of 1 lines"),
    ],
)
def test_textvqa_errors_name_the_question(tmp_path, capsys, row, message):
    annotations = textvqa_annotations(tmp_path)
    results = write_jsonl(tmp_path / "r.jsonl", [TEXTVQA_RESULTS[0], row])
    with pytest.raises(SystemExit) as exit_info:
        eval_textvqa.main(["--annotation-file", str(annotations), "--result-file", str(results)])
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- GQA


def gqa_question(text: str, answer_: str, structural: str, semantic: str, ops: list[str], group: str | None, **extra) -> dict:
    steps = [dict(zip(("operation", "argument"), op.split(": ", 1)), dependencies=[]) for op in ops]
    question = {
        "question": text, "answer": answer_, "fullAnswer": answer_, "imageId": "n1", "isBalanced": True,
        "types": {"structural": structural, "semantic": semantic, "detailed": "plain"},
        "groups": {"global": group, "local": "l"}, "semantic": steps, "semanticStr": "",
        "entailed": [], "equivalent": [], "annotations": {"question": {}, "answer": {}, "fullAnswer": {}},
    }
    question.update(extra)
    return question


GQA_QUESTIONS = {
    # 4 words, steps: select, verify = 2; right
    "q1": gqa_question("Is the cat red?", "yes", "verify", "attr", ["select: cat", "verify color: red"], None, entailed=["q1", "q5"]),
    # 6 words, steps: the two "exist" don't count -> 3; wrong
    "q2": gqa_question("Are there both cats and dogs?", "no", "logic", "obj",
                       ["select: cat", "exist: ?", "select: dog", "exist: ?", "and: "], None, entailed=["q1"]),
    # 4 words, "query: name" doesn't count -> 1 step; right
    "q3": gqa_question("What animal is this?", "cat", "query", "cat", ["select: animal", "query: name"], "animal", entailed=["q4"]),
    # 6 words, 2 steps; wrong
    "q4": gqa_question("What animal is on the left?", "dog", "query", "cat", ["select: animal", "relate: left", "query: name"], "animal"),
    # 5 words, "query: color" counts -> 2 steps; right
    "q5": gqa_question("What color is the car?", "red", "query", "attr", ["select: car", "query: color"], "color", entailed=["q6"]),
    # not balanced: not scored, but needs a prediction and counts for consistency (wrong)
    "q6": gqa_question("What color is the sky?", "green", "query", "attr", ["select: sky", "query: color"], "color", isBalanced=False),
    # 12 words, "choose name" doesn't count -> 2 steps; wrong
    "q7": gqa_question("Is the small cup to the left or right of the plate?", "left", "choose", "rel",
                       ["select: plate", "relate: cup", "choose name: left|right"], None),
}
GQA_PREDICTIONS = {"q1": "yes", "q2": "yes", "q3": "cat", "q4": "cat", "q5": "red", "q6": "blue", "q7": "right"}

# Balanced: q1 q2 q3 q4 q5 q7, right: q1 q3 q5 -> 3/6. Binary (not query): q1 q2 q7 -> 1/3. Open: q3 q4 q5 -> 2/3.
# Distribution: group animal: gold {cat 1, dog 1}, predicted {cat 2}: (2-1)^2/1 + (0-1)^2/1 = 2, times 2 questions = 4;
# group color: gold {red 1} = predicted -> 0, times 1. (4 + 0) / 3 questions = 1.333 -> / 100 = 0.0133.
GQA_REPORT = """
Binary: 33.33%
Open: 66.67%
Accuracy: 50.00%
{extra}Distribution: 0.01 (lower is better)

Accuracy / structural type:
  choose: 0.00% (1 questions)
  logic: 0.00% (1 questions)
  query: 66.67% (3 questions)
  verify: 100.00% (1 questions)

Accuracy / semantic type:
  attr: 100.00% (2 questions)
  cat: 50.00% (2 questions)
  obj: 0.00% (1 questions)
  rel: 0.00% (1 questions)

Accuracy / steps number:
  1: 100.00% (1 questions)
  2: 50.00% (4 questions)
  3: 0.00% (1 questions)

Accuracy / words number:
  4: 100.00% (2 questions)
  5: 100.00% (1 questions)
  6: 0.00% (2 questions)
  12: 0.00% (1 questions)
"""


def gqa_dir(tmp_path: Path, monkeypatch, predictions: dict[str, str] = GQA_PREDICTIONS) -> None:
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(GQA_QUESTIONS))
    rows = [{"questionId": qid, "prediction": p} for qid, p in predictions.items()]
    (tmp_path / "testdev_balanced_predictions.json").write_text(json.dumps(rows))
    monkeypatch.chdir(tmp_path)


def report_of(out: str) -> str:
    return out[out.index("\n\n") + 1 :]  # from the empty line that opens the report


def test_gqa_report(tmp_path, monkeypatch, capsys):
    gqa_dir(tmp_path, monkeypatch)
    summary = eval_gqa.main(["--tier", "testdev_balanced"])
    out = capsys.readouterr().out
    assert report_of(out) == GQA_REPORT.format(extra="")
    assert "Validity" not in out and "Consistency" not in out
    assert summary["accuracy"] == pytest.approx(50.0)
    assert summary["distribution"] == pytest.approx(4 / 3 / 100)
    assert summary["accuracyPerLength"][12] == (0.0, 1)


def test_gqa_consistency(tmp_path, monkeypatch, capsys):
    gqa_dir(tmp_path, monkeypatch)
    eval_gqa.main(["--tier", "testdev_balanced", "--consistency"])
    # right and entailing others: q1 -> [q5] right = 1; q3 -> [q4] wrong = 0; q5 -> [q6] wrong = 0.
    # q2 entails q1 but is wrong, so it doesn't count. (1 + 0 + 0) / 3 = 33.33%
    assert report_of(capsys.readouterr().out) == GQA_REPORT.format(extra="Consistency: 33.33%\n")


def test_gqa_validity_and_plausibility_with_a_choices_file(tmp_path, monkeypatch, capsys):
    gqa_dir(tmp_path, monkeypatch)
    questions = dict(GQA_QUESTIONS)
    questions["q7"] = dict(questions["q7"], types={"structural": "choose", "semantic": "rel", "detailed": "twoCommon"})
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    choices = {
        "q1": {"valid": ["yes", "no"], "plausible": ["yes"]},  # yes: valid, plausible
        "q2": {"valid": ["yes", "no"], "plausible": ["no"]},  # yes: valid, not plausible
        "q3": {"valid": ["cat", "dog"], "plausible": ["cat"]},  # cat: valid, plausible
        "q4": {"valid": ["cat", "dog"], "plausible": ["dog"]},  # cat: valid, not plausible
        "q5": {"valid": ["blue"], "plausible": ["red"]},  # red: not valid, plausible
        # "Common" question: the group becomes [color, material, shape], so "right" is neither
        "q7": {"valid": ["left", "right"], "plausible": ["left", "right"]},
    }
    (tmp_path / "testdev_balanced_choices.json").write_text(json.dumps(choices))
    eval_gqa.main(["--tier", "testdev_balanced"])
    # validity 4/6, plausibility 3/6
    assert report_of(capsys.readouterr().out) == GQA_REPORT.format(extra="Validity: 66.67%\nPlausibility: 50.00%\n")


def test_gqa_missing_prediction_names_the_question(tmp_path, monkeypatch, capsys):
    gqa_dir(tmp_path, monkeypatch, {k: v for k, v in GQA_PREDICTIONS.items() if k != "q6"})
    with pytest.raises(SystemExit) as exit_info:
        eval_gqa.main(["--tier", "testdev_balanced"])  # q6 is not balanced, but still needs one
    assert exit_info.value.code == 1
    assert "no prediction for question 'q6'" in capsys.readouterr().err


def test_gqa_empty_groups_print_zero(tmp_path, monkeypatch, capsys):
    gqa_dir(tmp_path, monkeypatch, {"q6": "blue"})
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps({"q6": GQA_QUESTIONS["q6"]}))
    eval_gqa.main(["--tier", "testdev_balanced"])
    out = capsys.readouterr().out
    assert "\nBinary: 0.00%\nOpen: 0.00%\nAccuracy: 0.00%\nDistribution: 0.00 (lower is better)\n" in out


def test_gqa_refuses_grounding(capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_gqa.main(["--tier", "testdev_balanced", "--grounding"])
    assert exit_info.value.code == 2
    assert "--grounding is not supported" in capsys.readouterr().err


# ---------------------------------------------------------------- the modules run as commands


def test_each_package_runs_as_a_module(tmp_path):
    """One real `python -m` per package, started together (each pays the interpreter's start-up)."""
    answers = write_jsonl(tmp_path / "a.jsonl", [answer(0, "Yes.")])
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 0, "image": "0.jpg", "text": "q"}])
    vqav2 = tmp_path / "vqav2"
    write_jsonl(vqav2 / "bunny_vqav2_mscoco_test2015.jsonl", [{"question_id": 0, "image": "0.jpg", "text": "q"}])
    write_jsonl(vqav2 / "answers" / "s" / "c" / "merge.jsonl", [answer(0, "Yes.")])
    annotations = textvqa_annotations(tmp_path)
    textvqa = write_jsonl(tmp_path / "t.jsonl", TEXTVQA_RESULTS[:1])
    gqa = tmp_path / "gqa"
    gqa.mkdir()
    (gqa / "t_questions.json").write_text(json.dumps({"q1": GQA_QUESTIONS["q1"]}))
    (gqa / "t_predictions.json").write_text(json.dumps([{"questionId": "q1", "prediction": "yes"}]))
    commands = {
        "bunny.eval.vqav2.convert_vqav2_for_submission": (["--dir", str(vqav2), "--ckpt", "c", "--split", "s"], tmp_path),
        "bunny.eval.viswiz.convert_viswiz_for_submission": (
            ["--annotation-file", str(questions), "--result-file", str(answers), "--result-upload-file", "v.json"], tmp_path),
        "bunny.eval.mm_vet.convert_mmvet_for_eval": (["--src", str(answers), "--dst", "m.json"], tmp_path),
        "bunny.eval.textvqa.eval_textvqa": (["--annotation-file", str(annotations), "--result-file", str(textvqa)], tmp_path),
        "bunny.eval.gqa.eval_gqa": (["--tier", "t"], gqa),
    }
    env = dict(os.environ, PYTHONPATH=str(REPO))
    running = {
        module: subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
        for module, (args, cwd) in commands.items()
    }
    outputs = {module: process.communicate(timeout=120)[0] for module, process in running.items()}
    assert all(process.returncode == 0 for process in running.values()), outputs
    assert json.loads((vqav2 / "answers_upload" / "s" / "c.json").read_text()) == [{"question_id": 0, "answer": "yes"}]
    assert json.loads((tmp_path / "v.json").read_text()) == [{"image": "0.jpg", "answer": "yes"}]
    assert json.loads((tmp_path / "m.json").read_text()) == {"v1_0": "Yes."}
    assert outputs["bunny.eval.textvqa.eval_textvqa"] == "t\nSamples: 1\nAccuracy: 100.00%\n\n"
    assert "\nAccuracy: 100.00%\n" in outputs["bunny.eval.gqa.eval_gqa"]
