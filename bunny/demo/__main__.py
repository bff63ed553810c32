"""The demo: train a tiny Bunny on generated pictures of shapes, show that it sees, and chat with it.

Run as (`make demo` does this):
    python -m bunny.demo [--output-dir outputs/demo] [--quick] [--seed 0]

Stages, each through the entry point a user would run:
  1. data        `python -m bunny.demo.synthetic`: pictures, captions, conversations, held-out questions
  2. stand-ins   a tokenizer, a SigLIP tower and a phi-2-architecture LLM, briefly pretrained on that
                 data (bunny/demo/stand_ins.py), as local model directories
  3. pretrain    `bunny/train/train.py --tune_mm_mlp_adapter True` (template `plain`)
  4. finetune    `bunny/train/train.py --lora_enable True` (template `bunny`)
  5. merge       `script/merge_lora_weights.py`
  6. evaluate    `python -m bunny.eval run shapes` on the held-out questions, once with their
                 pictures, once with a blank picture, and on the foreign set (report: eval/report.json)
  7. chat        `python -m bunny.serve.cli` about images/shapes.png

Writes `<output-dir>/metrics.json` (accuracy, accuracy_by_type, blind_accuracy, foreign_accuracy
(pictures drawn by another procedure, bunny.demo.foreign), chance_accuracy, tower_patch_accuracy
(the stand-in tower's classifiers on held-out pictures), timings, the merged checkpoint and its
model type) and `<output-dir>/losses.png`. Everything is
seeded: two runs give the same metrics, timings aside. `--quick` is the small version the test
suite runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from bunny.util.utils import atomic_write

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_TYPE = "phi-2"
CHAT_IMAGE = os.path.join(REPO, "images", "shapes.png")
CHAT_QUESTIONS = ("How many shapes are there?", "What colour is the triangle?", "Where is the circle?")


@dataclass(frozen=True)
class Settings:
    num_pretrain: int = 3000
    num_finetune: int = 6000
    num_eval: int = 400
    num_foreign: int = 120
    tower_steps: int = 4000
    llm_steps: tuple[int, int] = (600, 150)  # short questions, then the templates
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1e-3
    finetune_batch_size: int = 16
    finetune_epochs: int = 2
    finetune_lr: float = 1e-3
    lora_r: int = 64
    lora_alpha: int = 128
    eval_batch_size: int = 50


# The test suite's version (under 3 minutes): fewer pictures and steps, smaller finetuning batches
# so that it still takes enough optimiser steps to start reading the pictures.
QUICK = Settings(
    num_pretrain=600, num_finetune=1200, num_eval=80, num_foreign=40, tower_steps=800, llm_steps=(200, 40), finetune_batch_size=8,
    finetune_epochs=1,
)


class Stages:
    """Runs the stages in order, timing each and echoing the commands it runs."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def run(self, name: str, function: Any, *args: Any) -> Any:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        result = function(*args)
        self.timings[name] = round(time.perf_counter() - start, 1)
        print(f"=== {name}: {self.timings[name]:.1f} s", flush=True)
        return result


