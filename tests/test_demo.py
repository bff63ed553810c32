"""`python -m bunny.demo --quick`, the short version of `make demo`: the whole pipeline runs through
the user entry points, every stage's loss falls, the merged checkpoint answers held-out questions
above chance only when it sees the picture, and the artifacts are where users look for them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from bunny.model.builder import load_pretrained_model
from bunny.inference.generate import answer_batch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "run"
    result = subprocess.run(
        [sys.executable, "-m", "bunny.demo", "--quick", "--output-dir", str(output)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return output, json.loads((output / "metrics.json").read_text()), result.stdout


def test_metrics_show_a_model_that_sees(demo):
    _, metrics, _ = demo
    chance = metrics["chance_accuracy"]
    assert chance == pytest.approx((1 / 5 + 1 / 3 + 1 / 2 + 1 / 3) / 4)
    # The quick run is far shorter than `make demo` (which reaches 97%); it must see, not excel.
    assert metrics["accuracy"] >= chance + 0.1, metrics
    assert metrics["accuracy_by_type"]["count"] >= 0.7, metrics
    assert metrics["blind_accuracy"] <= chance + 0.1, metrics
    assert metrics["blind_accuracy_by_type"]["count"] <= 0.45, metrics
    assert set(metrics["accuracy_by_type"]) == {"colour", "count", "presence", "position"}
    assert set(metrics["foreign_accuracy_by_type"]) == set(metrics["accuracy_by_type"])
    assert 0 <= metrics["foreign_accuracy"] <= 1
    assert metrics["model_type"] == "phi-2"
    assert set(metrics["timings_s"]) == {"data", "stand-ins", "pretrain", "finetune", "merge", "evaluate", "chat"}
    assert set(metrics["tower_patch_accuracy"]) == {"kind", "colour", "third", "count"}


def test_every_stage_loss_falls(demo):
    _, metrics, _ = demo
    # projector pretraining is short in the quick run and its loss falls least (about 1.5 -> 1.15)
    factors = {"vision tower": 0.8, "language model": 0.8, "projector pretraining": 0.9, "LoRA finetuning": 0.8}
    for stage, factor in factors.items():
        assert metrics["final_losses"][stage] < factor * metrics["first_losses"][stage], stage


def test_artifacts_are_in_the_original_layout(demo):
    output, metrics, _ = demo
    checkpoints = output / "checkpoints"
    assert (checkpoints / "bunny-phi-2-pretrain" / "mm_projector.bin").is_file()
    lora = checkpoints / "bunny-lora-phi-2"
    for name in ("adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin", "config.json"):
        assert (lora / name).is_file(), name
    merged = REPO / metrics["checkpoint"]
    assert merged.resolve() == (checkpoints / "bunny-phi-2").resolve()
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    assert json.loads((merged / "config.json").read_text())["model_type"] == "bunny-phi"
    for name in ("phi-demo/tokenizer.json", "phi-demo/config.json", "siglip-demo/config.json", "siglip-demo/preprocessor_config.json"):
        assert (output / "base" / name).is_file(), name
    with Image.open(output / "losses.png") as plot:
        assert plot.format == "PNG" and plot.width > 400
    for name in ("answers.jsonl", "answers_blind.jsonl"):
        assert len((output / "eval" / name).read_text().splitlines()) == metrics["num_questions"]
    report = json.loads((output / "eval" / "report.json").read_text())  # evaluated through `python -m bunny.eval run`
    assert report["benchmark"] == "shapes" and report["score"] == pytest.approx(100 * metrics["accuracy"])


def test_merged_checkpoint_loads_the_way_users_load_it(demo):
    output, metrics, _ = demo
    tokenizer, model, processor, _ = load_pretrained_model(
        str(REPO / metrics["checkpoint"]), None, "bunny-phi-2", "phi-2", device="cpu"
    )
    assert model.dtype == torch.float32 and processor is not None
    answers = json.loads((output / "eval" / "answers.jsonl").read_text().splitlines()[0])
    question = json.loads((output / "data" / "eval" / "questions.jsonl").read_text().splitlines()[0])
    image = Image.open(output / "data" / "images" / question["image"])
    reply = answer_batch([question["text"]], [image], tokenizer, model, processor, "bunny", max_new_tokens=8)[0]
    assert reply.text == answers["text"]


def test_chat_answers_through_the_cli(demo):
    _, _, stdout = demo
    chat = stdout[stdout.index("=== chat ===") :]
    assert chat.count("ASSISTANT:") == 3 and "USER: exit..." in chat


def test_an_output_directory_that_is_not_the_demos_is_refused_untouched(tmp_path):
    from bunny.demo.__main__ import MARKER, fresh_output_directory

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty and holds no earlier demo output"):
        fresh_output_directory(str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    earlier = tmp_path / "run"
    assert fresh_output_directory(str(earlier)) == str(earlier) and (earlier / MARKER).exists()
    (earlier / "metrics.json").write_text("{}")
    fresh_output_directory(str(earlier))  # an earlier run is replaced
    assert sorted(p.name for p in earlier.iterdir()) == [MARKER]
