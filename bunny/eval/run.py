"""One command per benchmark: prepare what is missing, answer, score, and report.

    python -m bunny.eval run <benchmark> --model-path P [--model-base B] --model-type T \\
        [--data-dir eval/<benchmark>] [--batch-size N] [--split S] [--run-name NAME] [--device cpu]
    torchrun --nproc-per-node 4 -m bunny.eval run <benchmark> ...      # the questions split over 4 processes

Benchmarks: mme, mmbench, seedbench, mmmu, cmmmu, vqav2, gqa, scienceqa, pope, mmvet, textvqa, vizwiz, and
shapes (the demo's synthetic questions). Everything a run writes goes to `<data-dir>/runs/<run name>/`:
the answers (kept as they are made: an interrupted run resumes where it stopped, with any batch size or
number of processes), the converters' and scorers' files, upload files for the server-scored benchmarks,
and `report.json`: the score (the original scorer's, and a corrected one where the original parses
answers wrongly), per-category metrics, counts (missing answers, random fallbacks), the model, template
and generation settings, hashes of the inputs, software versions and timings. A one-screen table is
printed at the end. A missing official file stops the run before anything else, naming the file and
where it goes (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from bunny.eval.common import MissingDataError, read_jsonl
from bunny.util.utils import atomic_write


@dataclass(frozen=True)
class Benchmark:
    generator: str  # module of bunny.eval
    answers: str  # the answer file's name in the run folder
    inputs: Callable[[str, str], list[str]]  # (data dir, split) -> the generator's input flags
    split: str | None = None  # the default split (MMBench TSV name, MMMU/CMMMU split)
    flags: tuple[str, ...] = ()  # the original script's extra generator flags


def standard(question_file: str, image_folder: str) -> Callable[[str, str], list[str]]:
    return lambda data_dir, split: [
        "--question-file", os.path.join(data_dir, question_file), "--image-folder", os.path.join(data_dir, image_folder)
    ]


def dataset(folder: str, config: str) -> Callable[[str, str], list[str]]:
    return lambda data_dir, split: [
        "--data-path", os.path.join(data_dir, folder), "--config-path", os.path.join(data_dir, config), "--split", split
    ]


BENCHMARKS = {
    "mme": Benchmark("model_vqa_loader", "answers.jsonl", standard("bunny_mme.jsonl", "MME_Benchmark_release_version")),
    "mmbench": Benchmark(
        "model_vqa_mmbench", "answers.jsonl",
        lambda data_dir, split: ["--question-file", os.path.join(data_dir, f"{split}.tsv"),
                                 "--lang", "cn" if "_CN_" in split else "en"],
        split="MMBench_DEV_EN_legacy", flags=("--single-pred-prompt",),
    ),
    "seedbench": Benchmark("model_vqa_loader", "answers.jsonl", standard("bunny-seed-bench.jsonl", ".")),
    "mmmu": Benchmark("model_vqa_mmmu", "predictions.json", dataset("MMMU", "config.yaml"), split="validation"),
    "cmmmu": Benchmark("model_vqa_cmmmu", "answers.jsonl", dataset("CMMMU", "prompt.yaml"), split="val"),
    "vqav2": Benchmark("model_vqa_loader", "answers.jsonl", standard("bunny_vqav2_mscoco_test-dev2015.jsonl", "test2015")),
    "gqa": Benchmark("model_vqa_loader", "answers.jsonl", standard("bunny_gqa_testdev_balanced.jsonl", "images")),
    "scienceqa": Benchmark(
        "model_vqa_science", "answers.jsonl", standard("bunny_test_CQM-A.json", "test"), flags=("--single-pred-prompt",)
    ),
    "pope": Benchmark("model_vqa_loader", "answers.jsonl", standard("bunny_pope_test.jsonl", "val2014")),
    "mmvet": Benchmark("model_vqa", "answers.jsonl", standard("bunny-mm-vet.jsonl", "images")),
    "textvqa": Benchmark("model_vqa_loader", "answers.jsonl", standard("bunny_textvqa_val_v051_ocr.jsonl", "train_images")),
    "vizwiz": Benchmark("model_vqa_loader", "answers.jsonl", standard("bunny_test.jsonl", "test")),
    "shapes": Benchmark("model_vqa_loader", "answers.jsonl", standard(os.path.join("eval", "questions.jsonl"), "images")),
}
# Generators that take `--temperature` and `--max_new_tokens` (the others have the original's fixed settings).
TAKES_TEMPERATURE = {"model_vqa_loader", "model_vqa", "model_vqa_mmbench", "model_vqa_science"}
TAKES_MAX_NEW_TOKENS = {"model_vqa_loader", "model_vqa"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval run", description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("--model-path", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--model-base", default=None, help="base LLM, for LoRA or projector-only checkpoints")
    parser.add_argument("--model-type", required=True, help="the LLM back-end of the checkpoint")
    parser.add_argument("--conv-mode", default=None, help="conversation template (default: the model type's)")
    parser.add_argument("--data-dir", default=None, help="the benchmark's folder (default: eval/<benchmark> as the original)")
    parser.add_argument("--split", default=None, help="MMBench TSV name, MMMU or CMMMU split (default: the original's)")
    parser.add_argument("--run-name", default=None, help="the run folder's name (default: the checkpoint's folder name)")
    parser.add_argument("--run-dir", default=None, help="the run folder (default: <data-dir>/runs/<run name>)")
    parser.add_argument("--batch-size", type=int, default=1, help="questions answered together (answers do not change)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="most tokens per answer, where the generator has the flag")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--judge-url", default=None, help="MM-Vet: an OpenAI-compatible server that grades the answers")
    parser.add_argument("--judge-model", default="gpt-4-0613", help="MM-Vet: the grading model's name at --judge-url")
    parser.add_argument("--judge-prompt-file", default=None, help="MM-Vet: the grading prompt template to use")
    parser.add_argument(
        "--judge-api-key-env", default=None, help="MM-Vet: the environment variable holding the judge's API key (none sent without it)"
    )
    return parser


def generator_argv(args: argparse.Namespace, spec: Benchmark, data_dir: str, run_dir: str, answers: str, split: str) -> list[str]:
    """The generator's command line for this run (the original script's flags, in the run folder)."""
    argv = ["--model-path", args.model_path, "--model-type", args.model_type, *spec.inputs(data_dir, split), *spec.flags]
    argv += ["--output-path" if spec.generator in ("model_vqa_mmmu", "model_vqa_cmmmu") else "--answers-file", answers]
    argv += ["--batch-size", str(args.batch_size), "--progress-dir", os.path.join(run_dir, ".progress")]
    for flag, value in (("--model-base", args.model_base), ("--conv-mode", args.conv_mode), ("--device", args.device)):
        if value is not None:
            argv += [flag, value]
    if spec.generator in TAKES_TEMPERATURE:
        argv += ["--temperature", "0"]
    if spec.generator in TAKES_MAX_NEW_TOKENS and args.max_new_tokens is not None:
        argv += ["--max_new_tokens", str(args.max_new_tokens)]
    return argv


def run_generator(module: str, argv: list[str]) -> Any:
    import importlib

    return importlib.import_module(f"bunny.eval.{module}").main(argv)


def ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def barrier() -> None:
    """Wait for every process of a torchrun launch (gloo: works on CPUs and GPUs alike)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()
    dist.destroy_process_group()


