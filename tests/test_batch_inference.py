"""`script/batch_inference.py`: left-padded batches with an attention mask give every row exactly
the greedy tokens its prompt gets alone (the original passed no mask, quirk #25), checked on the
reference checkpoints against each other and against the original's golden tokens."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from bunny.model.builder import load_pretrained_model
from bunny.inference.prompts import image_prompt, resolve_conv_mode
from bunny.util.mm_utils import load_image, tokenizer_image_token
from tiny import FIXTURES

SCRIPT = Path(__file__).resolve().parents[1] / "script" / "batch_inference.py"
GOLDEN_QUESTION = "What is shown in this picture?"
CHECKPOINTS = {
    "phi-2": "checkpoints/bunny-phi-2-siglip-full",
    "llama3-8b": "checkpoints/bunny-llama3-8b-siglip-full",
}
IMAGES = [str(FIXTURES / "images" / f"test_image{suffix}.png") for suffix in ("", "_tall", "_square")]
# different images, and questions of different token lengths, so the rows need padding
PAIRS = [
    (IMAGES[0], GOLDEN_QUESTION),
    (IMAGES[1], "Describe the colours of the picture in a few words, please."),
    (IMAGES[2], "Hi"),
]


@pytest.fixture(scope="module")
def batch_inference():
    spec = importlib.util.spec_from_file_location("batch_inference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def loaded(request):
    model_type = request.param
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(FIXTURES)  # mm_vision_tower is "siglip-tiny", relative to the fixture root
        tokenizer, model, processor, _ = load_pretrained_model(
            CHECKPOINTS[model_type], None, None, model_type, device="cpu"
        )
    golden_path = FIXTURES / "goldens" / "models" / Path(CHECKPOINTS[model_type]).name / "golden.json"
    golden = json.loads(golden_path.read_text())
    return dict(model_type=model_type, tokenizer=tokenizer, model=model, processor=processor, golden=golden)


def test_rows_get_the_tokens_they_get_alone(batch_inference, loaded):
    tokenizer, model = loaded["tokenizer"], loaded["model"]
    conv_mode = resolve_conv_mode(loaded["model_type"])
    images = {image_file: load_image(image_file) for image_file, _ in PAIRS}
    prompts = [image_prompt(conv_mode, question) for _, question in PAIRS]
    lengths = {len(tokenizer_image_token(prompt, tokenizer)) for prompt in prompts}
    assert len(lengths) == len(PAIRS)  # every row is padded differently

    def answers(batch_size):
        return batch_inference.answer_all(
            PAIRS, images, tokenizer, model, loaded["processor"], conv_mode, batch_size, max_new_tokens=8
        )

    alone = answers(batch_size=1)
    assert alone[0].token_ids == loaded["golden"]["generate_use_cache"]["new_tokens"]
    for batch_size in (3, 2):  # one batch, and a full batch followed by a single row
        together = answers(batch_size)
        assert [a.token_ids for a in together] == [a.token_ids for a in alone], f"batch size {batch_size}"
        assert [a.text for a in together] == [a.text for a in alone]
    assert [(a.image_file, a.prompt) for a in alone] == PAIRS
    assert alone[0].text == tokenizer.decode(alone[0].token_ids, skip_special_tokens=True).strip()


def test_pad_token_ids_builds_the_attention_mask():
    from bunny.util.mm_utils import pad_token_ids

    input_ids, attention_mask = pad_token_ids([torch.tensor([5, -200, 6]), torch.tensor([7])], pad_id=0)
    assert input_ids.tolist() == [[5, -200, 6], [0, 0, 7]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    input_ids, attention_mask = pad_token_ids([torch.tensor([5, 6]), torch.tensor([7])], pad_id=9, side="right")
    assert input_ids.tolist() == [[5, 6], [7, 9]] and attention_mask.tolist() == [[1, 1], [1, 0]]


def test_pair_up(batch_inference):
    assert batch_inference.pair_up(["a", "b"], ["q1", "q2"]) == [("a", "q1"), ("b", "q2")]
    assert batch_inference.pair_up(["a"], ["q1", "q2"]) == [("a", "q1"), ("a", "q2")]
    assert batch_inference.pair_up(["a", "b"], ["q"]) == [("a", "q"), ("b", "q")]
    with pytest.raises(ValueError, match="2 images and 3 prompts"):
        batch_inference.pair_up(["a", "b"], ["q1", "q2", "q3"])


def test_main_writes_json_lines(batch_inference, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(FIXTURES)
    for layer in (torch.nn.Linear, torch.nn.LayerNorm):  # main() turns their init off: undo it afterwards
        monkeypatch.setattr(layer, "reset_parameters", layer.reset_parameters)
    output = tmp_path / "answers.jsonl"
    answers = batch_inference.main(
        ["--model-path", CHECKPOINTS["phi-2"], "--model-type", "phi-2", "--device", "cpu",
         "--image-file", "images/test_image.png", "--prompt", GOLDEN_QUESTION, "Hi",
         "--max-new-tokens", "8", "--output-file", str(output)]
    )  # fmt: skip
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert records == [{"image_file": "images/test_image.png", "prompt": a.prompt, "text": a.text} for a in answers]
    assert [r["prompt"] for r in records] == [GOLDEN_QUESTION, "Hi"]  # the single image goes with each question
    assert answers[0].text in capsys.readouterr().out


def test_mismatched_counts_are_an_argument_error(batch_inference, capsys):
    with pytest.raises(SystemExit) as exit_info:
        batch_inference.parse_args(
            ["--model-path", "x", "--model-type", "phi-2", "--device", "cpu",
             "--image-file", "a.png", "b.png", "--prompt", "q1", "q2", "q3"]
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "2 images and 3 prompts" in capsys.readouterr().err


def test_every_flag_has_help(batch_inference):
    assert all(action.help for action in batch_inference.build_parser()._actions)


def test_script_runs():
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model-path", CHECKPOINTS["phi-2"], "--model-type", "phi-2",
         "--device", "cpu", "--image-file", "images/test_image.png", "--image-file", "images/test_image_tall.png",
         "--prompt", GOLDEN_QUESTION, "--prompt", "Hi", "--max-new-tokens", "8"],
        cwd=FIXTURES, capture_output=True, text=True, encoding="utf-8", env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    checkpoint = FIXTURES / CHECKPOINTS["phi-2"]
    golden = json.loads((FIXTURES / "goldens" / "models" / checkpoint.name / "golden.json").read_text())
    tokens = golden["generate_use_cache"]["new_tokens"]
    golden_reply = AutoTokenizer.from_pretrained(checkpoint).decode(tokens, skip_special_tokens=True).strip()
    assert f"[images/test_image.png] {GOLDEN_QUESTION}\n{golden_reply}\n" in result.stdout
    assert "[images/test_image_tall.png] Hi\n" in result.stdout
