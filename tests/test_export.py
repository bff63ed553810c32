"""`python -m bunny.export`: the original's recorded checkpoints reproduce their goldens through the
exported Llava model; a LoRA output on its base exports as its merged checkpoint; the chat template
renders Bunny's prompts; what has no equivalent is refused before anything is read; a failed or
killed export leaves no complete-looking directory; the gguf format's LLM is the native model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bunny.conversation import get_conv_template
from bunny.export import write as export_write
from bunny.export.hf_llava import NotExportable, chat_template
from bunny.export.write import ExportRequest, export
from bunny.model.builder import load_pretrained_model
from test_eval_scripts import save_lora
from test_export_hf_llava import read_with_transformers
from tiny import FIXTURES, bunny_config

REFERENCE = sorted(p.name for p in (FIXTURES / "checkpoints").iterdir() if (FIXTURES / "goldens" / "models" / p.name).is_dir())
REPO = Path(__file__).resolve().parent.parent


def run_export(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bunny.export", *args], capture_output=True, text=True, cwd=cwd)


# -- the original's checkpoints ------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_exports(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("reference-export")
    exported = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(FIXTURES)  # the checkpoints name their tower "siglip-tiny", relative to the fixture root
        for name in REFERENCE:
            golden = json.loads((FIXTURES / "goldens" / "models" / name / "golden.json").read_text())
            exported[name] = root / name
            export(ExportRequest(model_path=golden["model_path"], model_type=golden["model_type"], output_dir=str(root / name)))
    return read_with_transformers(root, exported, image=FIXTURES / "images" / "test_image.png")


def test_reference_fixtures_present():
    assert len(REFERENCE) >= 3


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_checkpoints_reproduce_their_goldens_through_llava(reference_exports, name):
    golden = json.loads((FIXTURES / "goldens" / "models" / name / "golden.json").read_text())
    tensors = load_file(FIXTURES / "goldens" / "models" / name / "tensors.safetensors")
    read = reference_exports[name]
    assert read["prompt"] == golden["prompt"]
    assert torch.equal(read["pixel_values"], tensors["pixel_values"])
    vocab = golden["tokenizer_after_load"]["len"]
    torch.testing.assert_close(read["logits"][:, :vocab], tensors["logits"][0], atol=1e-4, rtol=0)
    assert read["new_tokens"].tolist() == golden["generate_use_cache"]["new_tokens"]


# -- LoRA ----------------------------------------------------------------------------------------


def test_lora_on_its_base_exports_as_its_merged_checkpoint(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "script"))
    from merge_lora_weights import merge, parse_args

    os.symlink(FIXTURES / "siglip-tiny", tmp_path / "siglip-tiny")
    monkeypatch.chdir(tmp_path)
    full = tmp_path / "full"
    shutil.copytree(FIXTURES / "checkpoints" / "bunny-phi-2-siglip-full", full)
    save_lora(full, tmp_path / "base", tmp_path / "lora")
    adapter = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(0)
    # the LLM's adapters only: a merged checkpoint reads its tower from mm_vision_tower, as the original's did
    adapter = {
        k: torch.randn(v.shape, generator=generator) * 0.2 if "lora_B" in k and "vision_tower" not in k else v
        for k, v in adapter.items()
    }
    save_file(adapter, tmp_path / "lora" / "adapter_model.safetensors", metadata={"format": "pt"})
    merge(parse_args(["--model-path", "lora", "--model-base", "base", "--model-type", "phi-2",
                      "--save-model-path", "merged", "--dtype", "float32"]))

    for name, path, base in (("from-lora", "lora", "base"), ("from-merged", "merged", None), ("from-full", "full", None)):
        export(ExportRequest(model_path=path, model_base=base, model_type="phi-2", output_dir=name, dtype="float32"))
    from_lora, from_merged = load_file("from-lora/model.safetensors"), load_file("from-merged/model.safetensors")
    assert from_lora.keys() == from_merged.keys()
    for key in from_lora:
        torch.testing.assert_close(from_lora[key], from_merged[key], atol=1e-6, rtol=0, msg=key)
    changed = load_file("from-full/model.safetensors")  # the adapter did change the weights
    assert any(not torch.equal(changed[key], from_lora[key]) for key in from_lora)
    configs = [json.loads(Path(d, "config.json").read_text()) for d in ("from-lora", "from-merged")]
    assert configs[0] == configs[1]


# -- chat template ---------------------------------------------------------------------------------


def _conversation(template: str, turns: list[str | None], system: str | None = None) -> str:
    conv = get_conv_template(template)
    if system is not None:
        conv.system = system
    for index, text in enumerate(turns):
        conv.append_message(conv.roles[index % 2], text)
    return conv.get_prompt()


@pytest.mark.parametrize("template", ["bunny", "phi3", "minicpm", "llama"])
def test_chat_template_renders_get_prompt(template):
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "tok-phi")
    tokenizer.chat_template = chat_template(template)

    def render(messages, generation=True):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    image_question = [{"type": "image"}, {"type": "text", "text": "  What is it? "}]
    assert render([{"role": "user", "content": image_question}]) == _conversation(template, ["<image>\nWhat is it?", None])
    multi = [
        {"role": "user", "content": "<image>\nDescribe it."},
        {"role": "assistant", "content": "A red square on a 'grey' field."},
        {"role": "user", "content": [{"type": "text", "text": "And the colour?"}]},
    ]
    assert render(multi) == _conversation(
        template, ["<image>\nDescribe it.", "A red square on a 'grey' field.", "And the colour?", None]
    )
    assert render(multi, generation=False) == _conversation(
        template, ["<image>\nDescribe it.", "A red square on a 'grey' field.", "And the colour?"]
    )
    with_system = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}]
    assert render(with_system) == _conversation(template, ["Hi", None], system="Answer briefly.")
    with pytest.raises(Exception, match="roles are system"):
        render([{"role": "tool", "content": "x"}])


def test_plain_template_is_refused():
    with pytest.raises(ValueError, match="no chat turns"):
        chat_template("plain")


# -- refusals, failures ----------------------------------------------------------------------------


def _config_only(directory: Path, tower: str, **overrides) -> Path:
    """A checkpoint directory holding only config.json: refusals must come before any weight is read."""
    bunny_config("phi-2", tower, **overrides).save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    "variant,message",
    [
        ("s2", "multi-scale S2"),
        ("eva", "eva_clip, which has no native equivalent"),
        ("linear", "projector is 'linear'"),
        ("ldp", "projector is 'ldp'"),
    ],
)
def test_what_llava_cannot_express_is_refused(tmp_path, siglip_tower, eva_tower, variant, message):
    tower = eva_tower if variant == "eva" else siglip_tower
    overrides = {"s2": dict(use_s2=True), "linear": dict(projector="linear"), "ldp": dict(projector="ldp")}.get(variant, {})
    checkpoint = _config_only(tmp_path / "checkpoint", tower, **overrides)
    for fmt in ("hf-llava", "gguf"):
        with pytest.raises(NotExportable, match=message):
            export(ExportRequest(model_path=str(checkpoint), model_type="phi-2", output_dir=str(tmp_path / "out"), format=fmt))
    if variant == "linear":  # the command line says it in one line, exit status 1
        run = run_export("--model-path", str(checkpoint), "--model-type", "phi-2", "--output-dir", str(tmp_path / "out"))
        assert run.returncode == 1 and message in run.stderr and "bunny.serve.model_worker" in run.stderr
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]  # nothing written


def test_an_existing_directory_is_never_emptied(tmp_path, in_fixture_root):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    args = ["--model-path", "checkpoints/bunny-phi-2-siglip-full", "--model-type", "phi-2", "--output-dir", str(tmp_path / "out")]
    run = run_export(*args, cwd=FIXTURES)
    assert run.returncode == 2 and "not written by this tool" in run.stderr
    assert os.listdir(tmp_path / "out") == ["notes.txt"]
    # an earlier export is replaced only with --overwrite
    export(ExportRequest(model_path="checkpoints/bunny-phi-2-siglip-full", model_type="phi-2", output_dir=str(tmp_path / "new")))
    args[-1] = str(tmp_path / "new")
    assert run_export(*args, cwd=FIXTURES).returncode == 2
    run = run_export(*args, "--overwrite", cwd=FIXTURES)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "new" / "export_info.json").is_file()


def test_a_failed_export_leaves_nothing(tmp_path, in_fixture_root, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_write, "_save_weights", fail)
    with pytest.raises(OSError, match="disk full"):
        export(ExportRequest(model_path="checkpoints/bunny-phi-2-siglip-full", model_type="phi-2", output_dir=str(tmp_path / "out")))
    assert os.listdir(tmp_path) == []


KILLED_AFTER_WEIGHTS = """
import os, signal, sys
import bunny.export.write as write
save = write._save_weights
def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
write._save_weights = save_then_die
from bunny.export.__main__ import main
main(sys.argv[1:])
"""


def test_a_killed_export_leaves_no_complete_looking_directory(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_WEIGHTS, "--model-path", "checkpoints/bunny-phi-2-siglip-full",
         "--model-type", "phi-2", "--output-dir", str(out)],
        cwd=FIXTURES, capture_output=True, text=True,
    )
    assert run.returncode == -9, run.stderr
    assert not out.exists()
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.partial-")
    assert "model.safetensors" in os.listdir(tmp_path / leftovers[0])  # killed after the weights were written
    assert "export_info.json" not in os.listdir(tmp_path / leftovers[0])


# -- gguf ------------------------------------------------------------------------------------------


def test_gguf_format_writes_the_native_llm_and_an_mmproj(tmp_path, in_fixture_root):
    import gguf

    name = "bunny-llama3-8b-siglip-full"
    out = tmp_path / "gguf"
    export(ExportRequest(model_path=f"checkpoints/{name}", model_type="llama3-8b", output_dir=str(out), format="gguf"))
    info = json.loads((out / "export_info.json").read_text())
    assert info["llm_architecture"] == "LlamaForCausalLM"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert not any(key.startswith("mm_") for key in config)

    tokenizer, bunny, _, _ = load_pretrained_model(f"checkpoints/{name}", None, None, "llama3-8b", device="cpu")
    native = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(native).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([tokenizer("Hello, can you help me?").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(native(ids).logits, bunny(ids).logits, atol=1e-5, rtol=0)
    exported_tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "<image>\nWhat is shown in this picture?"}]
    prompt = exported_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == _conversation("llama", ["<image>\nWhat is shown in this picture?", None])
    assert exported_tokenizer.eos_token == "<|end_of_text|>"

    reader = gguf.GGUFReader(out / info["mmproj"])
    architecture = reader.fields["general.architecture"]
    assert bytes(architecture.parts[architecture.data[0]]).decode() == "clip"


def test_export_script_writes_both_formats(tmp_path):
    """script/export.sh as users run it, under sh, from a directory holding checkpoints-$MODEL_TYPE/."""
    os.symlink(FIXTURES / "siglip-tiny", tmp_path / "siglip-tiny")
    shutil.copytree(FIXTURES / "checkpoints" / "bunny-phi-2-siglip-full", tmp_path / "checkpoints-phi-2" / "bunny-phi-2")
    environment = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", MODEL_TYPE="phi-2")
    run = subprocess.run(["sh", str(REPO / "script" / "export.sh")], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    llava, llama_cpp = tmp_path / "exports" / "bunny-phi-2-llava", tmp_path / "exports" / "bunny-phi-2-gguf"
    assert json.loads((llava / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]
    assert json.loads((llama_cpp / "config.json").read_text())["architectures"] == ["PhiForCausalLM"]
    assert (llama_cpp / json.loads((llama_cpp / "export_info.json").read_text())["mmproj"]).is_file()


def test_a_tokenizer_that_needs_remote_code_is_refused():
    from transformers import PreTrainedTokenizerBase

    from bunny.export.hf_llava import check_portable_tokenizer

    class RemoteTokenizer(PreTrainedTokenizerBase):  # what trust_remote_code gives: a class from the repository
        __module__ = "transformers_modules.stabilityai.tokenization_arcade100k"

    with pytest.raises(NotExportable, match="remote code"):
        check_portable_tokenizer(RemoteTokenizer.__new__(RemoteTokenizer))
    check_portable_tokenizer(AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "tok-phi"))


def test_gguf_format_carries_a_sentencepiece_model_along(tmp_path, in_fixture_root):
    """llama.cpp's converter reads phi-3's (and other SentencePiece) vocabularies from tokenizer.model,
    which saving a fast tokenizer does not write: the export copies the checkpoint's own."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(FIXTURES / "checkpoints" / "bunny-phi-2-siglip-full", checkpoint)
    (checkpoint / "tokenizer.model").write_bytes(b"sentencepiece model bytes")
    export(ExportRequest(model_path=str(checkpoint), model_type="phi-2", output_dir=str(tmp_path / "gguf"), format="gguf"))
    assert (tmp_path / "gguf" / "tokenizer.model").read_bytes() == b"sentencepiece model bytes"


@pytest.mark.parametrize("stored, expected", [("bfloat16", torch.bfloat16), ("float16", torch.float16), (None, torch.float32)])
def test_auto_dtype_is_the_checkpoints_own(tmp_path, siglip_tower, stored, expected):
    from bunny.export.write import checkpoint_dtype

    config = bunny_config("phi-2", siglip_tower)
    config.dtype = stored
    config.save_pretrained(tmp_path)
    assert checkpoint_dtype(str(tmp_path), "phi-2") == expected


def test_gguf_without_the_gguf_package_says_what_to_install(tmp_path, in_fixture_root, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'bunny\[export\]'"):
        export(ExportRequest(model_path="checkpoints/bunny-phi-2-siglip-full", model_type="phi-2",
                             output_dir=str(tmp_path / "out"), format="gguf"))
    assert not (tmp_path / "out").exists()