def rank_device(device: str | None, local_rank: int) -> str | None:
    """Each process of a multi-GPU launch on its own GPU."""
    import torch

    if device in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return device


def generate(args: argparse.Namespace, spec: Benchmark, data_dir: str, run_dir: str, split: str) -> str | None:
    """Answer every question; the answer file's path (None on the other processes of a torchrun launch).
    Under torchrun each process answers its chunk, then process 0 writes the whole file from the answers
    kept by all of them (generating nothing more unless some are missing)."""
    answers = os.path.join(run_dir, spec.answers)
    rank, world, local_rank = ranks()
    if world > 1:
        stem, extension = os.path.splitext(spec.answers)
        chunk_args = argparse.Namespace(**{**vars(args), "device": rank_device(args.device, local_rank)})
        chunk_file = os.path.join(run_dir, "chunks", f"{world}_{rank}{extension}")
        argv = generator_argv(chunk_args, spec, data_dir, run_dir, chunk_file, split)
        run_generator(spec.generator, argv + ["--num-chunks", str(world), "--chunk-idx", str(rank)])
        barrier()
        if rank != 0:
            return None
    run_generator(spec.generator, generator_argv(args, spec, data_dir, run_dir, answers, split))
    return answers


def run_header(run_dir: str) -> dict[str, Any]:
    """The fingerprint the answers were kept under: generator, input hashes, weights, settings."""
    progress = os.path.join(run_dir, ".progress")
    for name in sorted(os.listdir(progress)) if os.path.isdir(progress) else []:
        with open(os.path.join(progress, name), encoding="utf-8") as f:
            first = f.readline()
        if first.strip():
            return json.loads(first)
    return {}


