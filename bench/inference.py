"""CPU inference benchmark of a randomly initialised Bunny-Phi model (SigLIP tower -> mlp2x_gelu ->
phi-style LLM), printed as one JSON object on stdout.

The workload is fixed by the issue: float32 (or bfloat16) on CPU with 2 threads; a phi-style LLM
(vocab 1000, hidden 512, intermediate 2048, 8 layers, 8 heads, partial rotary 0.5, gelu_new); a
SigLIP tower (224 px, patch 14 -> 256 image tokens, hidden 256, intermediate 1024, 6 layers, 4
heads); prompts of 44 text ids plus one image (300 prefill positions); greedy decoding of exactly
64 new tokens with the KV cache. It reports:

- batch-1 end-to-end tokens/s: 64 / wall time of `generate` (image encoding included);
- prefill: one forward over the 300 positions (tower + projector + LLM, logits of the last
  position only), and the tower + projector alone;
- batch-1 time to first token and decode-only tokens/s (63 / time from the first new token to the
  last), both read from the same `generate` runs by a streamer that timestamps each token;
- batch-8 summed tokens/s: 8 * 64 / wall time of `generate` over 8 prompts of different text
  lengths (spread around 44), left-padded with an attention mask;
- the bare LLM: the same weights as transformers' own PhiForCausalLM, its `generate` on
  `inputs_embeds` of the prompt's length (no image), timed in turn with Bunny's batch-1 runs, and
  efficiency: Bunny's decode tokens/s over the bare LLM's (what Bunny's wrapper costs; goal of
  issue 21: >= 0.95), and the share of the measured memory bandwidth decoding uses (every LLM
  weight read once per token);
- the machine (bench/machine.py): matmul peaks for the decode and prefill shapes in float32 and
  bfloat16, memory bandwidth, whether bfloat16 is native, measured before and after the workload.

Every figure is the median over `--repeats` timed runs after one untimed warm-up run; the best run
is reported next to it.

`--device cuda` runs the model and the peaks on a GPU (synchronised around each timing); it has
not yet run on one.

Run as: python bench/inference.py [--dtype bfloat16] [--device cuda] [--repeats N] [--quick]
        [--cache default|hf-dynamic|static] [--compile] [--attn-implementation eager] [--grad-mode no_grad]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import transformers
from transformers import CompileConfig, DynamicCache, SiglipVisionConfig, SiglipVisionModel
from transformers.generation.streamers import BaseStreamer

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bunny.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from machine import PeakTracker, device_name, parse_device, synchronize  # noqa: E402
from bunny.model import BunnyPhiConfig, BunnyPhiForCausalLM  # noqa: E402

logger = logging.getLogger("bench.inference")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Workload:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    tower_hidden_size: int
    tower_intermediate_size: int
    tower_layers: int
    tower_heads: int
    text_length: int  # text ids per batch-1 prompt, besides the one image placeholder
    text_length_spread: tuple[int, ...]  # added to text_length, one per row of the batched run
    new_tokens: int

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


WORKLOADS = {
    "issue": Workload(
        vocab_size=1000,
        hidden_size=512,
        intermediate_size=2048,
        num_layers=8,
        num_heads=8,
        image_size=224,
        patch_size=14,
        tower_hidden_size=256,
        tower_intermediate_size=1024,
        tower_layers=6,
        tower_heads=4,
        text_length=44,
        text_length_spread=(-21, -15, -9, -3, 3, 9, 15, 21),  # 23..65 text ids, mean 44
        new_tokens=64,
    ),
    "quick": Workload(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=2,
        image_size=32,
        patch_size=8,
        tower_hidden_size=16,
        tower_intermediate_size=32,
        tower_layers=2,
        tower_heads=2,
        text_length=10,
        text_length_spread=(-4, 0, 3, 6),
        new_tokens=8,
    ),
}

# The original Bunny on the workload and machine, and the goals set against it: batch-1
# end-to-end at least 1.5x the original, batch 8 (summed) at least 4x our batch 1.
ORIGINAL_BATCH1_TOKENS_PER_S = {"float32": 85.0, "bfloat16": 155.0}
GOAL_BATCH1_SPEEDUP = 1.5
GOAL_BATCH_OVER_BATCH1 = 4.0
# Issue 21: Bunny's batch-1 decoding at least this share of the bare LLM's own generate.
GOAL_DECODE_OVER_BARE = 0.95

# Special ids of the random LLM; prompt ids are drawn above them so no prompt contains eos.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


# -- model -----------------------------------------------------------------------------------------


def save_random_siglip_tower(workload: Workload, directory: Path) -> None:
    """A random `SiglipVisionModel` plus the SigLIP preprocessor config, as `mm_vision_tower` expects."""
    config = SiglipVisionConfig(
        hidden_size=workload.tower_hidden_size,
        intermediate_size=workload.tower_intermediate_size,
        num_hidden_layers=workload.tower_layers,
        num_attention_heads=workload.tower_heads,
        image_size=workload.image_size,
        patch_size=workload.patch_size,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    SiglipVisionModel(config).save_pretrained(directory)
    preprocessor = {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": workload.image_size, "width": workload.image_size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))


def build_model(
    workload: Workload, dtype: torch.dtype, tower_dir: Path, attn_implementation: str | None
) -> BunnyPhiForCausalLM:
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    config = BunnyPhiConfig(
        vocab_size=workload.vocab_size,
        hidden_size=workload.hidden_size,
        intermediate_size=workload.intermediate_size,
        num_hidden_layers=workload.num_layers,
        num_attention_heads=workload.num_heads,
        partial_rotary_factor=0.5,
        hidden_act="gelu_new",
        max_position_embeddings=2048,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        mm_vision_tower=str(tower_dir),
        mm_hidden_size=workload.tower_hidden_size,
        mm_projector_type="mlp2x_gelu",
        image_aspect_ratio="pad",
        tokenizer_padding_side="right",
        tokenizer_model_max_length=2048,
        **extra,
    )
    model = BunnyPhiForCausalLM(config)
    model.load_vision_tower()
    return model.to(dtype).eval()


def train_bpe_tokenizer(texts: list[str], vocab_size: int, exact: bool = True) -> Any:
    """A byte-level BPE tokenizer trained on `texts` with pad 0, bos 1, eos 2 as the benchmark
    models' configs, and `vocab_size` ids (at most that many unless `exact`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="<|endoftext|>")
    size_wrong = len(tokenizer) != vocab_size if exact else len(tokenizer) > vocab_size
    if size_wrong or tokenizer.eos_token_id != EOS_ID:
        raise RuntimeError(f"the benchmark's tokenizer has {len(tokenizer)} ids (wanted {vocab_size}) and eos {tokenizer.eos_token_id}")
    return tokenizer


