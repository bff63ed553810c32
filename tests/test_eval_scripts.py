"""`script/eval/{full,lora}/*.sh` run as users run them: from a working directory holding
`checkpoints-$MODEL_TYPE/$TARGET_DIR` and `eval/<benchmark>/` with the official files (prepared by
`python -m bunny.eval.prepare`), on the CPU, against a tiny checkpoint."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import PhiConfig, PhiForCausalLM

from benchmark_files import MAKERS, quick_checkpoint
from tiny import FIXTURES

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "script" / "eval"
BENCHMARKS = ("mme", "mmbench", "seedbench", "mmmu", "cmmmu", "vqav2", "gqa", "scienceqa", "pope", "mmvet", "textvqa", "vizwiz")


def save_lora(full: Path, base_dir: Path, lora_dir: Path) -> None:
    """A base LLM directory and a LoRA checkpoint on it that loads as the same model as `full` (a
    zero-initialised adapter, the projector in non_lora_trainables.bin)."""
    from bunny.model.builder import load_pretrained_model

    config = json.loads((full / "config.json").read_text())
    llm_config = {k: v for k, v in config.items() if not k.startswith(("mm_", "tune_", "freeze_", "unfreeze_", "use_"))}
    llm_config.update(model_type="phi", architectures=["PhiForCausalLM"])
    weights = load_file(full / "model.safetensors")
    base = PhiForCausalLM(PhiConfig(**{k: v for k, v in llm_config.items() if k != "model_type"}))
    llm_weights = {k: v for k, v in weights.items() if "mm_projector" not in k and "vision_tower" not in k}
    llm_weights["lm_head.bias"] = torch.zeros(config["vocab_size"])
    base.load_state_dict(llm_weights, strict=True)
    base.save_pretrained(base_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        for directory in (base_dir, lora_dir):
            directory.mkdir(exist_ok=True)
            (directory / name).write_bytes((full / name).read_bytes())
    _, model, _, _ = load_pretrained_model(str(full), None, "bunny-phi-2", "phi-2", device="cpu")
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(lora_dir)
    model.config.save_pretrained(lora_dir)
    projector = {f"base_model.model.{k}": v for k, v in model.state_dict().items() if "mm_projector" in k}
    torch.save(projector, lora_dir / "non_lora_trainables.bin")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A user's working directory: checkpoints of both kinds and every benchmark's prepared data."""
    root = tmp_path_factory.mktemp("work")
    os.symlink(FIXTURES / "siglip-tiny", root / "siglip-tiny")  # the checkpoint names its tower relative to here
    full = quick_checkpoint(root / "checkpoints-phi-2" / "bunny-phi-2")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        save_lora(full, root / "phi-2-base", root / "checkpoints-phi-2" / "bunny-lora-phi-2")
    finally:
        os.chdir(cwd)
    for benchmark, make in MAKERS.items():
        make(root / "eval")
        prepared = subprocess.run([sys.executable, "-m", "bunny.eval.prepare", benchmark], cwd=root, capture_output=True, text=True)
        assert prepared.returncode == 0, prepared.stderr
    return root


def run_script(workdir: Path, kind: str, benchmark: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "LANG", "SPLIT", "TARGET_DIR")}
    environment.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env)
    if kind == "lora":
        environment["MODEL_BASE"] = str(workdir / "phi-2-base")
    shell = "sh" if kind == "full" else "bash"  # users run them either way
    return subprocess.run([shell, str(SCRIPTS / kind / f"{benchmark}.sh")], cwd=workdir, env=environment,
                          capture_output=True, text=True, timeout=300)


# What each pipeline prints or writes when it has run to the end (the answers are all empty).
FINISHED = {
    "mme": ["=========== Perception ===========", "=========== Cognition ==========="],
    "mmbench": [],
    "seedbench": ["Total accuracy"],
    "mmmu": ["'Overall': {'num': 31, 'acc': "],
    "cmmmu": ["Overall"],
    "vqav2": [],
    "gqa": ["Accuracy: 0.00%", "Accuracy / structural type:"],
    "scienceqa": ["Total: 2, Correct: 0"],
    "pope": ["Average F1 score"],
    "mmvet": [],
    "textvqa": ["Samples: 1", "Accuracy: 0.00%"],
    "vizwiz": [],
}
OUTPUTS = {
    "mme": "eval/mme/answers_upload/{target}/res.txt",
    "mmbench": "eval/mmbench/answers_upload/MMBench_DEV_EN_legacy/{target}.xlsx",
    "seedbench": "eval/seed-bench/answers_upload/{target}.jsonl",
    "mmmu": "eval/mmmu/answers_upload/validation/{target}.json",
    "cmmmu": "eval/cmmmu/answers_upload/val/{target}.jsonl",
    "vqav2": "eval/vqav2/answers_upload/bunny_vqav2_mscoco_test-dev2015/{target}.json",
    "gqa": "eval/gqa/testdev_balanced_predictions.json",
    "scienceqa": "eval/scienceqa/answers/{target}_result.json",
    "pope": "eval/pope/answers/{target}.jsonl",
    "mmvet": "eval/mm-vet/answers_upload/{target}.json",
    "textvqa": "eval/textvqa/answers/{target}.jsonl",
    "vizwiz": "eval/viswiz/answers_upload/{target}.json",
}


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_full_script_runs_to_its_scores(workdir, benchmark):
    result = run_script(workdir, "full", benchmark, **({"SPLIT": "validation"} if benchmark == "mmmu" else {}))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for line in FINISHED[benchmark]:
        assert line in result.stdout
    assert (workdir / OUTPUTS[benchmark].format(target="bunny-phi-2")).is_file()