def software() -> dict[str, str]:
    import importlib.metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("bunny", "torch", "transformers", "accelerate", "peft"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# The shapes benchmark's extra sets: name -> (question file, answer key), under <data-dir>/eval/.
SHAPES_SETS = {
    # the control: the same questions about a blank picture (a model that reads the question and not
    # the picture scores as well there)
    "blind": ("questions_blind.jsonl", "answer_key.jsonl"),
    # pictures drawn by another procedure than the training pictures' (bunny.demo.foreign)
    "foreign": ("questions_foreign.jsonl", "answer_key_foreign.jsonl"),
}


def shapes_set(args: argparse.Namespace, spec: Benchmark, data_dir: str, run_dir: str, name: str) -> dict[str, Any] | None:
    """Answers to one of `SHAPES_SETS` (None when the data set has no such file), scored."""
    from bunny.eval.eval_shapes import score

    questions, key = (os.path.join(data_dir, "eval", file) for file in SHAPES_SETS[name])
    if not os.path.exists(questions):
        return None
    answers = os.path.join(run_dir, f"answers_{name}.jsonl")
    argv = generator_argv(args, spec, data_dir, run_dir, answers, "")
    argv[argv.index("--question-file") + 1] = questions
    argv[argv.index("--progress-dir") + 1] = os.path.join(run_dir, f".progress-{name}")
    run_generator(spec.generator, argv)
    return score(read_jsonl(key), read_jsonl(answers))


def judge_mmvet(args: argparse.Namespace, data_dir: str, answers: str, run_dir: str) -> dict[str, Any]:
    from bunny.eval.mm_vet.judge import judge_scores, load_prompt_template

    texts = {f"v1_{row['question_id']}": row["text"] for row in read_jsonl(answers, ("question_id", "text"))}
    prompt = load_prompt_template(args.judge_prompt_file) if args.judge_prompt_file else None
    api_key = os.environ.get(args.judge_api_key_env) if args.judge_api_key_env else None
    return judge_scores(
        os.path.join(data_dir, "mm-vet.json"), texts, args.judge_url, args.judge_model,
        os.path.join(run_dir, "judge_cache.jsonl"), api_key, prompt,
    )


def score_run(args: argparse.Namespace, data_dir: str, answers: str, run_dir: str, split: str) -> dict[str, Any]:
    """The scorer's result for the run (see `bunny.eval.scoring.score`), with the shapes control and the
    MM-Vet judge where they apply."""
    from bunny.eval.scoring import score

    spec = BENCHMARKS[args.benchmark]
    scored_dir = os.path.join(data_dir, "eval") if args.benchmark == "shapes" else data_dir
    result = score(args.benchmark, scored_dir, answers, run_dir, split or None)
    if args.benchmark == "shapes":
        for name in SHAPES_SETS:
            extra = shapes_set(args, spec, data_dir, run_dir, name)
            if extra is not None:
                result["metrics"][f"{name}_accuracy"] = extra["accuracy"]
                result["metrics"][f"{name}_accuracy_by_type"] = extra["accuracy_by_type"]
    if args.benchmark == "mmvet" and args.judge_url:
        result["judge"] = judge_mmvet(args, data_dir, answers, run_dir)
        result["score"], result["score_name"] = result["judge"]["score"], f"MM-Vet total (judge: {args.judge_model})"
    return result


def build_report(
    args: argparse.Namespace, result: dict[str, Any], run_dir: str, split: str, timings: dict[str, float], argv: Sequence[str]
) -> dict[str, Any]:
    from bunny.eval.store import weights_identity
    from bunny.util.tokens import get_model_name_from_path

    header = run_header(run_dir)
    settings = header.get("settings", {})
    return {
        **{key: value for key, value in result.items() if key != "printed"},
        "split": split or None,
        "run_dir": run_dir,
        "model": {
            "path": args.model_path, "base": args.model_base, "type": args.model_type,
            "name": get_model_name_from_path(args.model_path),
            "weights": header.get("model", weights_identity(args.model_path)), "base_weights": header.get("model_base"),
        },
        "template": settings.get("conv_mode"),
        "generation": {**{k: v for k, v in settings.items() if k != "conv_mode"}, "batch_size": args.batch_size},
        "inputs": {"generator": header.get("generator"), "questions_hash": header.get("questions")},
        "software": software(),
        "timings": timings,
        "command": [sys.executable, "-m", "bunny.eval", "run", *argv],
        "scorer_output": result.get("printed", ""),
    }


def table(report: dict[str, Any], path: str) -> str:
    """The one-screen summary printed at the end of a run."""
    counts = report.get("counts", {})
    lines = [
        f"benchmark  {report['benchmark']}" + (f" ({report['split']})" if report.get("split") else ""),
        f"model      {report['model']['path']} ({report['model']['type']}, template {report['template']})",
    ]
    score = report.get("score")
    lines.append(f"score      {report.get('score_name', 'score')}: " + ("-" if score is None else f"{score:.2f}"))
    corrected = report.get("corrected")
    if corrected and corrected.get("score") is not None:
        changes = corrected.get("changes", "")
        lines.append(f"corrected  {corrected['score']:.2f} ({changes[:60] + '...' if len(changes) > 60 else changes})")
    lines.append("questions  " + ", ".join(f"{key} {value}" for key, value in counts.items()))
    upload = report.get("upload")
    if upload:
        lines.append(f"upload     {upload['file']} -> {upload['to']}")
    lines.append("time       " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report["timings"].items()))
    lines.append(f"report     {path}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    from bunny.eval.prepare import DEFAULT_DATA_DIRS, prepare
    from bunny.util.tokens import get_model_name_from_path

    parser = build_parser()
    args = parser.parse_args(argv)
    spec = BENCHMARKS[args.benchmark]
    data_dir = args.data_dir or DEFAULT_DATA_DIRS[args.benchmark]
    split = args.split or spec.split or ""
    run_name = args.run_name or get_model_name_from_path(args.model_path) + (f"-{split}" if args.split else "")
    run_dir = args.run_dir or os.path.join(data_dir, "runs", run_name)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        prepare(args.benchmark, data_dir)
    except MissingDataError as err:
        parser.exit(2, f"error: {err}\n")
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")
    timings["prepare"] = time.perf_counter() - start
    answers = generate(args, spec, data_dir, run_dir, split)
    timings["generate"] = time.perf_counter() - start - timings["prepare"]
    if answers is None:
        return None  # another process of a torchrun launch: process 0 scores and reports
    try:
        result = score_run(args, data_dir, answers, run_dir, split)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")
    timings["score"] = time.perf_counter() - start - timings["prepare"] - timings["generate"]
    timings["total"] = time.perf_counter() - start
    report = build_report(args, result, run_dir, split, timings, list(argv) if argv is not None else sys.argv[1:])
    path = os.path.join(run_dir, "report.json")
    with atomic_write(path) as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    if result.get("printed"):
        print(result["printed"].rstrip())
    print(table(report, path))
    return report
