"""CPU training-step benchmark of the issue's baseline workload, printed as one JSON object.

Workload: the LLM and tower of bench/inference.py; batch 4, each row 300 ids with one image (555
positions after the splice), labels masking the first 40 positions; frozen tower, trainable LLM
and projector; AdamW (fused, training's default); no gradient checkpointing. `--dtype float32` trains in float32;
`--dtype bfloat16` does what `--bf16 True` does on a CPU (bunny/train/master_weights.py): a
bfloat16 model, under autocast as the Trainer runs it, stepped through float32 master weights and
optimiser state; the same run also times the Trainer's default without DeepSpeed (float32 weights
under autocast) and reports the ratio. `--autocast-only` times that alone. Reported:

- seconds per forward + backward step, and per full step with the optimiser;
- the data pipeline's samples/s: `LazySupervisedDataset` + collator over a generated 1,000-sample
  file (images decoded, padded, processed; conversations tokenised and masked), batch 4.

- model FLOPs per step, counted from the shapes (`training_step_flops` gives the formula; the test
  suite checks it against torch's FlopCounterMode), model GFLOP/s, and efficiency: model FLOP/s of
  the full step (and of forward + backward alone) over the peak matmul throughput of the step's
  dtype, measured in the same process before and after the step (bench/machine.py: the LLM's own
  matmul shapes, several rounds, the highest kept, the spread reported with the memory bandwidth and
  whether bfloat16 is native). Goals (issue 21): >= 80% of the float32 peak, >= 50% of the bfloat16.

Every figure is the median over `--repeats` runs after one untimed warm-up, with the best run.

`--device cuda` runs the step on a GPU (synchronised around each timing) and measures the GPU's
peaks; `--spec-peak-tflops` adds MFU against the datasheet's dense peak. Not yet run on a GPU.

Run as: python bench/train.py [--dtype bfloat16 [--autocast-only]] [--device cuda] [--repeats N] [--quick]
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

from machine import PeakTracker, device_name, parse_device, synchronize  # noqa: E402
from inference import (  # noqa: E402
    ENV_KEYS,
    WORKLOADS,
    alternating_runs,
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
from bunny.train.master_weights import with_master_weights  # noqa: E402

ORIGINAL_SECONDS_PER_STEP = {"float32": 2.67, "bfloat16": 1.58}
GOAL_SECONDS_PER_STEP = {"float32": 2.2, "bfloat16": 0.8}
# Issue 21: model FLOPs per second of the full step over the measured matmul peak of its dtype.
GOAL_EFFICIENCY = {"float32": 0.8, "bfloat16": 0.5}
TOKENIZER = ROOT / "tests" / "fixtures" / "reference" / "tokenizers" / "tok-phi"


def make_batch(batch: int, ids: int, masked: int, vocab: int, image_size: int, generator: torch.Generator) -> dict:
    input_ids = torch.randint(3, vocab, (batch, ids), generator=generator)
    input_ids[:, 5] = IMAGE_TOKEN_INDEX
    labels = input_ids.clone()
    labels[:, :masked] = IGNORE_INDEX
    images = torch.rand(batch, 3, image_size, image_size, generator=generator) * 2 - 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": torch.ones_like(input_ids), "images": images}


def training_step_flops(workload, batch: int, ids: int) -> dict[str, int]:
    """Model FLOPs of one training step (forward + backward), counted from the shapes; 2 FLOPs per
    multiply-add, matmuls and convolutions only (norms, activations, softmax and the optimiser are
    left out, as in the usual MFU accounting). With B rows of `ids` ids and one image each, T = ids -
    1 + I positions after the splice (I image tokens), LLM width d, MLP width f, L layers, vocabulary
    V; tower width e, MLP width g, patch p, and the e -> d -> d projector:

    - LLM weights (q, k, v, dense, fc1, fc2 per layer, the head): 2 B T (L (4 d^2 + 2 d f) + d V)
      forward, twice that backward (input and weight gradients): x3;
    - attention scores and their use (Q K^T and A V over all T x T pairs, the causal half not
      subtracted): 4 B T^2 d L forward, x3 with backward;
    - projector: 2 B I (e d + d d) forward; backward computes both gradients of the second layer but
      only the weight gradient of the first (its input, the frozen tower's output, needs none);
    - tower, frozen, forward only, up to the second-to-last layer (Bunny reads layer -2): the patch
      convolution 2 B I 3 p^2 e, then (L_t - 1) layers of 2 B I (4 e^2 + 2 e g) + 4 B I^2 e.
    """
    image = workload.image_tokens
    positions = ids - 1 + image
    d, f, layers, vocab = workload.hidden_size, workload.intermediate_size, workload.num_layers, workload.vocab_size
    e, g, patch = workload.tower_hidden_size, workload.tower_intermediate_size, workload.patch_size
    tower_layers = workload.tower_layers - 1
    llm_forward = 2 * batch * positions * (layers * (4 * d * d + 2 * d * f) + d * vocab)
    attention_forward = 4 * batch * positions**2 * d * layers
    first, second = 2 * batch * image * e * d, 2 * batch * image * d * d
    tower = 2 * batch * image * 3 * patch**2 * e + tower_layers * (
        2 * batch * image * (4 * e * e + 2 * e * g) + 4 * batch * image**2 * e
    )
    counts = {
        "llm_weights": 3 * llm_forward,
        "attention": 3 * attention_forward,
        "projector": 2 * first + 3 * second,
        "tower_forward": tower,
    }
    return {**counts, "total": sum(counts.values())}


def step_functions(args: argparse.Namespace, workload, tower_dir: Path, batch: dict, master_weights: bool):
    """(forward + backward, full step with the optimiser) of one model built for the run's dtype and
    device; bfloat16 with `master_weights` as `--bf16 True` trains on a CPU (and DeepSpeed on a GPU),
    else float32 weights. Each returns once the device has finished."""
    device = torch.device(args.device)
    model = build_model(workload, torch.float32, tower_dir, attn_implementation=None).to(device)
    model.train()
    model.get_vision_tower().requires_grad_(False)
    if args.dtype == "bfloat16":
        model.get_vision_tower().to(torch.bfloat16)  # frozen: runs in the compute dtype, as in training
    trainable = [p for p in model.parameters() if p.requires_grad]
    # training's default --optim adamw_torch_fused
    if master_weights:
        model.to(torch.bfloat16)
        optimizer = with_master_weights(torch.optim.AdamW, [{"params": trainable}], lr=1e-5, fused=True)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16" else contextlib.nullcontext()
    )

    def backward() -> None:
        with autocast:
            loss = model(**batch).loss
        loss.backward()

    def forward_backward() -> None:
        backward()
        model.zero_grad(set_to_none=True)
        synchronize(device)

    def full_step() -> None:
        backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)  # the model's gradients: with master weights, not the optimiser's
        synchronize(device)

    return forward_backward, full_step


def training_step_times(args: argparse.Namespace, workload, tower_dir: Path) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = 300 if not args.quick else 40
    batch = make_batch(4, ids, 40 if not args.quick else 8, workload.vocab_size, workload.image_size, generator)
    batch = {key: value.to(args.device) for key, value in batch.items()}
    positions = ids - 1 + workload.image_tokens
    master_weights = args.dtype == "bfloat16" and not args.autocast_only
    functions = list(step_functions(args, workload, tower_dir, batch, master_weights))
    if master_weights:  # the Trainer's default beside it, for the same-run ratio
        functions += step_functions(args, workload, tower_dir, batch, master_weights=False)

    peaks = PeakTracker(matmul_shapes(workload, 4 * positions), device=torch.device(args.device))
    rounds = 1 if args.quick else 3
    peaks.measure(rounds)  # around the workload: before and after it
    # in turn, so that the machine's drift (AMX warming up, neighbours) hits all alike
    fwd_bwd, step, *autocast_only = alternating_runs(functions, args.repeats)
    peaks.measure(rounds)
    flops = training_step_flops(workload, 4, ids)
    peak = peaks.peak(torch.bfloat16 if args.dtype == "bfloat16" else torch.float32)
    step_median, fwd_bwd_median = statistics.median(step), statistics.median(fwd_bwd)
    result = {
        "positions_after_splice": positions,
        "forward_backward_s": ms_to_s(ms(fwd_bwd)),
        "step_s": ms_to_s(ms(step)),
        "model_flops_per_step": flops,
        "model_gflops_per_s": round(flops["total"] / step_median / 1e9, 1),
        "efficiency": {
            "step_over_peak": round(flops["total"] / step_median / 1e9 / peak, 3),
            "forward_backward_over_peak": round(flops["total"] / fwd_bwd_median / 1e9 / peak, 3),
            "peak_dtype": args.dtype,
            "peak_gflops": round(peak, 1),
            "goal": GOAL_EFFICIENCY[args.dtype],
            "goal_met": flops["total"] / step_median / 1e9 / peak >= GOAL_EFFICIENCY[args.dtype],
        },
        "machine": peaks.report(),
    }
    if args.spec_peak_tflops:
        result["efficiency"]["step_over_spec_peak"] = round(flops["total"] / step_median / 1e12 / args.spec_peak_tflops, 3)
    if autocast_only:
        autocast_step = statistics.median(autocast_only[1])
        result["float32_weights_under_autocast"] = {
            "forward_backward_s": ms_to_s(ms(autocast_only[0])),
            "step_s": ms_to_s(ms(autocast_only[1])),
            "step_over_peak": round(flops["total"] / autocast_step / 1e9 / peak, 3),
            "master_weights_speedup": round(autocast_step / step_median, 3),
        }
    return result


def matmul_shapes(workload, tokens: int) -> list[tuple[int, int, int]]:
    """The LLM's matmuls in a training step over `tokens` positions: attention projections, the
    MLP's two layers and the head."""
    d, f, vocab = workload.hidden_size, workload.intermediate_size, workload.vocab_size
    return [(tokens, d, d), (tokens, d, f), (tokens, f, d), (tokens, d, vocab)]


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
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="float32, or bfloat16 as --bf16 True trains on a CPU (bfloat16 model, float32 master weights)")
    parser.add_argument("--autocast-only", action="store_true",
                        help="with --dtype bfloat16: float32 weights under autocast (the Trainer's default), for comparison")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the workload uses 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--skip-data", action="store_true", help="time the training step only")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for the GPU run (the data pipeline stays on the CPU)")
    parser.add_argument("--spec-peak-tflops", type=float, default=None,
                        help="the device's datasheet dense peak in the run's dtype (H100 SXM bf16: 989), to report MFU against it too")
    args = parser.parse_args(argv)
    parse_device(parser, args.device)
    if args.spec_peak_tflops is not None and args.spec_peak_tflops <= 0:
        parser.error(f"--spec-peak-tflops must be positive, got {args.spec_peak_tflops}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    workload = WORKLOADS["quick" if args.quick else "issue"]
    result: dict = {
        "benchmark": "train",
        "dtype": args.dtype,
        "weights": "float32" if args.dtype == "float32" or args.autocast_only else "bfloat16, float32 masters",
        "threads": args.threads,
        "repeats": args.repeats,
        "device": args.device,
        "cpu": cpu_name(),
        "gpu": device_name(torch.device(args.device)),
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
    if not args.quick and args.device == "cpu":  # the original's figures and these goals are CPU ones
        step = result["training"]["step_s"]["median"]
        result["original_step_s"] = ORIGINAL_SECONDS_PER_STEP[args.dtype]
        result["goal_step_s"] = GOAL_SECONDS_PER_STEP[args.dtype]
        result["goal_met"] = step <= GOAL_SECONDS_PER_STEP[args.dtype]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
