"""Evaluation benchmark: questions per second of the loader generator's answering path at batch 1 and
at batch 8, printed as one JSON object on stdout.

The model is the inference benchmark's (bench/inference.py, workload "issue": a phi-style LLM 512
wide x 8 layers and a SigLIP tower at 224 px -> 256 image tokens, float32 on 2 CPU threads), its
LLM's weight matrices drawn at std 0.1 so that its answers follow the question, with a byte-level
BPE tokenizer trained on the template's and the questions' words (a prompt has about as many text
ids as with a real tokenizer). The questions are the loader generator's
(`bunny.eval.model_vqa_loader`): 8 to 40 words plus the short-answer instruction, each about a
random-pixel PNG of its own size read from disk, in the `bunny` template, greedy, at most
`--max-new-tokens` new tokens, no stop string. A random model doesn't end its answers by itself:
the end-of-text row of the head is made a copy (x1.05) of the row of the token whose first
occurrences in the answers are spread most evenly up to the limit, so the answers end at varied
lengths (reported as `answer_tokens`).

Each path answers all the questions, reading and preprocessing the pictures included:

- batch1: `answer_prompts` at batch size 1, one question at a time through `generate`;
- batch8_continuous: `answer_prompts` at batch size 8, the continuous-batching engine with up to 8
  rows decoding together and a finished row replaced by the next question at the next step;
- batch8_static: consecutive groups of 8 through `generate`, each until its longest answer ends
  (the path of beam search), for comparison;
- first_token_only, batch8_first_token_only: one new token per answer, at batch 1 and in static
  batches of 8: reading, preprocessing and prefilling the questions. Where prefill is
  compute-bound (the issue's workload on a CPU) batching shares little of this work, so
  `first_token_only_over_batch1` (the faster of the two over batch 1) is about the most any batch
  size can give there.

`answers_differing_from_batch1` counts the answers of the batched paths that are not batch 1's (0
expected). Figures are the median (and best) over `--repeats` timed runs, the paths taking turns,
after one warm-up run of each on the first 8 questions.

Goal (issue 18): batch 8 answers at least 3x the questions per second of batch 1 on a 2-core CPU.

Run as: python bench/eval.py [--questions 32] [--max-new-tokens 64] [--repeats 3] [--dtype bfloat16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import transformers
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference import (  # noqa: E402
    DTYPES,
    ENV_KEYS,
    EOS_ID,
    WORKLOADS,
    build_model,
    cpu_name,
    save_random_siglip_tower,
    stdout_to_stderr,
    train_bpe_tokenizer,
)

from bunny.conversation import SYSTEM  # noqa: E402
from bunny.eval.answering import (  # noqa: E402
    LoadedModel,
    Prompt,
    Settings,
    answer_batch,
    answer_prompts,
    batches,
    pixel_values,
)
from bunny.eval.model_vqa_loader import image_loader  # noqa: E402
from bunny.inference.generate import generate_replies  # noqa: E402
from bunny.inference.prompts import chat_prompt  # noqa: E402

logger = logging.getLogger("bench.eval")

GOAL = 3.0
BATCH = 8
INSTRUCTION = "Answer the question using a single word or phrase."
WORDS = (
    "what which how many where is are there the a an of in on to left right top bottom middle colour color red green "
    "blue yellow black white shape circle square triangle picture image object objects number count largest smallest "
    "behind front next near sign text written say does do this that it"
).split()
END_SCALE = 1.05  # the end-of-text row is this multiple of the chosen token's row
LLM_STD = 0.1  # see `redraw_llm_weights`


# -- model and questions ---------------------------------------------------------------------------


def load_tokenizer(directory: Path, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer of exactly `vocab_size` ids (pad 0, bos 1, eos 2 as the model's
    config; every id the model can say decodes to something) that knows the template's and the
    questions' words as single tokens."""
    from transformers import AutoTokenizer

    rng = random.Random(0)
    texts = [SYSTEM, INSTRUCTION, "USER: ASSISTANT:"] * 200
    texts += [" ".join(rng.choice(WORDS) for _ in range(40)) + "?" for _ in range(1000)]
    # made-up words, less frequent than the real ones, so that merges fill every id the model can say
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    texts += [" ".join("".join(rng.choices(letters, k=rng.randint(2, 7))) for _ in range(40)) for _ in range(300)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def write_questions(directory: Path, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` loader-style questions of 8-40 words, each about its own random-pixel PNG in `directory`."""
    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)
    questions = []
    for index in range(count):
        name = f"{index}.png"
        size = (rng.randint(160, 480), rng.randint(160, 480))
        Image.fromarray(pixels.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(directory / name)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
        questions.append({"question_id": index, "image": name, "text": f"{words}?\n{INSTRUCTION}"})
    return questions


def redraw_llm_weights(model: Any, std: float, seed: int = 0) -> None:
    """Draw the LLM's weight matrices again from N(0, std). At the configured 0.02 a random LLM this
    deep soon repeats a few tokens whatever it is asked; at 0.1 its answers follow the question
    (as the tests' tiny models, drawn at 0.2), so they can end at different places. Sizes, and so
    the cost of every step, are unchanged."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.startswith("model.layers.") and weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * std)


def uniformity_gap(ends: Sequence[int], limit: int) -> float:
    """The largest gap between the distribution of `ends` and the uniform one over [0, limit]
    (Kolmogorov-Smirnov): 0 for answers ending evenly anywhere up to the limit."""
    count, gap = len(ends), 0.0
    for rank, end in enumerate(sorted(ends)):
        gap = max(gap, abs((rank + 1) / count - end / limit), abs(rank / count - end / limit))
    return gap


def spread_answer_ends(loaded: LoadedModel, prompts: Sequence[Prompt], settings: Settings) -> dict[str, Any]:
    """Make the model end its answers at varied lengths: answer every prompt with no end-of-text token,
    pick the token whose first occurrences (`limit` where it doesn't come) are spread most evenly over
    the answer lengths, and make the end-of-text row of the head that token's row x END_SCALE."""
    model, limit = loaded.model, settings.max_new_tokens
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        tokens: list[list[int]] = []
        for start in range(0, len(prompts), BATCH):
            batch = prompts[start : start + BATCH]
            texts = [chat_prompt(settings.conv_mode, prompt.text) for prompt in batch]
            images = pixel_values([prompt.image() for prompt in batch], loaded, pad=True)
            replies = generate_replies(texts, images, loaded.tokenizer, model, None, limit)
            tokens += [reply.token_ids for reply in replies]
    finally:
        model.generation_config.eos_token_id = eos

    def gap(token: int) -> float:
        return uniformity_gap([answer.index(token) if token in answer else limit for answer in tokens], limit)

    chosen = min(sorted({token for answer in tokens for token in answer} - {EOS_ID}), key=gap)
    with torch.no_grad():
        model.lm_head.weight[EOS_ID] = END_SCALE * model.lm_head.weight[chosen]
        if model.lm_head.bias is not None:
            model.lm_head.bias[EOS_ID] = END_SCALE * model.lm_head.bias[chosen]
    return {
        "end_token": chosen,
        "end_token_text": loaded.tokenizer.convert_ids_to_tokens(chosen),
        "end_uniformity_gap": round(gap(chosen), 3),
    }


def answer_lengths(loaded: LoadedModel, prompts: Sequence[Prompt], settings: Settings) -> list[int]:
    """The number of new tokens of each greedy answer (end-of-text included), from static batches."""
    lengths = []
    for start in range(0, len(prompts), BATCH):
        batch = prompts[start : start + BATCH]
        texts = [chat_prompt(settings.conv_mode, prompt.text) for prompt in batch]
        images = pixel_values([prompt.image() for prompt in batch], loaded, pad=True)
        replies = generate_replies(texts, images, loaded.tokenizer, loaded.model, None, settings.max_new_tokens)
        lengths += [len(reply.token_ids) for reply in replies]
    return lengths


# -- timing ----------------------------------------------------------------------------------------


def static_path(loaded: LoadedModel, settings: Settings) -> Callable[[Sequence[Prompt]], list[str]]:
    """Static batches of BATCH through `generate` (the path `answer_prompts` takes for beam search),
    here with one beam."""
    return lambda asked: [text for batch in batches(asked, BATCH) for text in answer_batch(batch, loaded, settings)]


def paths(loaded: LoadedModel, settings: Settings) -> dict[str, Callable[[Sequence[Prompt]], list[str]]]:
    """The ways of answering that are timed, by name (see the module's docstring)."""

    def through_answer_prompts(batch_size: int, chosen: Settings) -> Callable[[Sequence[Prompt]], list[str]]:
        return lambda asked: list(answer_prompts(asked, loaded, chosen, batch_size, progress=False))

    return {
        "batch1": through_answer_prompts(1, settings),
        f"batch{BATCH}_continuous": through_answer_prompts(BATCH, settings),
        f"batch{BATCH}_static": static_path(loaded, settings),
        "first_token_only": through_answer_prompts(1, replace(settings, max_new_tokens=1)),
        f"batch{BATCH}_first_token_only": static_path(loaded, replace(settings, max_new_tokens=1)),
    }


def time_paths(
    timed: dict[str, Callable[[Sequence[Prompt]], list[str]]], prompts: Sequence[Prompt], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Wall seconds of each path over all prompts, `repeats` times, the paths taking turns (so a
    change in the machine's load falls on all of them), after a warm-up of each on the first BATCH
    prompts; and each path's answers."""
    for answer in timed.values():
        answer(prompts[:BATCH])
    seconds: dict[str, list[float]] = {name: [] for name in timed}
    answers: dict[str, list[str]] = {}
    for repeat in range(repeats):
        for name, answer in timed.items():
            logger.info("run %d of %d: %s", repeat + 1, repeats, name)
            start = time.perf_counter()
            answers[name] = answer(prompts)
            seconds[name].append(time.perf_counter() - start)
    return seconds, answers


def rate(seconds: list[float], count: int) -> dict[str, float]:
    """Median and best questions per second."""
    return {"median": round(count / statistics.median(seconds), 2), "best": round(count / min(seconds), 2)}


def results(
    seconds: dict[str, list[float]], answers: dict[str, list[str]], lengths: list[int], limit: int
) -> dict[str, Any]:
    """The JSON result: rates, ratios to batch 1, the goal, answers differing from batch 1's, answer lengths."""
    rates = {name: rate(times, len(answers["batch1"])) for name, times in seconds.items()}
    single = rates["batch1"]["median"]
    continuous = rates[f"batch{BATCH}_continuous"]["median"] / single
    return {
        "benchmark": "eval",
        "questions_per_s": rates,
        f"batch{BATCH}_continuous_over_batch1": round(continuous, 2),
        f"batch{BATCH}_static_over_batch1": round(rates[f"batch{BATCH}_static"]["median"] / single, 2),
        "first_token_only_over_batch1": round(
            max(rates["first_token_only"]["median"], rates[f"batch{BATCH}_first_token_only"]["median"]) / single, 2
        ),
        "goal": GOAL,
        "goal_met": continuous >= GOAL,
        "answers_differing_from_batch1": {
            name: sum(a != b for a, b in zip(answers[name], answers["batch1"]))
            for name in (f"batch{BATCH}_continuous", f"batch{BATCH}_static")
        },
        "answer_tokens": {
            "min": min(lengths), "median": statistics.median(lengths), "mean": round(statistics.mean(lengths), 1),
            "max": max(lengths), "at_limit": sum(length >= limit for length in lengths),
        },
    }


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    workload = replace(WORKLOADS["quick"], vocab_size=400) if args.quick else WORKLOADS["issue"]  # BPE needs >= 259 ids
    load_before = round(os.getloadavg()[0], 2)  # other processes on the machine skew the timings
    with tempfile.TemporaryDirectory(prefix="bunny-bench-eval-") as tmp:
        tmp_dir = Path(tmp)
        save_random_siglip_tower(workload, tmp_dir / "tower")
        model = build_model(workload, DTYPES[args.dtype], tmp_dir / "tower", None)
        redraw_llm_weights(model, LLM_STD)
        tokenizer = load_tokenizer(tmp_dir / "tokenizer", workload.vocab_size)
        loaded = LoadedModel(tokenizer, model, model.get_vision_tower().image_processor)
        questions = write_questions(tmp_dir, args.questions)
        prompts = [Prompt(q["text"], image_loader(q, str(tmp_dir))) for q in questions]
        settings = Settings(conv_mode="bunny", max_new_tokens=args.max_new_tokens, temperature=0.0, trim_stop=False)
        with torch.inference_mode():
            ends = spread_answer_ends(loaded, prompts, settings)
            lengths = answer_lengths(loaded, prompts, settings)
            seconds, answers = time_paths(paths(loaded, settings), prompts, args.repeats)
    prompt_ids = [len(tokenizer(chat_prompt("bunny", q["text"])).input_ids) for q in questions]
    return results(seconds, answers, lengths, args.max_new_tokens) | {
        "settings": {
            "workload": "quick" if args.quick else "issue",
            "questions": len(prompts),
            "max_new_tokens": args.max_new_tokens,
            "prompt_text_ids": {"min": min(prompt_ids), "max": max(prompt_ids)},
            "image_tokens": workload.image_tokens,
            "llm_weight_std": LLM_STD,
            **ends,
            "dtype": args.dtype,
            "threads": torch.get_num_threads(),
            "device": "cpu",
            "cpu": cpu_name(),
            "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],
            "env": {k: v for k, v in os.environ.items() if k in ENV_KEYS or k.startswith("MALLOC_")},
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "repeats": args.repeats,
            "statistic": "median and best of the timed runs, each over all questions, the paths taking turns",
            "warmup": f"one run of each path over the first {BATCH} questions",
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=32, help="questions answered by each path in each timed run")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="most new tokens per answer")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path after one warm-up")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the model")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the issue's workload uses 2)")
    parser.add_argument("--quick", action="store_true", help="the tiny workload and few questions, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.questions, args.max_new_tokens, args.repeats = min(args.questions, 12), min(args.max_new_tokens, 8), 1
    if args.questions < BATCH or args.max_new_tokens < 1 or args.repeats < 1:
        parser.error(f"--questions must be at least {BATCH}, --max-new-tokens and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    with stdout_to_stderr():
        results = benchmark(args)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
