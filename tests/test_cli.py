"""`python -m bunny.serve.cli` driven through a pipe with the reference checkpoints.

The first reply must be the original's greedy tokens for the golden prompt; later prompts must
carry earlier replies without a repeated stop string (the original stored it, quirk #5); the
template must follow the model type (the original always used `bunny`); bad input must end with
a one-line message, not a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from bunny.conversation import get_conv_template
from bunny.model.backbones import BACKBONES
from bunny.inference import prompts, stops
from bunny.serve import cli
from tiny import FIXTURES

QUESTION = "What is shown in this picture?"
PHI2 = "checkpoints/bunny-phi-2-siglip-full"
LLAMA3 = "checkpoints/bunny-llama3-8b-siglip-full"
IMAGE = "images/test_image.png"


def _golden(checkpoint: str) -> dict:
    name = checkpoint.split("/")[-1]
    return json.loads((FIXTURES / "goldens" / "models" / name / "golden.json").read_text())


def _golden_reply(checkpoint: str) -> str:
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / checkpoint)
    new_tokens = _golden(checkpoint)["generate_use_cache"]["new_tokens"]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bunny.serve.cli", *args],
        cwd=FIXTURES,  # the checkpoints name their tower "siglip-tiny", relative to the fixture root
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=300,
    )


def _chat_args(checkpoint: str, model_type: str) -> list[str]:
    return [
        "--model-path", checkpoint, "--model-type", model_type, "--image-file", IMAGE,
        "--device", "cpu", "--temperature", "0", "--max-new-tokens", "8", "--debug",
    ]  # fmt: skip


def _debug_records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"prompt": ')]


def test_two_turns_through_a_pipe_phi2():
    result = run_cli(*_chat_args(PHI2, "phi-2"), stdin=f"{QUESTION}\nAnd the colour?\n")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    golden_reply = _golden_reply(PHI2)
    assert golden_reply  # the streamed reply is checked as a substring: it must not be empty

    first, second = _debug_records(result.stdout)
    assert first["prompt"] == _golden(PHI2)["prompt"]
    assert first["outputs"] == golden_reply
    assert f"ASSISTANT: {golden_reply}\n" in result.stdout  # streamed, then the newline at the end
    # a pipe does not echo what it feeds in: the CLI prints each question after the prompt
    assert result.stdout.startswith(f"USER: {QUESTION}\nASSISTANT: ")
    assert "USER: And the colour?\nASSISTANT: " in result.stdout

    stop = get_conv_template("bunny").stop_str
    assert stop not in first["outputs"] and stop not in second["outputs"]
    # the history holds the reply once, closed by exactly one stop string
    assert second["prompt"] == first["prompt"] + f" {golden_reply}{stop}USER: And the colour? ASSISTANT:"
    assert second["prompt"].count(stop) == 1

    # end of input ends the chat
    assert result.stdout.rstrip().endswith("USER: exit...")
    assert sum(line.startswith("ASSISTANT: ") for line in result.stdout.splitlines()) == 2
    assert "USER: ASSISTANT:" not in result.stdout


def test_llama3_infers_its_template_and_an_empty_line_ends_the_chat():
    result = run_cli(*_chat_args(LLAMA3, "llama3-8b"), stdin=f"{QUESTION}\n\nnever read\n")
    assert result.returncode == 0, result.stderr
    (record,) = _debug_records(result.stdout)
    assert record["prompt"] == _golden(LLAMA3)["prompt"]  # the golden was made with the llama template
    assert record["outputs"] == _golden_reply(LLAMA3)
    assert _golden_reply(LLAMA3) in result.stdout
    assert "never read" not in result.stdout
    assert result.stdout.rstrip().endswith("USER: exit...")


@pytest.mark.parametrize("model_type", sorted(BACKBONES))
def test_conv_mode_follows_the_model_type(model_type):
    expected = {"phi-3": "phi3", "minicpm": "minicpm", "llama3-8b": "llama"}.get(model_type, "bunny")
    assert prompts.resolve_conv_mode(model_type) == expected
    assert prompts.resolve_conv_mode(model_type, "plain") == "plain"


def test_prompt_of_one_turn_is_the_golden_prompt():
    assert prompts.image_prompt("llama", QUESTION) == _golden(LLAMA3)["prompt"]
    conv = get_conv_template("bunny")
    prompts.add_user_turn(conv, QUESTION)
    conv.messages[-1][-1] = "A reply."
    prompts.add_user_turn(conv, "Next?")
    assert conv.get_prompt().endswith(
        "USER: <image>\nWhat is shown in this picture? ASSISTANT: A reply.<|endoftext|>USER: Next? ASSISTANT:"
    )


def test_clean_reply_cuts_the_stop_string():
    assert stops.clean_reply(" A cat.<|endoftext|>", "<|endoftext|>") == "A cat."
    assert stops.clean_reply(" A cat.\nUSER: more", "\n") == "A cat."
    assert stops.clean_reply(" A cat. ", None) == "A cat."


def test_streamer_prints_nothing_from_a_plain_text_stop_string(capsys):
    streamer = stops.StopStringStreamer(tokenizer=None, stop_str="###")
    for piece in ["A cat", " #", "#", "# and more", " after"]:
        streamer.on_finalized_text(piece)
    streamer.on_finalized_text("", stream_end=True)
    assert capsys.readouterr().out == "A cat \n"

    # text held back as a possible stop string comes out when it turns out not to be one
    for piece in ["x #", "#y", " z"]:
        streamer.on_finalized_text(piece)
    streamer.on_finalized_text(" #", stream_end=True)
    assert capsys.readouterr().out == "x ##y z #\n"


def test_missing_image_is_one_line_naming_the_file():
    result = run_cli(
        "--model-path", PHI2, "--model-type", "phi-2", "--image-file", "images/missing.png", "--device", "cpu"
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "images/missing.png" in result.stderr


def test_corrupt_image_names_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    argv = ["--model-path", str(FIXTURES / PHI2), "--model-type", "phi-2", "--image-file", str(corrupt)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--device", "cpu"])
    message = str(exit_info.value.code)
    assert message.startswith("error:") and str(corrupt) in message and "\n" not in message


def test_unknown_model_type_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--model-path", "x", "--model-type", "llama3", "--image-file", IMAGE, "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'llama3'" in err
    assert all(model_type in err for model_type in BACKBONES)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--model-path", str(FIXTURES / PHI2), "--model-type", "phi-2", "--image-file", IMAGE])
    assert exit_info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_missing_local_model_path_is_an_error(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(
            ["--model-path", "./no/such/checkpoint", "--model-type", "phi-2", "--image-file", IMAGE, "--device", "cpu"]
        )  # fmt: skip
    assert "model path not found: ./no/such/checkpoint" in capsys.readouterr().err


def test_every_flag_has_help():
    actions = cli.build_parser()._actions
    flags = {flag for action in actions for flag in action.option_strings}
    assert {
        "--model-path", "--model-base", "--model-type", "--image-file", "--device", "--conv-mode", "--temperature",
        "--repetition-penalty", "--max-new-tokens", "--load-8bit", "--load-4bit", "--debug",
    } <= flags  # fmt: skip
    assert all(action.help for action in actions)
