"""Answer MMMU questions with a Bunny model and write the prediction file its scorer and server read.

Run as:
    python -m bunny.eval.model_vqa_mmmu --model-path PATH [--model-base BASE] --model-type phi-2 \\
        --data-path eval/mmmu/MMMU --config-path eval/mmmu/config.yaml \\
        --output-path eval/mmmu/answers_upload/validation/bunny-phi-2.json [--split validation] \\
        [--seed 42] [--batch-size 8] [--device cpu]

`--data-path` is the MMMU dataset as the hub holds it (`<Subject>/<split>-*.parquet`, the 30 subjects
read in turn); `--config-path` the prompt formats (`python -m bunny.eval.prepare mmmu` writes one).
Answers are greedy, at most 128 tokens. A multiple-choice answer is parsed into the option's letter
(`parse_multi_choice_response`, a random letter when none can be read); an open answer is kept
as it is. A question whose options show more than one picture is not asked: it gets a random letter,
or `INVALID GENERATION FOR MULTIPLE IMAGE INPUTS`. Random draws come from Python's `random`, seeded
with `--seed` and drawn in question order, as in the original. Output: a JSON object
`{"validation_Art_1": "B", ...}`, and beside it the raw answers, `<output>.responses.jsonl`
(`{"id", "question_type", "response", "generated", "all_choices", "index2ans"}` per question), from
which the scorer can parse again. Answers are kept as they are made: an interrupted run resumes.

`--small-gpu-usage` is accepted for the original's command lines; pictures are always decoded one
batch at a time, so it changes nothing. Added: `--batch-size`, `--device`, `--num-chunks/--chunk-idx`
(a chunk's output holds its questions only; `python -m bunny.eval run` under torchrun uses them) and
`--progress-dir`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bunny.eval.answering import Prompt, add_chunk_flags, add_model_flags, check_flags, settings_from_flags
from bunny.eval.common import chunk_range, responses_path
from bunny.eval.mmmu.eval_mmmu import parse_multi_choice_response
from bunny.eval.store import answer_rows
from bunny.util.utils import atomic_write, write_jsonl

MULTIPLE_IMAGES = "INVALID GENERATION FOR MULTIPLE IMAGE INPUTS"


def add_dataset_flags(parser: argparse.ArgumentParser, split: str) -> None:
    """The MMMU/CMMMU generators' flags besides the model's."""
    parser.add_argument("--data-path", type=str, required=True, help="the dataset folder, as cloned from the hub")
    parser.add_argument("--config-path", type=str, required=True, help="the YAML file of prompt formats")
    parser.add_argument("--output-path", type=str, required=True, help="where the answers are written")
    parser.add_argument("--split", type=str, default=split, help="dataset split")
    parser.add_argument("--seed", type=int, default=42, help="seed of the random answers and of torch")
    parser.add_argument("--small-gpu-usage", action="store_true", help="accepted for compatibility; changes nothing")
    add_chunk_flags(parser)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def generated_answers(queries: Sequence[Any], args: argparse.Namespace, generator: str) -> dict[Any, str]:
    """{sample_id: raw answer} for the queries of the chunk that are asked (the others, with several
    pictures, are answered at random by the caller); kept as they come, so an interrupted run resumes.
    A query with no picture at all is asked as text."""
    rows = chunk_range(len(queries), args.num_chunks, args.chunk_idx)
    asked = [(row, queries[row]) for row in rows if not getattr(queries[row], "multiple_images", queries[row].image is None)]
    settings = settings_from_flags(args, 128, trim_stop=False)
    texts = answer_rows(
        args, generator, args.data_path, settings, [q.sample_id for _, q in asked],
        [Prompt(q.prompt, q.image) for _, q in asked], [row for row, _ in asked], answers_file=args.output_path,
    )
    return {q.sample_id: text for (_, q), text in zip(asked, texts)}


def predictions(queries: Sequence[Any], answers: dict[Any, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The prediction file's content, random draws made in question order, and the raw responses."""
    out, raw = {}, []
    for query in queries:
        multiple_choice = query.question_type == "multiple-choice"
        generated = query.sample_id in answers
        if generated:
            response = answers[query.sample_id]
        else:
            response = random.choice(query.all_choices) if multiple_choice else MULTIPLE_IMAGES
        out[query.sample_id] = (
            parse_multi_choice_response(response, query.all_choices, query.index2ans) if multiple_choice else response
        )
        raw.append({"id": query.sample_id, "question_type": query.question_type, "response": response,
                    "generated": generated, "all_choices": query.all_choices, "index2ans": query.index2ans})
    return out, raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.model_vqa_mmmu", description=__doc__.split("\n\n")[0])
    add_model_flags(parser, temperature=None)
    add_dataset_flags(parser, "validation")
    return parser


def answer_dataset(parser: argparse.ArgumentParser, argv: Sequence[str] | None, data: Any, finish: Callable) -> tuple[Any, Any]:
    """The MMMU and CMMMU generators' run: read the flags, the prompt config and the split (`data`: the
    benchmark's data module), answer the chunk's questions, `finish` them into the output (random draws
    in question order) and write the raw responses; (the flags, the output)."""
    args = parser.parse_args(argv)
    check_flags(parser, args)
    set_seed(args.seed)
    try:
        config = data.load_config(args.config_path)
        queries = [data.build_query(sample, config) for sample in data.load_split(args.data_path, args.split)]
        answers = generated_answers(queries, args, parser.prog)
        chunk = chunk_range(len(queries), args.num_chunks, args.chunk_idx)
        output, raw = finish(queries[chunk.start : chunk.stop], answers)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    write_jsonl(responses_path(args.output_path), raw)
    return args, output


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    from bunny.eval.mmmu import data

    args, result = answer_dataset(build_parser(), argv, data, predictions)
    with atomic_write(args.output_path) as f:
        json.dump(result, f, indent=4, ensure_ascii=False)
    return result


if __name__ == "__main__":
    main()
