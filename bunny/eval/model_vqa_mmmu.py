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
`{"validation_Art_1": "B", ...}`.

`--small-gpu-usage` is accepted for the original's command lines; pictures are always decoded one
batch at a time, so it changes nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any, Sequence

import numpy as np
import torch

from bunny.eval.answering import LoadedModel, Prompt, add_model_flags, answer_prompts, check_flags, load, settings_from_flags
from bunny.eval.mmmu.eval_mmmu import parse_multi_choice_response
from bunny.util.utils import atomic_write

MULTIPLE_IMAGES = "INVALID GENERATION FOR MULTIPLE IMAGE INPUTS"


def add_dataset_flags(parser: argparse.ArgumentParser, split: str) -> None:
    """The MMMU/CMMMU generators' flags besides the model's."""
    parser.add_argument("--data-path", type=str, required=True, help="the dataset folder, as cloned from the hub")
    parser.add_argument("--config-path", type=str, required=True, help="the YAML file of prompt formats")
    parser.add_argument("--output-path", type=str, required=True, help="where the answers are written")
    parser.add_argument("--split", type=str, default=split, help="dataset split")
    parser.add_argument("--seed", type=int, default=42, help="seed of the random answers and of torch")
    parser.add_argument("--small-gpu-usage", action="store_true", help="accepted for compatibility; changes nothing")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def generated_answers(queries: Sequence[Any], loaded: LoadedModel, args: argparse.Namespace) -> dict[str, str]:
    """{sample_id: raw answer} for the queries that are asked (the others have `image` None and are
    answered at random by the caller). A query with no picture at all is asked as text."""
    asked = [q for q in queries if not getattr(q, "multiple_images", q.image is None)]
    settings = settings_from_flags(args, 128, trim_stop=False)
    prompts = [Prompt(q.prompt, q.image) for q in asked]
    return dict(zip([q.sample_id for q in asked], answer_prompts(prompts, loaded, settings, args.batch_size)))


def predictions(queries: Sequence[Any], answers: dict[str, str]) -> dict[str, str]:
    """The prediction file's content, random draws made in question order."""
    out = {}
    for query in queries:
        multiple_choice = query.question_type == "multiple-choice"
        if query.sample_id in answers:
            response = answers[query.sample_id]
        else:
            response = random.choice(query.all_choices) if multiple_choice else MULTIPLE_IMAGES
        out[query.sample_id] = (
            parse_multi_choice_response(response, query.all_choices, query.index2ans) if multiple_choice else response
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.model_vqa_mmmu", description=__doc__.split("\n\n")[0])
    add_model_flags(parser, temperature=None)
    add_dataset_flags(parser, "validation")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    from bunny.eval.mmmu import data

    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args)
    set_seed(args.seed)
    try:
        config = data.load_config(args.config_path)
        queries = [data.build_query(sample, config) for sample in data.load_split(args.data_path, args.split)]
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    loaded, _ = load(args)
    result = predictions(queries, generated_answers(queries, loaded, args))
    with atomic_write(args.output_path) as f:
        json.dump(result, f, indent=4, ensure_ascii=False)
    return result


if __name__ == "__main__":
    main()
