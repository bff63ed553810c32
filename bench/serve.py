"""Serving benchmark: one model worker, 1, 4 and 8 concurrent clients; prints one JSON object.

The worker serves the inference benchmark's random Bunny-Phi model (bench/inference.py, workload
"issue": phi-style LLM hidden 512 x 8 layers, SigLIP 224 px -> 256 image tokens) saved as a
checkpoint with a byte-level BPE tokenizer of the model's 1000 ids. It runs as its own process
(`python -m bunny.serve.model_worker --no-register`, float32 on the CPU unless --device says
otherwise), batching up to 8 requests. Each client sends `--rounds` streamed OpenAI chat requests
one after the other: one picture (random pixels) and a question of 20-60 words, greedy, exactly
`--max-tokens` new tokens asked for (with `--max-tokens-spread S`, each request asks for a seeded
draw from max-tokens - S .. max-tokens + S instead, so that answers end at different times). Per
level it reports:

- tokens_per_s: completion tokens of all clients (the usage counts) / wall time of the level;
- median_ttft_s: median time from sending a request to its first streamed content;
- prefill_groups: the sizes of the groups of requests the worker prefilled together (from its
  log); rows then decode together, requests joining and leaving between steps.

Goal (issue 5): 8 clients get at least 3x the summed tokens/s of one.

Run as: python bench/serve.py [--rounds 3] [--max-tokens 64] [--max-tokens-spread 0] [--device cpu]
        [--batch-window 0.01] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference import (  # noqa: E402
    WORKLOADS,
    Workload,
    build_model,
    save_random_siglip_tower,
    stdout_to_stderr,
    train_bpe_tokenizer,
)

from bunny.serve.launch import free_port, wait_until_up  # noqa: E402

LEVELS = (1, 4, 8)
GOAL = 3.0
WORDS = "red green blue circle square triangle left right middle picture shape colour where what how many".split()


def save_tokenizer(directory: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer with at most `vocab_size` ids; pad 0, bos 1, eos 2 as the model's config."""
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) + rng.choice(["", "s", "ing", "ed"]) for _ in range(40)) for _ in range(2000)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size, exact=False)
    tokenizer.save_pretrained(directory)


def save_checkpoint(workload: Workload, directory: Path) -> Path:
    tower = directory / "siglip-random"
    save_random_siglip_tower(workload, tower)
    model = build_model(workload, torch.float32, tower, None)
    checkpoint = directory / "bunny-phi-bench"
    model.save_pretrained(checkpoint)
    save_tokenizer(checkpoint, workload.vocab_size)
    return checkpoint


def start_worker(checkpoint: Path, device: str, log: Path, batch_window: float = 0.01) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ, BUNNY_LOGDIR=str(log.parent), PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        PYTHONUNBUFFERED="1",  # the log is read for the prefill groups while the worker runs
    )
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "bunny.serve.model_worker", "--no-register", "--port", str(port),
             "--model-path", str(checkpoint), "--model-type", "phi-2", "--device", device,
             "--limit-model-concurrency", str(max(LEVELS)), "--batch-window", str(batch_window)],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until_up(process, url + "/worker_get_status")
    except RuntimeError as err:
        process.kill()
        raise SystemExit(f"the worker did not start: {err}\n{log.read_text()[-3000:]}")
    return process, url


def picture(seed: int, size: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ask(url: str, model: str, seed: int, image_size: int, max_tokens: int, spread: int = 0) -> tuple[float, int]:
    """One streamed chat request; returns (time to first content, completion tokens)."""
    rng = random.Random(seed)
    max_tokens = rng.randint(max_tokens - spread, max_tokens + spread)
    question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "?"
    body = {
        "model": model, "temperature": 0, "max_tokens": max_tokens, "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": picture(seed, image_size)}}, {"type": "text", "text": question},
        ]}],
    }  # fmt: skip
    start = time.perf_counter()
    first, tokens = None, 0
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[len(b"data: "):])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - start), tokens


def run_level(url: str, model: str, clients: int, rounds: int, image_size: int, max_tokens: int, spread: int) -> dict:
    ttfts: list[float] = []
    tokens = [0] * clients
    errors: list[str] = []

    def client(index: int) -> None:
        try:
            for r in range(rounds):
                ttft, count = ask(url, model, 1000 * clients + 10 * index + r, image_size, max_tokens, spread)
                ttfts.append(ttft)
                tokens[index] += count
        except Exception as err:  # noqa: BLE001 - reported in the JSON
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{clients} clients: {errors[0]}")
    return {
        "clients": clients,
        "requests": clients * rounds,
        "completion_tokens": sum(tokens),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(sum(tokens) / wall, 2),
        "median_ttft_s": round(statistics.median(ttfts), 4),
    }


def prefill_groups(log: Path) -> list[int]:
    """The sizes of the groups of requests the worker prefilled together, from its log."""
    return [int(m) for m in re.findall(r"prefilled (\d+) request", log.read_text())]


def peak_rows(log: Path, skip: int) -> int:
    """The most rows the worker decoded together after its first `skip` prefills, from its log."""
    rows = [int(m) for m in re.findall(r"prefilled \d+ request\(s\) in [\d.]+ s; (\d+) row", log.read_text())]
    return max(rows[skip:], default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="requests per client, one after the other")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument(
        "--max-tokens-spread", type=int, default=0, help="each request asks for max-tokens +- up to this many (seeded)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-window", type=float, default=0.01, help="the worker's --batch-window")
    parser.add_argument("--quick", action="store_true", help="the tiny workload, for a smoke test")
    args = parser.parse_args()
    if not 0 <= args.max_tokens_spread < args.max_tokens:
        parser.error("--max-tokens-spread must be at least 0 and less than --max-tokens")
    # a byte-level tokenizer needs 256 ids and more: the quick workload's LLM gets 400
    workload = replace(WORKLOADS["quick"], vocab_size=400) if args.quick else WORKLOADS["issue"]
    with tempfile.TemporaryDirectory(prefix="bunny-bench-serve-") as tmp, stdout_to_stderr():
        checkpoint = save_checkpoint(workload, Path(tmp))
        process, url = start_worker(checkpoint, args.device, Path(tmp) / "worker.log", args.batch_window)
        try:
            model = checkpoint.name
            ask(url, model, 0, workload.image_size, args.max_tokens)  # warm-up
            levels = []
            for clients in LEVELS:
                before = prefill_groups(Path(tmp) / "worker.log")
                levels.append(
                    run_level(url, model, clients, args.rounds, workload.image_size, args.max_tokens, args.max_tokens_spread)
                )
                levels[-1]["prefill_groups"] = prefill_groups(Path(tmp) / "worker.log")[len(before):]
                levels[-1]["peak_rows"] = peak_rows(Path(tmp) / "worker.log", len(before))
        finally:
            process.kill()
            process.wait()
    by_clients = {level["clients"]: level for level in levels}
    speedup = by_clients[8]["tokens_per_s"] / by_clients[1]["tokens_per_s"]
    print(json.dumps({
        "benchmark": "serve",
        "workload": "quick" if args.quick else "issue",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "max_tokens": args.max_tokens,
        "max_tokens_spread": args.max_tokens_spread,
        "batch_window_s": args.batch_window,
        "levels": levels,
        "speedup_8_over_1": round(speedup, 2),
        "goal_8_over_1": GOAL,
        "goal_met": speedup >= GOAL,
    }, indent=1))


if __name__ == "__main__":
    main()