# -- inputs ----------------------------------------------------------------------------------------


def make_prompts(
    text_lengths: list[int], vocab_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded `input_ids` `[B, T]` (one image placeholder in the middle of each row's text) and
    their attention mask `[B, T]`."""
    width = max(text_lengths) + 1
    input_ids = torch.full((len(text_lengths), width), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(text_lengths):
        text = torch.randint(EOS_ID + 1, vocab_size, (length,), generator=generator)
        split = length // 2
        prompt = torch.cat([text[:split], torch.tensor([IMAGE_TOKEN_INDEX]), text[split:]])
        input_ids[row, width - len(prompt) :] = prompt
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


def make_images(batch: int, image_size: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    # [B, 3, H, W] in the processor's normalised range [-1, 1]
    return (torch.rand(batch, 3, image_size, image_size, generator=generator) * 2 - 1).to(dtype)


# -- timing --------------------------------------------------------------------------------------

# Environment variables that change CPU timings; recorded with the results.
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LD_PRELOAD", "KMP_AFFINITY", "ONEDNN_DEFAULT_FPMATH_MODE")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def alternating_runs(fns: list[Callable[[], Any]], repeats: int, warmup: int = 1) -> list[list[float]]:
    """Wall seconds of `repeats` rounds in which each of `fns` runs once, in turn (so that a drift of
    the machine's speed hits all of them alike), after `warmup` untimed calls of each."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    seconds: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for times, fn in zip(seconds, fns):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return seconds


def time_runs(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def summary(seconds: list[float], scale: float) -> dict[str, float]:
    """Median and best of the rate `scale / seconds`."""
    return {"median": round(scale / statistics.median(seconds), 2), "best": round(scale / min(seconds), 2)}


def ms(seconds: list[float]) -> dict[str, float]:
    """Median and best of the times, in milliseconds."""
    return {"median": round(1000 * statistics.median(seconds), 2), "best": round(1000 * min(seconds), 2)}


class TokenClock(BaseStreamer):
    """Timestamps of the new tokens of one `generate` call (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.token_times: list[float] = []
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if self.seen_prompt:
            self.token_times.append(time.perf_counter())
        self.seen_prompt = True

    def end(self) -> None:
        pass


def generation_options(cache: str, compile_decode: bool, model: BunnyPhiForCausalLM) -> dict[str, Any]:
    """`generate` kwargs for the KV cache kind and for compiling the decode step."""
    options: dict[str, Any] = {}
    if cache == "static":
        options["cache_implementation"] = "static"
    elif cache == "hf-dynamic":
        options["cache_factory"] = lambda: DynamicCache(config=model.config)
    if compile_decode:
        config = CompileConfig(fullgraph=False, mode="default")
        # generate only compiles on accelerators unless told otherwise (a private flag of CompileConfig).
        config._compile_all_devices = True
        options["compile_config"] = config
    return options


def generate_fn(
    model: BunnyPhiForCausalLM,
    input_ids: torch.Tensor,
    images: torch.Tensor,
    mask: torch.Tensor,
    new_tokens: int,
    options: dict[str, Any],
    clocks: list[tuple[float, TokenClock]] | None = None,
) -> Callable[[], torch.Tensor]:
    """A call of `generate`; with `clocks`, each call appends its start time and token timestamps."""

    def run() -> torch.Tensor:
        streamer = None
        if clocks is not None:
            streamer = TokenClock()
            clocks.append((time.perf_counter(), streamer))
        kwargs = {k: v for k, v in options.items() if k != "cache_factory"}
        if "cache_factory" in options:
            kwargs["cache"] = options["cache_factory"]()
        output = model.generate(
            input_ids,
            images=images,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            streamer=streamer,
            **kwargs,
        )
        if output.shape != (input_ids.shape[0], input_ids.shape[1] + new_tokens):
            raise RuntimeError(f"generate returned shape {tuple(output.shape)} for {new_tokens} new tokens")
        return output

    return run


def bare_llm(model: BunnyPhiForCausalLM) -> Any:
    """The same LLM as the native transformers class (PhiForCausalLM), with the same weights and
    attention implementation, and no Bunny code on its path (bunny.export.text builds it)."""
    from bunny.export.text import native_class, native_config, text_weights

    vocab = model.get_input_embeddings().weight.shape[0]
    bare = native_class(model)._from_config(
        native_config(model, vocab), attn_implementation=model.config._attn_implementation
    )
    bare.load_state_dict(text_weights(model, vocab))
    return bare.to(model.dtype).eval()


def bare_generate_fn(bare: Any, embeds: torch.Tensor, new_tokens: int, clocks: list[tuple[float, TokenClock]]) -> Callable[[], Any]:
    """The bare LLM's own `generate` on `inputs_embeds` (no image, no Bunny code), timestamped."""
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)

    def run() -> None:
        streamer = TokenClock()
        clocks.append((time.perf_counter(), streamer))
        output = bare.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, use_cache=True, streamer=streamer,
        )
        if output.shape[-1] != new_tokens:
            raise RuntimeError(f"the bare LLM's generate returned {output.shape[-1]} tokens, not {new_tokens}")

    return run


def decode_times(clocks: list[tuple[float, TokenClock]], repeats: int, new_tokens: int) -> tuple[list[float], list[float]]:
    """(time to first token, first -> last new token) of each timed run (the warm-up's clock comes first)."""
    timed = clocks[-repeats:]
    if any(len(clock.token_times) != new_tokens for _, clock in timed):
        raise RuntimeError("the streamer did not see one put per new token; decode timings would be wrong")
    return [c.token_times[0] - start for start, c in timed], [c.token_times[-1] - c.token_times[0] for _, c in timed]


def llm_weight_bytes(workload: Workload, dtype: torch.dtype) -> int:
    """Bytes of LLM weights a decode step reads: every matmul's (the embedding reads one row)."""
    d, f = workload.hidden_size, workload.intermediate_size
    numel = workload.num_layers * (4 * d * d + 2 * d * f) + d * workload.vocab_size
    return numel * torch.finfo(dtype).bits // 8


# -- benchmark -------------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    workload = WORKLOADS["quick" if args.quick else "issue"]
    dtype = DTYPES[args.dtype]
    device = torch.device(args.device)
    new_tokens = workload.new_tokens
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)

    load_before = round(os.getloadavg()[0], 2)  # other processes on the machine skew the timings
    with tempfile.TemporaryDirectory(prefix="bunny-bench-tower-") as tmp:
        save_random_siglip_tower(workload, Path(tmp))
        model = build_model(workload, dtype, Path(tmp), args.attn_implementation).to(device)

    single_ids, single_mask = make_prompts([workload.text_length], workload.vocab_size, generator)
    single_image = make_images(1, workload.image_size, dtype, generator)
    batch_lengths = [workload.text_length + d for d in workload.text_length_spread]
    batch_ids, batch_mask = make_prompts(batch_lengths, workload.vocab_size, generator)
    batch_images = make_images(len(batch_lengths), workload.image_size, dtype, generator)
    single_ids, single_mask, single_image, batch_ids, batch_mask, batch_images = (
        t.to(device) for t in (single_ids, single_mask, single_image, batch_ids, batch_mask, batch_images)
    )
    prefill_positions = workload.text_length + workload.image_tokens
    options = generation_options(args.cache, args.compile, model)

    def prefill() -> None:
        model(input_ids=single_ids, images=single_image, attention_mask=single_mask, use_cache=True, logits_to_keep=1)
        synchronize(device)

    def encode_image() -> None:
        model.encode_images(single_image)
        synchronize(device)

    bare = bare_llm(model).to(device)
    scale = model.get_input_embeddings().weight.float().std().cpu()
    bare_embeds = (torch.randn(1, prefill_positions, workload.hidden_size, generator=generator) * scale).to(device, dtype)
    d, f = workload.hidden_size, workload.intermediate_size
    shapes = [(1, d, d), (1, d, f), (1, f, d), (prefill_positions, d, d), (prefill_positions, d, f)]
    peaks = PeakTracker(shapes, device=device)
    rounds = 1 if args.quick else 2
    with torch.inference_mode() if args.grad_mode == "inference_mode" else torch.no_grad():
        peaks.measure(rounds)  # around the workload: before and after it
        logger.info("prefill (%d positions)", prefill_positions)
        prefill_s = time_runs(prefill, repeats)
        encode_s = time_runs(encode_image, repeats)
        logger.info("batch 1: %d tokens, and the bare LLM's generate, in turn", new_tokens)
        clocks: list[tuple[float, TokenClock]] = []
        bare_clocks: list[tuple[float, TokenClock]] = []
        single = generate_fn(model, single_ids, single_image, single_mask, new_tokens, options, clocks)
        single_s, bare_s = alternating_runs([single, bare_generate_fn(bare, bare_embeds, new_tokens, bare_clocks)], repeats)
        logger.info("batch %d: %d tokens", len(batch_lengths), new_tokens)
        batch_s = time_runs(generate_fn(model, batch_ids, batch_images, batch_mask, new_tokens, options), repeats)
        peaks.measure(rounds)

    first_token_s, decode_s = decode_times(clocks, repeats, new_tokens)
    bare_first_token_s, bare_decode_s = decode_times(bare_clocks, repeats, new_tokens)
    batch_tps = summary(batch_s, len(batch_lengths) * new_tokens)
    single_tps = summary(single_s, new_tokens)
    decode_tps = summary(decode_s, new_tokens - 1)
    bare_decode_tps = summary(bare_decode_s, new_tokens - 1)
    machine = peaks.report()
    weight_bytes = llm_weight_bytes(workload, dtype)
    results = {
        "batch1_end_to_end_tokens_per_s": single_tps,
        "batch1_generate_ms": ms(single_s),
        "prefill_forward_ms": ms(prefill_s),
        "prefill_image_encode_ms": ms(encode_s),
        "time_to_first_token_ms": ms(first_token_s),
        "batch1_decode_tokens_per_s": decode_tps,
        "batch1_decode_ms_per_token": round(1000 * statistics.median(decode_s) / (new_tokens - 1), 3),
        f"batch{len(batch_lengths)}_summed_tokens_per_s": batch_tps,
        f"batch{len(batch_lengths)}_generate_ms": ms(batch_s),
        f"batch{len(batch_lengths)}_over_batch1": round(batch_tps["median"] / single_tps["median"], 2),
        "bare_llm": {
            "what": "the same LLM as transformers' own PhiForCausalLM, generate on inputs_embeds of the prompt's "
            "length (no image), batch 1, in turn with Bunny's batch-1 runs",
            "end_to_end_tokens_per_s": summary(bare_s, new_tokens),
            "time_to_first_token_ms": ms(bare_first_token_s),
            "decode_tokens_per_s": bare_decode_tps,
        },
        "efficiency": {
            # what Bunny's wrapper costs: 1.0 is the bare LLM's speed
            "decode_bunny_over_bare": round(decode_tps["median"] / bare_decode_tps["median"], 3),
            "end_to_end_bunny_over_bare": round(single_tps["median"] / summary(bare_s, new_tokens)["median"], 3),
            "goal_decode_bunny_over_bare": GOAL_DECODE_OVER_BARE,
            "goal_met": decode_tps["median"] / bare_decode_tps["median"] >= GOAL_DECODE_OVER_BARE,
            # decode reads every LLM weight once per token: the share of the measured copy bandwidth used
            "decode_weight_bandwidth_share": round(
                weight_bytes * decode_tps["median"] / 1e9 / machine["memory_bandwidth_gb_s"]["peak"], 3
            ),
            "llm_weight_bytes": weight_bytes,
        },
        "machine": machine,
    }
    if not args.quick and device.type == "cpu":  # the original's figures and these goals are CPU ones
        speedup = single_tps["median"] / ORIGINAL_BATCH1_TOKENS_PER_S[args.dtype]
        results["goals"] = {
            "original_batch1_tokens_per_s": ORIGINAL_BATCH1_TOKENS_PER_S[args.dtype],
            "batch1_speedup_over_original": round(speedup, 2),
            "batch1_goal_met": speedup >= GOAL_BATCH1_SPEEDUP,
            "batch_goal_met": batch_tps["median"] / single_tps["median"] >= GOAL_BATCH_OVER_BATCH1,
        }
    results["settings"] = {
        "workload": "quick" if args.quick else "issue",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "gpu": device_name(device),
        "cpu": cpu_name(),
        "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],
        "env": {k: v for k, v in os.environ.items() if k in ENV_KEYS or k.startswith("MALLOC_")},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "attn_implementation": model.config._attn_implementation,
        "grad_mode": args.grad_mode,
        "repeats": repeats,
        "warmup_runs": 1,
        "statistic": "median and best of the timed runs",
        "time_to_first_token_definition": "generate call -> first new token, batch 1, same runs as end-to-end",
        "decode_definition": "first new token -> last new token over (new_tokens - 1), same runs as end-to-end",
        "prefill_positions": prefill_positions,
        "prefill_definition": "one forward over the prompt incl. tower + projector, logits_to_keep=1",
        "generate_kwargs": {
            "max_new_tokens": new_tokens,
            "min_new_tokens": new_tokens,
            "do_sample": False,
            "use_cache": True,
            "cache": {
                "default": "bunny's BlockGrowingCache (generate's default)",
                "hf-dynamic": "transformers' DynamicCache",
                "static": "cache_implementation='static'",
            }[args.cache],
            "compiled_decode": args.compile,
        },
        "batch_text_lengths": batch_lengths,
        "batch_padding_side": "left",
        "sizes": asdict(workload) | {"image_tokens": workload.image_tokens},
    }
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the model and images")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per figure after one warm-up (default 5; 2 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 8 new tokens, for a smoke test")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the issue's workload uses 2)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] to run the model and the peaks on a GPU")
    parser.add_argument(
        "--attn-implementation",
        choices=["sdpa", "eager"],
        default=None,
        help="attention implementation of the LLM (default: what transformers picks)",
    )
    parser.add_argument(
        "--grad-mode",
        choices=["inference_mode", "no_grad"],
        default="inference_mode",
        help="autograd mode around the timed calls (the CLI and the servers use inference_mode)",
    )
    parser.add_argument(
        "--cache",
        choices=["default", "hf-dynamic", "static"],
        default="default",
        help="KV cache of generate: default (bunny's block-growing cache), hf-dynamic (transformers' "
        "DynamicCache, for comparison) or static (cache_implementation='static')",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decode step through generate's compile_config (needs --cache static)",
    )
    args = parser.parse_args(argv)
    if args.compile and args.cache != "static":
        parser.error("--compile needs --cache static (generate only compiles with a static cache)")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    parse_device(parser, args.device)
    return args


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what is written to stdout inside (libraries' notices, e.g. deepspeed's accelerator line
    when transformers imports it) to stderr, so that stdout carries only the JSON result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    with stdout_to_stderr():
        results = benchmark(args)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
