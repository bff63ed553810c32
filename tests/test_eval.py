"""The evaluation answer generator (`python -m bunny.eval.model_vqa_loader`) and the shapes scorer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bunny.eval import model_vqa_loader
from bunny.eval.answering import LoadedModel, Settings
from bunny.eval.common import answer_record, get_chunk, read_jsonl
from bunny.eval.eval_shapes import normalize, score
from bunny.model.builder import load_pretrained_model
from tiny import FIXTURES

CHECKPOINT = "checkpoints/bunny-phi-2-siglip-full"
IMAGES = ["test_image.png", "test_image_tall.png", "test_image_square.png"]


def test_chunks_are_consecutive_slices_of_ceil_size():
    items = list(range(10))
    assert [get_chunk(items, 3, k) for k in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert get_chunk(items, 1, 0) == items
    assert get_chunk(items[:2], 4, 3) == []
    with pytest.raises(ValueError, match="--chunk-idx 3"):
        get_chunk(items, 3, 3)


def test_malformed_question_file_names_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2, "text": \n')
    with pytest.raises(ValueError, match=r"q.jsonl, line 2: not valid JSON"):
        read_jsonl(str(path), ("question_id", "text"))
    path.write_text('{"question_id": 1}\n')
    with pytest.raises(ValueError, match=r"line 1: no 'text'"):
        read_jsonl(str(path), ("question_id", "text"))


def test_answer_ids_are_stable_and_distinct():
    a, b = answer_record(1, "q", "t", "m"), answer_record(2, "q", "t", "m")
    assert a["answer_id"] == answer_record(1, "q", "other", "m")["answer_id"] != b["answer_id"]
    assert set(a) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


def test_scoring_normalises_and_refuses_missing_answers():
    key = [
        {"question_id": 0, "answer": "red", "category": "colour"},
        {"question_id": 1, "answer": "2", "category": "count"},
        {"question_id": 2, "answer": "yes", "category": "presence"},
        {"question_id": 3, "answer": "left", "category": "position"},
    ]
    answers = [
        {"question_id": 0, "text": " Red."}, {"question_id": 1, "text": "two"},
        {"question_id": 2, "text": "no"}, {"question_id": 3, "text": "left"},
    ]
    result = score(key, answers)
    assert result["accuracy"] == 0.75 and result["num_questions"] == 4
    assert result["accuracy_by_type"] == {"colour": 1.0, "count": 1.0, "position": 1.0, "presence": 0.0}
    assert normalize("The square is red.") == "the square is red"  # a sentence is not the short answer
    with pytest.raises(ValueError, match=r"1 questions have no answer, e.g. question_id \[3\]"):
        score(key, answers[:3])


@pytest.fixture()
def question_file(tmp_path):
    questions = [
        {"question_id": f"q{i}", "image": f"images/{image}", "text": text, "category": "default"}
        for i, (image, text) in enumerate(
            zip(IMAGES * 2, ["What is shown in this picture?", "Colour?", "Describe it in a few words please.", "Hi", "Shapes?", "Why?"])
        )
    ]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return path, questions


def run_generator(question_file, answers, *extra):
    return subprocess.run(
        [sys.executable, "-m", "bunny.eval.model_vqa_loader", "--model-path", CHECKPOINT, "--model-type", "phi-2",
         "--question-file", str(question_file), "--image-folder", str(FIXTURES), "--answers-file", str(answers),
         "--temperature", "0", "--max_new_tokens", "6", "--device", "cpu", *extra],
        cwd=FIXTURES, capture_output=True, text=True,
    )


def test_batched_answers_equal_one_by_one_answers(question_file, tmp_path, in_fixture_root):
    path, questions = question_file
    loaded = LoadedModel(*load_pretrained_model(CHECKPOINT, None, "bunny-phi-2", "phi-2", device="cpu")[:3])

    def answers(batch_size):
        return model_vqa_loader.generate_answers(
            questions, str(FIXTURES), loaded, Settings("bunny", max_new_tokens=6), "bunny-phi-2", batch_size
        )

    alone = answers(1)
    assert [a["question_id"] for a in alone] == [q["question_id"] for q in questions]
    assert [a["prompt"] for a in alone] == [q["text"] for q in questions]
    assert len({a["text"] for a in alone}) > 1  # the rows really differ
    assert answers(4) == alone  # a batch of 4 then a batch of 2, padded differently


def test_command_line_writes_the_answer_file_and_chunks(question_file, tmp_path):
    path, questions = question_file
    answers = tmp_path / "out" / "answers.jsonl"
    result = run_generator(path, answers, "--batch-size", "3", "--num-chunks", "2", "--chunk-idx", "1")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(str(answers))
    assert [r["question_id"] for r in rows] == ["q3", "q4", "q5"]
    assert all(r["model_id"] == "bunny-phi-2-siglip-full" and r["metadata"] == {} for r in rows)
    # no temporary file left; the kept answers (for a rerun) are in .progress-answers.jsonl
    assert sorted(p.name for p in answers.parent.iterdir()) == [".progress-answers.jsonl", "answers.jsonl"]


def test_missing_image_is_an_error_naming_it_and_writes_nothing(question_file, tmp_path):
    path, questions = question_file
    questions[1]["image"] = "images/absent.png"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    answers = tmp_path / "answers.jsonl"
    result = run_generator(path, answers)
    assert result.returncode != 0
    assert "question 'q1'" in result.stderr and "absent.png" in result.stderr
    assert not answers.exists()
