"""Training end to end on tiny models: pretrain -> LoRA finetune -> merge -> load and generate, full
finetuning, resuming, the unfrozen tower, parameter groups, DeepSpeed on two CPU processes, and
the shipped scripts' flags."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerBase

from bunny.model.builder import load_pretrained_model
from bunny.train.args import parse_args, translate_legacy_flags
from bunny.train.train import train
from bunny.util.mm_utils import process_images, tokenizer_image_token
from tiny import FIXTURES

REPO = Path(__file__).resolve().parent.parent
TOWER = str(FIXTURES / "siglip-tiny")
IMAGES = str(FIXTURES / "images")
CAPTIONS = [("test_image.png", "A red square."), ("test_image_tall.png", "A blue disc."), ("test_image_square.png", "A checkerboard.")]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A base LLM (native phi, no Bunny fields), its tokenizer, and pretraining/finetuning data."""
    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    config = PhiConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        partial_rotary_factor=0.5, max_position_embeddings=512,
    )
    PhiForCausalLM(config).save_pretrained(root / "llm")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "tokenizers" / "tok-phi" / name, root / "llm" / name)
    pretrain = [
        {"id": f"p{i}", "image": image, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": caption}]}
        for i, (image, caption) in enumerate(CAPTIONS * 4)
    ]
    (root / "pretrain.json").write_text(json.dumps(pretrain))
    finetune = json.loads((FIXTURES / "data" / "finetune_samples_public.json").read_text()) * 3
    (root / "finetune.json").write_text(json.dumps(finetune))
    return root


def common(world: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(world / "llm"), "--model_type", "phi-2", "--vision_tower", TOWER,
        "--image_folder", IMAGES, "--output_dir", str(output), "--per_device_train_batch_size", "2",
        "--model_max_length", "2048", "--logging_steps", "1", "--report_to", "none", "--use_cpu", "True",
        "--seed", "42", "--dataloader_num_workers", "0", "--evaluation_strategy", "no", "--tf32", "True",
        "--lr_scheduler_type", "constant", "--weight_decay", "0.", "--disable_tqdm", "True", *extra,
    ]


def pretrain_args(world: Path, output: Path, steps: int = 4) -> list[str]:
    return common(
        world, output, "--version", "plain", "--data_path", str(world / "pretrain.json"), "--tune_mm_mlp_adapter", "True",
        "--image_aspect_ratio", "square", "--max_steps", str(steps), "--learning_rate", "1e-2",
        "--save_strategy", "steps", "--save_steps", "2",
    )


def finetune_args(world: Path, output: Path, projector: Path, *extra: str, steps: int = 4) -> list[str]:
    return common(
        world, output, "--version", "bunny", "--data_path", str(world / "finetune.json"),
        "--pretrain_mm_mlp_adapter", str(projector), "--image_aspect_ratio", "pad", "--max_steps", str(steps),
        "--save_strategy", "steps", "--save_steps", "2", *extra,
    )


LORA = ("--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", "--mm_projector_lr", "1e-3", "--learning_rate", "1e-3")


@pytest.fixture(scope="module")
def pretrained(world) -> Path:
    output = world / "checkpoints-pretrain" / "bunny-phi-2-pretrain"
    train(pretrain_args(world, output, steps=6))
    return output


@pytest.fixture(scope="module")
def lora_run(world, pretrained) -> Path:
    output = world / "checkpoints-phi-2" / "bunny-lora-phi-2"
    train(finetune_args(world, output, pretrained / "mm_projector.bin", *LORA, steps=6))
    return output


def losses(output: Path) -> list[float]:
    state = json.loads((output / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def first_logits(model_path, model_base=None, model_type="phi-2"):
    tokenizer, model, processor, _ = load_pretrained_model(str(model_path), model_base and str(model_base), None, model_type, device="cpu")
    ids = tokenizer_image_token("A chat. USER: <image>\nWhat is it? ASSISTANT:", tokenizer, return_tensors="pt")[None]
    images = process_images([Image.open(FIXTURES / "images" / "test_image.png")], processor, model.config)
    with torch.no_grad():
        logits = model(ids, images=images).logits
        tokens = model.generate(ids, images=images, do_sample=False, max_new_tokens=4, min_new_tokens=4)
    return logits, tokens


def state_of(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".bin":
        return torch.load(path, weights_only=True)
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# -- artifacts -----------------------------------------------------------------------------------
def test_pretraining_writes_projector_and_learns(pretrained):
    assert sorted(state_of(pretrained / "mm_projector.bin")) == [
        "model.mm_projector.0.bias", "model.mm_projector.0.weight", "model.mm_projector.2.bias", "model.mm_projector.2.weight"
    ]
    config = json.loads((pretrained / "config.json").read_text())
    assert config["model_type"] == "bunny-phi" and config["tune_mm_mlp_adapter"] is True
    assert config["mm_hidden_size"] == 32 and config["mm_vision_tower"] == TOWER
    for step in (2, 4, 6):
        checkpoint = pretrained / f"checkpoint-{step}"
        assert {"config.json", "mm_projector.bin", "optimizer.pt", "scheduler.pt"} <= set(os.listdir(checkpoint))
        assert not any(name.endswith(".safetensors") for name in os.listdir(checkpoint))
    values = losses(pretrained)
    assert values[-1] < values[0]


def test_lora_pipeline_merge_and_load(world, lora_run, tmp_path):
    files = set(os.listdir(lora_run))
    assert {"config.json", "adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin"} <= files
    adapter = json.loads((lora_run / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["dense", "fc1", "fc2", "k_proj", "q_proj", "v_proj"]
    assert sorted(state_of(lora_run / "non_lora_trainables.bin")) == [
        f"base_model.model.model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")
    ]
    adapter_keys = state_of(lora_run / "adapter_model.safetensors")
    assert adapter_keys and all("lora_" in k and "vision_tower" not in k for k in adapter_keys)
    config = json.loads((lora_run / "config.json").read_text())
    assert config["use_cache"] is True and config["mm_projector_lr"] == 1e-3 and config["image_aspect_ratio"] == "pad"
    assert losses(lora_run)[-1] < losses(lora_run)[0]

    # Every checkpoint holds what it takes to load it.
    for step in (2, 4):
        checkpoint = lora_run / f"checkpoint-{step}"
        assert {"config.json", "non_lora_trainables.bin", "adapter_config.json"} <= set(os.listdir(checkpoint))
        first_logits(checkpoint, world / "llm")

    merged = tmp_path / "bunny-phi-2-merged"
    subprocess.run(
        [sys.executable, str(REPO / "script" / "merge_lora_weights.py"), "--model-path", str(lora_run),
         "--model-base", str(world / "llm"), "--model-type", "phi-2", "--save-model-path", str(merged), "--dtype", "float32"],
        check=True, capture_output=True,
    )
    assert os.listdir(tmp_path) == ["bunny-phi-2-merged"]  # nothing left beside it
    lora_logits, lora_tokens = first_logits(lora_run, world / "llm")
    merged_logits, merged_tokens = first_logits(merged)
    torch.testing.assert_close(merged_logits, lora_logits, atol=1e-5, rtol=0)
    assert torch.equal(merged_tokens, lora_tokens)
    # The LoRA run changed the model: its logits differ from the base LLM with the pretrained projector.
    base_logits, _ = first_logits(lora_run.parent.parent / "checkpoints-pretrain" / "bunny-phi-2-pretrain", world / "llm")
    assert (base_logits - lora_logits).abs().max() > 1e-3


def load_merge_script():
    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO / "script" / "merge_lora_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_merge_never_deletes_what_was_there(world, lora_run, tmp_path, monkeypatch, capsys):
    merge_script = load_merge_script()
    flags = ["--model-path", str(lora_run), "--model-base", str(world / "llm"), "--model-type", "phi-2", "--dtype", "float32"]

    def refused(target, *extra):
        with pytest.raises(SystemExit) as exit_info:
            merge_script.parse_args([*flags, "--save-model-path", str(target), *extra])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    # the original emptied the directory first; `--save-model-path .` lost the working directory
    assert "not written by this tool" in refused(precious, "--overwrite")
    monkeypatch.chdir(precious)
    assert "not written by this tool" in refused(".")
    assert (precious / "notes.txt").read_text() == "mine"

    target = tmp_path / "merged"
    first = merge_script.merge(merge_script.parse_args([*flags, "--save-model-path", str(target)]))
    info = json.loads((target / "merge_info.json").read_text())
    assert first == str(target) and info["model_path"] == str(lora_run) and info["dtype"] == "float32"
    assert "--overwrite" in refused(target)  # an earlier output is replaced only on request
    (target / "stale.txt").write_text("from the earlier merge")
    merge_script.merge(merge_script.parse_args([*flags, "--save-model-path", str(target), "--overwrite"]))
    assert not (target / "stale.txt").exists() and (target / "model.safetensors").exists()
    # a merge that fails half-way leaves the earlier output as it was, and nothing half-written beside it
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        merge_script.merge(merge_script.parse_args([*flags, "--save-model-path", str(target), "--overwrite"]))
    assert (target / "model.safetensors").exists() and (target / "merge_info.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["merged", "work"]


def test_training_refuses_an_llm_of_another_model_type(world, tmp_path):
    argv = pretrain_args(world, tmp_path / "out")
    argv[argv.index("--model_type") + 1] = "qwen1.5-1.8b"
    with pytest.raises(ValueError, match=r"llm holds a 'phi' checkpoint.*pass --model-type phi-1\.5 or phi-2"):
        train(argv)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_full_finetune_with_unfrozen_tower(world, pretrained, tmp_path):
    output = tmp_path / "bunny-phi-2-full"
    train(finetune_args(world, output, pretrained / "mm_projector.bin", "--unfreeze_vision_tower", "True",
                        "--learning_rate", "1e-3", "--mm_projector_lr", "1e-2", steps=2))
    config = json.loads((output / "config.json").read_text())
    assert config["unfreeze_vision_tower"] is True and config["tune_mm_mlp_adapter"] is False
    saved = state_of(output / "model.safetensors")
    original = state_of(FIXTURES / "siglip-tiny" / "model.safetensors")
    prefix = "model.vision_tower.vision_tower."
    tower = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
    assert set(tower) == set(original)
    # The tower really trained (the original's did not): its first layer moved.
    key = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert (tower[key].float() - original[key].float()).abs().max() > 1e-4
    tokenizer, model, _, _ = load_pretrained_model(str(output), None, None, "phi-2", device="cpu")
    loaded = model.get_vision_tower().state_dict()[f"vision_tower.{key}"]
    torch.testing.assert_close(loaded, tower[key].to(loaded.dtype))


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_on_the_cpu_trains_a_bf16_model_through_float32_masters(world, pretrained, tmp_path, lora):
    output = tmp_path / ("bunny-lora-phi-2-bf16" if lora else "bunny-phi-2-bf16")
    extra = LORA if lora else ("--learning_rate", "1e-3", "--mm_projector_lr", "1e-2")
    trainer = train(finetune_args(world, output, pretrained / "mm_projector.bin", "--bf16", "True", *extra, steps=2))
    # Weights, activations and gradients in bfloat16, as under DeepSpeed; no float32 weight left.
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    masters = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert masters and {p.dtype for p in masters} == {torch.float32}
    assert sorted({group["lr"] for group in trainer.optimizer.param_groups}) == ([1e-3] if lora else [1e-3, 1e-2])
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    assert len(masters) == len(trained)
    # Each trained weight is its master rounded (the groups order them differently).
    rounded = [m.to(torch.bfloat16) for m in masters]
    assert all(any(r.shape == p.shape and torch.equal(r, p.detach()) for r in rounded) for p in trained)
    state = torch.load(output / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert [t.dtype for t in state["master_weights"]] == [torch.float32] * len(masters)
    assert all(math.isfinite(loss) for loss in losses(output))
    if lora:
        assert {t.dtype for t in state_of(output / "adapter_model.safetensors").values()} == {torch.bfloat16}
        logits, _ = first_logits(output, world / "llm")
    else:
        assert state_of(output / "model.safetensors")["model.layers.0.mlp.fc1.weight"].dtype == torch.bfloat16
        logits, _ = first_logits(output)
    assert torch.isfinite(logits).all()


def test_master_weights_only_for_bf16_on_the_cpu_without_deepspeed():
    """On a GPU, under DeepSpeed, with QLoRA or in float32 the Trainer's own mixed precision stays."""
    from types import SimpleNamespace

    from bunny.train.train import uses_master_weights

    def args(**changes):
        return SimpleNamespace(**{"bf16": True, "deepspeed": None, "bits": 16, "device": torch.device("cpu"), **changes})

    assert uses_master_weights(args())
    assert not uses_master_weights(args(device=torch.device("cuda", 0)))
    assert not uses_master_weights(args(deepspeed="script/deepspeed/zero2.json"))
    assert not uses_master_weights(args(bits=4))
    assert not uses_master_weights(args(bf16=False))


def test_bf16_on_the_cpu_refuses_an_optimiser_that_builds_its_own_groups(world, pretrained, tmp_path, monkeypatch):
    from bunny.data.tokenizer import load_training_tokenizer
    from bunny.train.train import build_model
    from bunny.train.trainer import BunnyTrainer

    argv = finetune_args(world, tmp_path / "x", pretrained / "mm_projector.bin", "--bf16", "True")
    model_args, data_args, args = parse_args(argv)
    model = build_model(model_args, data_args, args, load_training_tokenizer(model_args.model_name_or_path, "phi-2", 2048))
    trainer = BunnyTrainer(model=model.to(torch.bfloat16), args=args, master_weights=True)
    # as GaLore's handler does: the parameter groups come with the optimiser's arguments
    monkeypatch.setattr(trainer, "get_optimizer_cls_and_kwargs", lambda *a: (torch.optim.AdamW, {"params": [], "lr": 1e-3}))
    with pytest.raises(ValueError, match="builds its own parameter groups"):
        trainer.create_optimizer()


def test_projector_lr_groups_and_frozen_parts(world, pretrained, tmp_path):
    from bunny.train.train import build_model
    from bunny.data.tokenizer import load_training_tokenizer

    argv = finetune_args(world, tmp_path / "x", pretrained / "mm_projector.bin", "--mm_projector_lr", "3e-3",
                         "--learning_rate", "1e-4", "--freeze_backbone", "True", "--unfreeze_vision_tower", "True")
    model_args, data_args, args = parse_args(argv)
    tokenizer = load_training_tokenizer(model_args.model_name_or_path, "phi-2", 2048)
    model = build_model(model_args, data_args, args, tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("mm_projector" in n or "vision_tower" in n for n in trainable)
    assert any("vision_tower" in n for n in trainable)
    from bunny.train.trainer import BunnyTrainer

    trainer = BunnyTrainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    lrs = sorted({group["lr"] for group in optimizer.param_groups})
    assert lrs == [3e-3]  # only projector/tower train here, all at the projector rate
    projector = dict(model.named_parameters())["model.mm_projector.0.weight"]
    assert torch.equal(projector, state_of(pretrained / "mm_projector.bin")["model.mm_projector.0.weight"])


@pytest.mark.parametrize("stage", ["pretrain", "lora"])
def test_seed_decides_the_new_weights_whatever_the_callers_random_state(world, pretrained, tmp_path, stage):
    """The projector (pretraining) and the LoRA matrices (finetuning) start from --seed, so two runs
    with the same flags give the same weights."""
    name = "mm_projector.bin" if stage == "pretrain" else "adapter_model.safetensors"
    states = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        output = tmp_path / f"run-{caller_seed}"
        if stage == "pretrain":
            train(pretrain_args(world, output, steps=1))
        else:
            train(finetune_args(world, output, pretrained / "mm_projector.bin", *LORA, steps=1))
        states.append(state_of(output / name))
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("stage", ["pretrain", "full", "lora", "full-bf16"])
def test_resume_reaches_the_same_weights(world, pretrained, tmp_path, stage):
    """A run resumed from its checkpoint ends with the weights of the run that went straight through
    (with --bf16 on the CPU, only if the float32 master weights were saved and restored)."""
    def argv(output: Path) -> list[str]:
        if stage == "pretrain":
            return pretrain_args(world, output, steps=4)
        extra = {"lora": LORA, "full": ("--learning_rate", "1e-3"), "full-bf16": ("--learning_rate", "1e-3", "--bf16", "True")}[stage]
        return finetune_args(world, output, pretrained / "mm_projector.bin", *extra, "--group_by_modality_length", "True", steps=4)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(argv(straight))
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    train(argv(resumed))
    name = {"pretrain": "mm_projector.bin", "lora": "adapter_model.safetensors"}.get(stage, "model.safetensors")
    a, b = state_of(straight / name), state_of(resumed / name)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0, msg=key)
    if stage == "lora":
        a, b = state_of(straight / "non_lora_trainables.bin"), state_of(resumed / "non_lora_trainables.bin")
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=0, rtol=0, msg=key)
    assert losses(resumed)[-1] == losses(straight)[-1]


# -- flags ---------------------------------------------------------------------------------------
def script_commands(path: Path) -> list[list[str]]:
    """The train.py arguments of every `deepspeed bunny/train/train.py` command in a shell script."""
    text = path.read_text()
    variables = dict(re.findall(r"^(\w+)=(\S+)$", text, flags=re.M))
    for _ in range(3):
        for name, value in variables.items():
            text = text.replace(f"${name}", value)
    commands = []
    for match in re.finditer(r"deepspeed bunny/train/train\.py(.*?)(?:\|\s*tee|$)", text.replace("\\\n", " "), flags=re.S):
        commands.append(shlex.split(match.group(1).split("2>&1")[0]))
    return commands


SCRIPTS = sorted((REPO / "script" / "train").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_shipped_script_flags_parse(script, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    commands = script_commands(script)
    assert commands, f"no train.py command found in {script}"
    for argv in commands:
        deepspeed_config = argv.index("--deepspeed")
        assert argv[deepspeed_config + 1].startswith("./script/deepspeed/zero")
        del argv[deepspeed_config : deepspeed_config + 2]  # parsed on its own it would set up DeepSpeed
        model_args, data_args, args = parse_args(argv + ["--use_cpu", "True"])
        assert model_args.model_type == "phi-2" and args.bf16 and args.gradient_checkpointing
        assert args.eval_strategy == "no" and args.model_max_length == 2048 and args.warmup_steps == 0.03
        if "lora" in script.name:
            assert args.lora_enable and args.lora_r == 128 and args.lora_alpha == 256 and args.mm_projector_lr == 2e-5


def test_legacy_flags_and_validation():
    assert translate_legacy_flags(["--evaluation_strategy", "no", "--x"]) == ["--eval_strategy", "no", "--x"]
    assert translate_legacy_flags(["--warmup_ratio=0.03"]) == ["--warmup_steps=0.03"]
    if not torch.cuda.is_available():
        assert translate_legacy_flags(["--tf32", "True", "--a", "1"]) == ["--a", "1"]
        assert translate_legacy_flags(["--tf32=True"]) == []
    with pytest.raises(ValueError, match="Unknown Model Type 'gpt-5'.*phi-2"):
        parse_args(["--model_name_or_path", "x", "--model_type", "gpt-5", "--vision_tower", "t", "--data_path", "d", "--output_dir", "o"])
    with pytest.raises(ValueError, match="--vision_tower is required"):
        parse_args(["--model_name_or_path", "x", "--model_type", "phi-2", "--data_path", "d", "--output_dir", "o"])


# -- DeepSpeed, two processes on the CPU ------------------------------------------------------------
@pytest.mark.parametrize("zero,lora", [("zero2", False), ("zero2", True), ("zero3", False), ("zero3", True)])
def test_deepspeed_two_processes(world, pretrained, tmp_path, zero, lora):
    deepspeed = shutil.which("deepspeed", path=os.path.dirname(sys.executable))
    if deepspeed is None:
        pytest.fail("deepspeed is not installed (it is part of the dev extra)")
    output = tmp_path / ("bunny-lora-phi-2" if lora else "bunny-phi-2")
    extra = [*LORA] if lora else ["--learning_rate", "1e-4"]
    argv = finetune_args(world, output, pretrained / "mm_projector.bin", *extra, steps=2)
    argv += ["--deepspeed", str(REPO / "script" / "deepspeed" / f"{zero}.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with socket.socket() as probe:  # a free rendezvous port: the default one may still be held by the last run
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        result = subprocess.run(
            [deepspeed, "--num_gpus", "2", "--master_port", str(port), str(REPO / "bunny" / "train" / "train.py"), *argv],
            capture_output=True, text=True, env=env, timeout=600,
        )
    finally:
        # DeepSpeed's CPU all-reduce leaves one 66 MB shared-memory buffer per rank, named by the
        # rendezvous port; without this, every run of the suite kept 130 MB of RAM in /dev/shm.
        for buffer in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            buffer.unlink(missing_ok=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if lora:
        assert {"adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin", "config.json"} <= set(os.listdir(output))
        assert sorted(state_of(output / "non_lora_trainables.bin"))[0] == "base_model.model.model.mm_projector.0.bias"
        first_logits(output, world / "llm")
    else:
        saved = state_of(output / "model.safetensors")
        assert "model.mm_projector.0.weight" in saved and any(k.startswith("model.vision_tower.vision_tower.") for k in saved)
        first_logits(output)


def test_qlora_four_bit(world, pretrained, tmp_path):
    output = tmp_path / "bunny-qlora-phi-2"
    train(finetune_args(world, output, pretrained / "mm_projector.bin", *LORA, "--bits", "4", "--save_strategy", "no", steps=2))
    assert {"adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin"} <= set(os.listdir(output))
    assert losses(output)
    logits, _ = first_logits(output, world / "llm")
    assert torch.isfinite(logits).all()
    # The run's quantisation is recorded but not imposed on whoever loads the adapter.
    assert "quantization_config" in json.loads((output / "config.json").read_text())
