"""Resumable answering: a generator killed part-way and started again (with another batch size and
another number of chunks) answers only what is missing and writes the same bytes as a run that never
stopped; answers made by another run are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bunny.eval import model_vqa_loader
from bunny.eval.answering import Settings
from bunny.eval.store import AnswerStore, FingerprintMismatch, fingerprint, progress_dir
from tiny import FIXTURES

CHECKPOINT = "checkpoints/bunny-phi-2-siglip-full"
IMAGES = ["test_image.png", "test_image_tall.png", "test_image_square.png"]
QUESTIONS = ["What is this?", "Colour?", "Describe the picture in a few words, please.", "Hi", "Shapes?",
             "Is there anything unusual about the left side of this picture?", "Why?", "Count them.",
             "Where?", "What is the main object and what is it doing here?", "Ok?", "Name it."]


def flags(questions, answers, *extra):
    return ["--model-path", CHECKPOINT, "--model-type", "phi-2", "--device", "cpu", "--temperature", "0",
            "--question-file", str(questions), "--image-folder", str(FIXTURES), "--answers-file", str(answers),
            "--max_new_tokens", "24", *extra]


@pytest.fixture()
def questions(tmp_path):
    path = tmp_path / "questions.jsonl"
    rows = [{"question_id": i % 5, "image": f"images/{IMAGES[i % 3]}", "text": text, "category": "x"}  # ids repeat
            for i, text in enumerate(QUESTIONS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def answer_lines(path):
    """The answer lines kept in a part file (after its header)."""
    return [line for line in path.read_text().splitlines()[1:] if line.strip()] if path.exists() else []


def test_killed_run_resumes_with_other_batch_size_and_chunks_to_the_same_bytes(tmp_path, questions, in_fixture_root):
    reference = tmp_path / "reference" / "answers.jsonl"
    model_vqa_loader.main(flags(questions, reference))

    work = tmp_path / "work"
    part = work / ".progress" / "part-1_0.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "bunny.eval.model_vqa_loader",
                                *flags(questions, work / "1_0.jsonl", "--num-chunks", "1", "--chunk-idx", "0")],
                               cwd=FIXTURES, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(answer_lines(part)) < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = len(answer_lines(part))
    assert process.returncode == -signal.SIGKILL and 4 <= kept < len(QUESTIONS)
    assert not (work / "1_0.jsonl").exists()  # no answer file that looks complete

    for index in range(2):
        model_vqa_loader.main(flags(questions, work / f"2_{index}.jsonl", "--num-chunks", "2",
                                    "--chunk-idx", str(index), "--batch-size", "3"))
    generated = [answer_lines(work / ".progress" / f"part-2_{index}.jsonl") for index in range(2)]
    assert sum(map(len, generated)) == len(QUESTIONS) - kept  # only what was missing was answered
    merged = (work / "2_0.jsonl").read_bytes() + (work / "2_1.jsonl").read_bytes()
    assert merged == reference.read_bytes()
    assert len({json.loads(line)["answer_id"] for line in merged.splitlines()}) == len(QUESTIONS)


def test_a_rerun_with_other_settings_or_weights_is_refused(tmp_path, questions, in_fixture_root):
    answers = tmp_path / "answers.jsonl"
    model_vqa_loader.main(flags(questions, answers, "--num-chunks", "4", "--chunk-idx", "3"))
    first = answers.read_bytes()
    model_vqa_loader.main(flags(questions, answers, "--num-chunks", "4", "--chunk-idx", "3"))  # nothing to do
    assert answers.read_bytes() == first
    with pytest.raises(SystemExit, match=r"made by another run \(its settings differ\)"):
        model_vqa_loader.main(flags(questions, answers, "--num-chunks", "4", "--chunk-idx", "3", "--max_new_tokens", "8"))
    other = tmp_path / "other-weights"
    shutil.copytree(FIXTURES / CHECKPOINT, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, rope_theta=5000.0)))
    with pytest.raises(SystemExit, match=r"its model differ"):
        model_vqa_loader.main(flags(questions, answers, "--num-chunks", "4", "--chunk-idx", "3")[2:] + ["--model-path", str(other)])
    assert answers.read_bytes() == first  # nothing the first run made was touched


def test_store_skips_a_line_cut_short_and_ends_it_before_appending(tmp_path):
    header = {"run": 1}
    store = AnswerStore(str(tmp_path / "p"), header, "part-1_0")
    store.append("0:a", "yes")
    store.close()
    with open(store.path, "a") as f:
        f.write('{"key": "1:b", "te')  # the process died while writing
    assert store.load() == {"0:a": "yes"}
    store.append("1:b", "no")
    store.close()
    assert AnswerStore(str(tmp_path / "p"), header, "part-2_1").load() == {"0:a": "yes", "1:b": "no"}
    with pytest.raises(FingerprintMismatch, match="its run differ"):
        AnswerStore(str(tmp_path / "p"), {"run": 2}).load()


def test_progress_folders_are_shared_by_chunk_files_only(tmp_path):
    assert progress_dir(str(tmp_path / "a" / "4_1.jsonl")) == progress_dir(str(tmp_path / "a" / "2_0.jsonl"))
    assert progress_dir(str(tmp_path / "a" / "m1.jsonl")) != progress_dir(str(tmp_path / "a" / "m2.jsonl"))


def test_fingerprint_names_the_weights_and_settings(tmp_path, in_fixture_root):
    questions = tmp_path / "q.jsonl"
    questions.write_text("{}\n")
    base = fingerprint("g", str(questions), CHECKPOINT, None, Settings("bunny", 8))
    assert base == fingerprint("g", str(questions), CHECKPOINT, None, Settings("bunny", 8))
    assert base["model"]["model.safetensors"] and base["settings"]["max_new_tokens"] == 8
    assert base != fingerprint("g", str(questions), CHECKPOINT, None, Settings("phi3", 8))
    questions.write_text("{}\n{}\n")
    assert base["questions"] != fingerprint("g", str(questions), CHECKPOINT, None, Settings("bunny", 8))["questions"]
    assert fingerprint("g", str(questions), "org/model", None, Settings("bunny", 8))["model"] == {"hub_id": "org/model"}
    assert os.path.isdir(FIXTURES / CHECKPOINT)