@pytest.mark.parametrize("benchmark", ["mme", "gqa", "scienceqa", "mmmu"])
def test_lora_script_runs_with_its_base(workdir, benchmark):
    result = run_script(workdir, "lora", benchmark, **({"SPLIT": "validation"} if benchmark == "mmmu" else {}))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for line in FINISHED[benchmark]:
        assert line in result.stdout
    assert (workdir / OUTPUTS[benchmark].format(target="bunny-lora-phi-2")).is_file()


def test_several_gpus_split_the_questions_into_chunks_merged_in_order(workdir):
    result = run_script(workdir, "full", "gqa", CUDA_VISIBLE_DEVICES="0,1,2", TARGET_DIR="bunny-phi-2")
    assert result.returncode == 0, result.stderr[-3000:]
    answers = workdir / "eval/gqa/answers/bunny_gqa_testdev_balanced/bunny-phi-2"
    parts = [json.loads(line) for i in range(3) for line in (answers / f"3_{i}.jsonl").read_text().splitlines()]
    merged = [json.loads(line) for line in (answers / "merge.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in merged] == ["q1", "q2"] and merged == parts  # the third chunk is empty


def test_a_failed_chunk_stops_the_script_before_scoring(workdir, tmp_path):
    result = run_script(workdir, "full", "gqa", SPLIT="absent", TARGET_DIR="bunny-phi-2")
    assert result.returncode != 0
    assert "answering a chunk failed" in result.stderr and "Accuracy" not in result.stdout


def generator_calls(script: Path) -> list[list[str]]:
    """The `python -m bunny.eval.*` command lines of a script, continuation lines joined."""
    text = script.read_text().replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if "-m" in words and words[words.index("-m") + 1].startswith("bunny.eval"):
            calls.append(words[words.index("-m") + 1 :])
        elif words[:1] == ["answer_in_chunks"]:
            # the function adds the chunk flags and the answers file
            calls.append(["bunny.eval.model_vqa_loader", *words[2:], "--answers-file", "x", "--num-chunks", "2", "--chunk-idx", "1"])
    return calls


@pytest.mark.parametrize("kind", ["full", "lora"])
@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_every_script_flag_parses(kind, benchmark, monkeypatch):
    """Each module a script calls accepts the script's flags (variables given placeholder values)."""
    import importlib

    script = SCRIPTS / kind / f"{benchmark}.sh"
    defaults = dict(re.findall(r"^(\w+)=\$\{\w+:-(.*)\}$", script.read_text(), re.MULTILINE))
    assert defaults["MODEL_TYPE"] == "phi-2" and defaults["CONV_MODE"] == "bunny"
    calls = generator_calls(script)
    assert calls, "the script calls no bunny.eval module"
    for module_name, *flags in calls:
        flags = [re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), "x"), flag) for flag in flags]
        module = importlib.import_module(module_name)
        parser = module.build_parser() if hasattr(module, "build_parser") else None
        if parser is None:
            continue  # scorers parse in main(); their flags run in the end-to-end tests
        args = parser.parse_args(flags)
        if module_name.startswith("bunny.eval.model_vqa"):
            assert (args.model_base is not None) == (kind == "lora")


def test_mmmu_test_split_is_written_for_upload(workdir):
    result = run_script(workdir, "full", "mmmu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "upload ./eval/mmmu/answers_upload/test/bunny-phi-2.json to the MMMU test server" in result.stdout
    predictions = json.loads((workdir / "eval/mmmu/answers_upload/test/bunny-phi-2.json").read_text())
    assert len(predictions) == 31 and predictions["test_Accounting_2"] == ""  # open: the raw (empty) answer
