"""CPU training-step benchmark of the issue's baseline workload, printed as one JSON object.

Workload: the LLM and tower of bench/inference.py; batch 4, each row 300 ids with one image (555
positions after the splice), labels masking the first 40 positions; frozen tower, trainable LLM
and projector; AdamW (fused, training's default); no gradient checkpointing. `--dtype float32` trains in float32;
`--dtype bfloat16` runs forward and backward under bfloat16 autocast with float32 weights and
optimiser state, which is what `--bf16 True` does on a CPU. Reported:

- seconds per forward + backward step, and per full step with the optimiser;
- the data pipeline's samples/s: `LazySupervisedDataset` + collator over a generated 1,000-sample
  file (images decoded, padded, processed; conversations tokenised and masked), batch 4.

Every figure is the median over `--repeats` runs after one untimed warm-up, with the best run.

Run as: python bench/train.py [--dtype bfloat16] [--repeats N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from inference import (  # noqa: E402
    ENV_KEYS,
    WORKLOADS,
    build_model,
    cpu_name,
    ms,
    save_random_siglip_tower,
    stdout_to_stderr,
    time_runs,
)

from bunny.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from bunny.conversation import get_conv_template  # noqa: E402
from bunny.data.dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset  # noqa: E402
from bunny.data.tokenizer import load_training_tokenizer  # noqa: E402

ORIGINAL_SECONDS_PER_STEP = {"float32": 2.67, "bfloat16": 1.58}
GOAL_SECONDS_PER_STEP = {"float32": 2.2, "bfloat16": 0.8}
TOKENIZER = ROOT / "tests" / "fixtures" / "reference" / "tokenizers" / "tok-phi"


def make_batch(batch: int, ids: int, masked: int, vocab: int, image_size: int, generator: torch.Generator) -> dict:
    input_ids = torch.randint(3, vocab, (batch, ids), generator=generator)
    input_ids[:, 5] = IMAGE_TOKEN_INDEX
    labels = input_ids.clone()
    labels[:, :masked] = IGNORE_INDEX
    images = torch.rand(batch, 3, image_size, image_size, generator=generator) * 2 - 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": torch.ones_like(input_ids), "images": images}


def training_step_times(args: argparse.Namespace, workload, tower_dir: Path) -> dict:
    model = build_model(workload, torch.float32, tower_dir, attn_implementation=None)
    model.train()
    model.get_vision_tower().requires_grad_(False)
    if args.dtype == "bfloat16":
        model.get_vision_tower().to(torch.bfloat16)  # frozen: runs in the compute dtype, as in training
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=True)  # training's default --optim adamw_torch_fused
    generator = torch.Generator().manual_seed(0)
    ids = 300 if not args.quick else 40
    batch = make_batch(4, ids, 40 if not args.quick else 8, workload.vocab_size, workload.image_size, generator)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16" else contextlib.nullcontext()
    )
    positions = ids - 1 + workload.image_tokens

    def forward_backward() -> None:
        with autocast:
            loss = model(**batch).loss
        loss.backward()

    def full_step() -> None:
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fwd_bwd = time_runs(lambda: (forward_backward(), model.zero_grad(set_to_none=True)), args.repeats)
    step = time_runs(full_step, args.repeats)
    return {"positions_after_splice": positions, "forward_backward_s": ms_to_s(ms(fwd_bwd)), "step_s": ms_to_s(ms(step))}


def ms_to_s(values: dict) -> dict:
    return {key: round(value / 1000, 3) for key, value in values.items()}


def data_pipeline(args: argparse.Namespace, workload, tower_dir: Path, directory: Path) -> dict:
    """samples/s of dataset + collator over a generated file of 1,000 samples (batch 4)."""
    from bunny.model.vision_tower.siglip import SiglipVisionTower

    samples = 1000 if not args.quick else 40
    generator = torch.Generator().manual_seed(0)
    images = directory / "images"
    images.mkdir()
    for k in range(8):
        size = (160 + 20 * k, 120 + 15 * k)
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(images / f"{k}.png")
    words = "the a red blue square circle image shows left right top bottom small large two three".split()
    data = []
    for i in range(samples):
        answer = " ".join(words[(i + j) % len(words)] for j in range(20 + i % 30))
        turns = [{"from": "human", "value": "<image>\nDescribe the picture in detail."}, {"from": "gpt", "value": answer}]
        if i % 3 == 0:
            turns += [{"from": "human", "value": "And the colours?"}, {"from": "gpt", "value": answer[:40]}]
        sample = {"id": str(i), "conversations": turns}
        if i % 10:
            sample["image"] = f"{i % 8}.png"
        data.append(sample)
    data_path = directory / "data.json"
    data_path.write_text(json.dumps(data))

    tower = SiglipVisionTower(str(tower_dir), delay_load=True)
    tower.load_model()
    dataset = LazySupervisedDataset(
        str(data_path),
        load_training_tokenizer(str(TOKENIZER), "phi-2", 2048),
        get_conv_template("bunny"),
        image_folder=str(images),
        image_processor=tower.image_processor,
        image_aspect_ratio="pad",
    )
    collator = DataCollatorForSupervisedDataset(dataset.tokenizer)

    def epoch() -> None:
        for start in range(0, len(dataset), 4):
            collator([dataset[i] for i in range(start, min(start + 4, len(dataset)))])

    seconds = time_runs(epoch, max(1, args.repeats // 2), warmup=0)
    return {
        "samples": len(dataset),
        "samples_per_s": {"median": round(len(dataset) / statistics.median(seconds), 1), "best": round(len(dataset) / min(seconds), 1)},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="float32, or bfloat16 autocast")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the workload uses 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--skip-data", action="store_true", help="time the training step only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    workload = WORKLOADS["quick" if args.quick else "issue"]
    result: dict = {
        "benchmark": "train",
        "dtype": args.dtype,
        "threads": args.threads,
        "repeats": args.repeats,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "env": {key: os.environ[key] for key in ENV_KEYS if key in os.environ},
    }
    with tempfile.TemporaryDirectory() as tmp, stdout_to_stderr():
        tower_dir = Path(tmp) / "siglip-bench"
        save_random_siglip_tower(workload, tower_dir)
        start = time.perf_counter()
        result["training"] = training_step_times(args, workload, tower_dir)
        if not args.skip_data:
            result["data_pipeline"] = data_pipeline(args, workload, tower_dir, Path(tmp))
        result["wall_s"] = round(time.perf_counter() - start, 1)
    if not args.quick:
        step = result["training"]["step_s"]["median"]
        result["original_step_s"] = ORIGINAL_SECONDS_PER_STEP[args.dtype]
        result["goal_step_s"] = GOAL_SECONDS_PER_STEP[args.dtype]
        result["goal_met"] = step <= GOAL_SECONDS_PER_STEP[args.dtype]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