def command(argv: Sequence[str], stdin: str | None = None, capture: bool = False) -> str:
    """Run one of the project's entry points from the repository root, echoing it first."""
    print("$ " + " ".join(argv), flush=True)
    result = subprocess.run(
        [sys.executable, *argv], cwd=REPO, input=stdin, text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    if result.returncode:
        raise SystemExit(f"demo: `{' '.join(argv)}` failed with exit status {result.returncode}")
    return result.stdout or ""


# -- stages ----------------------------------------------------------------------------------------
def make_data(directory: str, settings: Settings, seed: int) -> dict[str, str]:
    from bunny.demo import synthetic

    return synthetic.main([
        "--output-dir", directory, "--seed", str(seed), "--num-pretrain", str(settings.num_pretrain),
        "--num-finetune", str(settings.num_finetune), "--num-eval", str(settings.num_eval),
        "--num-foreign", str(settings.num_foreign),
    ])


def make_stand_ins(data: dict[str, str], directory: str, settings: Settings, seed: int) -> dict[str, Any]:
    import torch
    from PIL import Image

    from bunny.demo import synthetic
    from bunny.demo import stand_ins

    with open(data["pretrain"]) as f:
        pretrain = json.load(f)
    with open(data["finetune"]) as f:
        finetune = json.load(f)
    with open(data["text"]) as f:
        texts = f.read().splitlines()
    layouts = synthetic.read_layouts(data["layouts"])
    # What each image token of each training picture shows: the tower learns to see it, the LLM to read it.
    pictures, spec = sorted(layouts), stand_ins.TowerSpec()
    targets = torch.stack([stand_ins.patch_targets(layouts[p], spec) for p in pictures])
    words = {picture: stand_ins.patch_words(t) for picture, t in zip(pictures, targets)}
    curriculum = stand_ins.llm_curriculum(finetune, pretrain, words)

    llm_dir, tower_dir = os.path.join(directory, "phi-demo"), os.path.join(directory, "siglip-demo")
    rendered = ["".join(segment.text for segment in text) for stage in curriculum for text in stage]
    tokenizer = stand_ins.train_tokenizer(texts + rendered, llm_dir, words=stand_ins.PATCH_WORDS)
    images = [Image.open(os.path.join(data["image_folder"], picture)).convert("RGB") for picture in pictures]
    tower = stand_ins.pretrain_tower(images, targets, tower_dir, spec, steps=settings.tower_steps, seed=seed)
    print(f"vision tower, share of held-out patches named right: {tower.accuracy}", flush=True)
    llm_losses = stand_ins.pretrain_llm(curriculum, tokenizer, llm_dir, steps=settings.llm_steps, seed=seed)
    return {
        "llm": llm_dir, "tower": tower_dir, "tower_patch_accuracy": tower.accuracy,
        "losses": {"vision tower": tower.losses, "language model": llm_losses},
    }


def common_train_flags(base: dict[str, Any], data: dict[str, str], output_dir: str, seed: int) -> list[str]:
    return [
        "bunny/train/train.py",
        "--model_name_or_path", base["llm"], "--model_type", MODEL_TYPE, "--vision_tower", base["tower"],
        "--image_folder", data["image_folder"], "--mm_projector_type", "mlp2x_gelu", "--image_aspect_ratio", "pad",
        "--output_dir", output_dir, "--model_max_length", "512", "--num_train_epochs", "1",
        "--weight_decay", "0.", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "5",
        "--save_strategy", "no", "--dataloader_num_workers", "0", "--report_to", "none", "--use_cpu", "True",
        "--seed", str(seed), "--data_seed", str(seed),
    ]


def pretrain(base: dict[str, Any], data: dict[str, str], output_dir: str, settings: Settings, seed: int) -> str:
    command(common_train_flags(base, data, output_dir, seed) + [
        "--version", "plain", "--data_path", data["pretrain"], "--tune_mm_mlp_adapter", "True",
        "--per_device_train_batch_size", str(settings.pretrain_batch_size), "--learning_rate", str(settings.pretrain_lr),
    ])
    return os.path.join(output_dir, "mm_projector.bin")


def finetune(base: dict[str, Any], data: dict[str, str], projector: str, output_dir: str, settings: Settings, seed: int) -> None:
    flags = common_train_flags(base, data, output_dir, seed)
    flags[flags.index("--num_train_epochs") + 1] = str(settings.finetune_epochs)
    command(flags + [
        "--version", "bunny", "--data_path", data["finetune"], "--pretrain_mm_mlp_adapter", projector,
        "--lora_enable", "True", "--lora_r", str(settings.lora_r), "--lora_alpha", str(settings.lora_alpha),
        "--mm_projector_lr", str(settings.finetune_lr), "--learning_rate", str(settings.finetune_lr),
        "--per_device_train_batch_size", str(settings.finetune_batch_size), "--group_by_modality_length", "True",
    ])


def merge(base: dict[str, Any], lora_dir: str, merged_dir: str) -> None:
    command([
        "script/merge_lora_weights.py", "--model-path", lora_dir, "--model-base", base["llm"],
        "--model-type", MODEL_TYPE, "--save-model-path", merged_dir, "--dtype", "float32",
    ])


def evaluate(checkpoint: str, data: dict[str, str], directory: str, settings: Settings) -> dict[str, Any]:
    """`python -m bunny.eval run shapes` on the held-out questions (and, as its control, the same questions
    about a blank picture); its report is `<directory>/report.json`."""
    from bunny.demo.synthetic import chance_accuracy
    from bunny.eval.common import read_jsonl

    command([
        "-m", "bunny.eval", "run", "shapes", "--model-path", checkpoint, "--model-type", MODEL_TYPE,
        "--data-dir", os.path.dirname(os.path.dirname(data["questions"])), "--run-dir", directory,
        "--max-new-tokens", "8", "--batch-size", str(settings.eval_batch_size), "--device", "cpu",
    ])
    with open(os.path.join(directory, "report.json"), encoding="utf-8") as f:
        metrics = json.load(f)["metrics"]
    chance = chance_accuracy([entry["category"] for entry in read_jsonl(data["answer_key"])])
    return {
        "accuracy": metrics["accuracy"],
        "accuracy_by_type": metrics["accuracy_by_type"],
        "blind_accuracy": metrics["blind_accuracy"],
        "blind_accuracy_by_type": metrics["blind_accuracy_by_type"],
        "foreign_accuracy": metrics["foreign_accuracy"],
        "foreign_accuracy_by_type": metrics["foreign_accuracy_by_type"],
        "chance_accuracy": chance["overall"],
        "chance_accuracy_by_type": chance["by_type"],
        "num_questions": metrics["num_questions"],
    }


def chat(checkpoint: str) -> str:
    return command(
        ["-m", "bunny.serve.cli", "--model-path", checkpoint, "--model-type", MODEL_TYPE, "--image-file", CHAT_IMAGE,
         "--device", "cpu", "--temperature", "0", "--max-new-tokens", "24"],
        stdin="".join(q + "\n" for q in CHAT_QUESTIONS),
    )


# -- results ---------------------------------------------------------------------------------------
def trainer_losses(output_dir: str) -> list[tuple[int, float]]:
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def plot_losses(losses: dict[str, list[tuple[int, float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3.2))
    for ax, (name, points) in zip(axes, losses.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


MARKER = ".bunny-demo"  # in every output directory of the demo: only such a directory is replaced


def fresh_output_directory(output_dir: str) -> str:
    """`output_dir` emptied for a new run (train.py would resume from old checkpoints), if it is
    missing, empty or an earlier demo's output; anything else is refused, never deleted."""
    output_dir = os.path.abspath(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        earlier = any(os.path.isfile(os.path.join(output_dir, name)) for name in (MARKER, "metrics.json"))
        if not earlier:
            raise SystemExit(
                f"demo: {output_dir} is not empty and holds no earlier demo output ({MARKER}); nothing was "
                "deleted: choose another --output-dir"
            )
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    open(os.path.join(output_dir, MARKER), "w").close()
    return output_dir


def run(output_dir: str, settings: Settings, seed: int) -> dict[str, Any]:
    output_dir = fresh_output_directory(output_dir)
    paths = {name: os.path.join(output_dir, name) for name in ("data", "base", "checkpoints", "eval")}
    pretrain_dir = os.path.join(paths["checkpoints"], f"bunny-{MODEL_TYPE}-pretrain")
    lora_dir = os.path.join(paths["checkpoints"], f"bunny-lora-{MODEL_TYPE}")
    merged_dir = os.path.join(paths["checkpoints"], f"bunny-{MODEL_TYPE}")

    stages = Stages()
    data = stages.run("data", make_data, paths["data"], settings, seed)
    base = stages.run("stand-ins", make_stand_ins, data, paths["base"], settings, seed)
    projector = stages.run("pretrain", pretrain, base, data, pretrain_dir, settings, seed)
    stages.run("finetune", finetune, base, data, projector, lora_dir, settings, seed)
    stages.run("merge", merge, base, lora_dir, merged_dir)
    scores = stages.run("evaluate", evaluate, merged_dir, data, paths["eval"], settings)
    transcript = stages.run("chat", chat, merged_dir)

    losses = {name: list(enumerate(values, start=1)) for name, values in base["losses"].items()}
    losses["projector pretraining"] = trainer_losses(pretrain_dir)
    losses["LoRA finetuning"] = trainer_losses(lora_dir)
    plot_losses(losses, os.path.join(output_dir, "losses.png"))
    metrics = {
        **scores,
        "tower_patch_accuracy": base["tower_patch_accuracy"],
        "checkpoint": os.path.relpath(merged_dir, REPO),
        "model_type": MODEL_TYPE,
        "final_losses": {name: points[-1][1] for name, points in losses.items()},
        "first_losses": {name: points[0][1] for name, points in losses.items()},
        "timings_s": stages.timings,
        "seed": seed,
        "settings": asdict(settings),
    }
    with atomic_write(os.path.join(output_dir, "metrics.json")) as f:
        json.dump(metrics, f, indent=1)
    return {**metrics, "chat": transcript}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bunny.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(REPO, "outputs", "demo"), help="where everything is written; an earlier demo output there is replaced, anything else refused")
    parser.add_argument("--quick", action="store_true", help="the small version the test suite runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of every training stage")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    metrics = run(args.output_dir, QUICK if args.quick else Settings(), args.seed)
    print(
        f"\nheld-out accuracy {100 * metrics['accuracy']:.1f}% "
        f"({', '.join(f'{k} {100 * v:.0f}%' for k, v in metrics['accuracy_by_type'].items())}); "
        f"with a blank picture {100 * metrics['blind_accuracy']:.1f}%; chance {100 * metrics['chance_accuracy']:.1f}%; "
        f"pictures drawn by another procedure {100 * metrics['foreign_accuracy']:.1f}%"
    )
    print(f"metrics: {os.path.join(args.output_dir, 'metrics.json')}; losses: {os.path.join(args.output_dir, 'losses.png')}")
    print(f"checkpoint: {metrics['checkpoint']} (model type {MODEL_TYPE}); total {time.perf_counter() - start:.0f} s")
    return metrics


if __name__ == "__main__":
    main()
