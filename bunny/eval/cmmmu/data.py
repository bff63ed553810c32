"""CMMMU's data: the Hugging Face dataset read in place, the prompt config, the questions as prompts,
and the validation answer file.

The dataset is a clone of https://huggingface.co/datasets/m-a-p/CMMMU (parquet files
`<data_path>/<config>/<split>-NNNNN-of-NNNNN.parquet` for the six configs and the splits dev / val /
test; the hub's converted layout `<config>/<split>/*.parquet` is read too), by default at `eval/cmmmu/CMMMU`:

    git lfs install && git clone https://huggingface.co/datasets/m-a-p/CMMMU eval/cmmmu/CMMMU
    python -m bunny.eval.prepare cmmmu    # writes eval/cmmmu/prompt.yaml and eval/cmmmu/cmmmu-data-val-answer.jsonl

`prepare(data_dir)` is that second step as a function. The answer generator
(`python -m bunny.eval.model_vqa_cmmmu`) reads the questions through `load_split` + `build_query`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from bunny.eval.mmmu.data import (
    check_template,
    image_loader,
    read_parquet_rows,
    read_yaml_mapping,
    require_fields,
    split_files,
    unwrap_single_values,
)
from bunny.util.utils import atomic_write, write_jsonl

if TYPE_CHECKING:
    from PIL import Image

# The six dataset configs, in the order the original concatenates them.
CONFIGS: tuple[str, ...] = (
    "art_and_design", "business", "health_and_medicine", "humanities_and_social_sciences", "science",
    "technology_and_engineering",
)
DATASET_URL = "https://huggingface.co/datasets/m-a-p/CMMMU"
CONFIG_FILE = "prompt.yaml"
ANSWER_FILE = "cmmmu-data-val-answer.jsonl"
DATASET_FOLDER = "CMMMU"

CHOICE, TRUE_FALSE, FILL_IN = "选择", "判断", "填空"
# The official task instructions, one per question type: choice, true/false, fill-in.
TASK_INSTRUCTIONS = (
    "请回答以下多项选择题，并选出正确选项。这些题目可能包括单选和多选题型。如果所提供的信息不足以确定一个明确的答案，"
    "那么请根据可用的数据和你的判断来选择最可能正确的选项。",
    "请回答以下判断题，并根据题目描述和所给的信息来判断问题中陈述的对错。如果信息不完整或不足以作出绝对判断，"
    "请运用你的逻辑推理和现有信息来做出最可能的判断。",
    "请回答以下填空题，并根据题目的要求和所提供的信息来给出最恰当的答案。如果信息不足以确切回答，"
    "那么请依据现有的数据和你的推理能力来填写最合理的答案。",
)
# Literal blocks keep one trailing newline: choice "问题：{}\n选项：\n{}\n正确答案：\n", the others "问题：{}\n正确答案：\n".
CONFIG_YAML = """\
# CMMMU task instructions and prompt formats (read by python -m bunny.eval.model_vqa_cmmmu --config-path ...).
# task_instructions stays a list (choice, true/false, fill-in); the other single-element lists are unwrapped.
task_instructions:
{instructions}
multi_choice_example_format:
- |
  问题：{{}}
  选项：
  {{}}
  正确答案：
T/F_example_format:
- |
  问题：{{}}
  正确答案：
short_ans_example_format:
- |
  问题：{{}}
  正确答案：
""".format(instructions="\n".join(f'- "{text}"' for text in TASK_INSTRUCTIONS))
# key -> values it is formatted with (the original passes an empty options block to the true/false format)
CONFIG_TEMPLATES = {"multi_choice_example_format": 2, "T/F_example_format": 2, "short_ans_example_format": 1}

OPTION_COLUMN = re.compile(r"option\d+")
FILENAME_COLUMN = re.compile(r"image_\d+_filename")


def load_config(path: str) -> dict[str, Any]:
    """The prompt config at `path` (the original's eval/cmmmu/prompt.yaml): `task_instructions` stays the
    list of 3 instructions (choice, true/false, fill-in), other single-element lists are unwrapped."""
    config = unwrap_single_values(read_yaml_mapping(path), path, keep=("task_instructions", "eval_params"))
    instructions = config.get("task_instructions")
    three_strings = isinstance(instructions, list) and len(instructions) == 3
    if instructions and not (three_strings and all(isinstance(text, str) for text in instructions)):
        raise ValueError(f"{path}: 'task_instructions' must list 3 strings (choice, true/false, fill-in)")
    for key, slots in CONFIG_TEMPLATES.items():
        check_template(config, key, slots, path)
    return config


def dataset_source(data_path: str) -> str:
    return f"clone it with `git lfs install && git clone {DATASET_URL} {data_path}`"


def load_split(data_path: str, split: str, without_images: bool = False) -> list[dict[str, Any]]:
    """Every config's rows of `split` (dev, val or test), concatenated in CONFIGS order."""
    rows = []
    for config in CONFIGS:
        for path in split_files(data_path, config, split, "the CMMMU dataset", dataset_source(data_path)):
            rows.extend(read_parquet_rows(path, without_images))
    return rows


@dataclass
class Query:
    """One CMMMU question ready for the generator."""

    sample_id: int | str  # the dataset's id, as it is written to the output file
    question_type: str  # "选择" (choice), "判断" (true/false) or "填空" (fill-in)
    prompt: str  # the user text that follows "<image>\n"
    image: "Callable[[], Image.Image] | None"  # decodes image_1 in RGB; None when image_2 is present or image_1 is missing
    multiple_images: bool  # image_2 is present: the original answers without the model
    all_choices: list[str] = field(default_factory=list)  # letters of the present options (choice questions)


def options_of(sample: dict[str, Any]) -> list[str]:
    """option1..option4 up to the first missing one."""
    options = []
    for number in range(1, 5):
        option = sample.get(f"option{number}")
        if option is None:
            break
        options.append(str(option))
    return options


def build_query(sample: dict[str, Any], config: dict[str, Any]) -> Query:
    """The prompt, choices and image of one dataset row (the original's prompt construction)."""
    where = f"CMMMU sample {sample.get('id')!r}"
    require_fields(sample, ("id", "type", "question"), where)
    question_type, question = sample["type"], sample["question"]
    all_choices: list[str] = []
    if question_type == CHOICE:
        options = options_of(sample)
        all_choices = [chr(ord("A") + index) for index in range(len(options))]
        listing = "".join(f"({letter}) {option}\n" for letter, option in zip(all_choices, options))
        body, instruction = config["multi_choice_example_format"].format(question, listing), 0
    elif question_type == TRUE_FALSE:
        body, instruction = config["T/F_example_format"].format(question, ""), 1
    else:
        body, instruction = config["short_ans_example_format"].format(question), 2
    instructions = config.get("task_instructions")
    prompt = f"{instructions[instruction].strip()}\n\n{body}" if instructions else body
    multiple_images = sample.get("image_2") is not None
    image = None if multiple_images else image_loader(sample.get("image_1"), f"{where}, image_1")
    return Query(sample["id"], question_type, prompt, image, multiple_images, all_choices)


def write_config(path: str) -> None:
    """Write a prompt.yaml holding the official task instructions and the original's formats."""
    with atomic_write(path) as f:
        f.write(CONFIG_YAML)


def answer_row(row: dict[str, Any]) -> dict[str, Any]:
    """A dataset row as the answer file holds it: no images, no empty option fields, and the image file
    names as `img_list` (sorted, as the official file lists them) when the dataset has no such column."""
    kept = {
        key: value for key, value in row.items()
        if not FILENAME_COLUMN.fullmatch(key) and not (OPTION_COLUMN.fullmatch(key) and value is None)
    }
    if "img_list" not in kept:
        kept["img_list"] = sorted(value for key, value in row.items() if FILENAME_COLUMN.fullmatch(key) and value)
    return kept


def answer_rows(rows: Sequence[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    seen = set()
    answers = []
    for row in rows:
        row_where = f"{where}, sample {row.get('id')!r}"
        require_fields(row, ("id", "type", "answer", "category"), row_where)
        if row["id"] in seen:
            raise ValueError(f"{row_where}: the id occurs twice")
        seen.add(row["id"])
        answers.append(answer_row(row))
    return answers


def prepare(data_dir: str) -> list[str]:
    """Write `<data_dir>/prompt.yaml` and `<data_dir>/cmmmu-data-val-answer.jsonl` (the val split of the
    dataset clone `<data_dir>/CMMMU` without its images), each only if absent; the paths written."""
    written = []
    config_path = os.path.join(data_dir, CONFIG_FILE)
    if not os.path.exists(config_path):
        write_config(config_path)
        written.append(config_path)
    answers_path = os.path.join(data_dir, ANSWER_FILE)
    if not os.path.exists(answers_path):
        dataset = os.path.join(data_dir, DATASET_FOLDER)
        write_jsonl(answers_path, answer_rows(load_split(dataset, "val", without_images=True), dataset))
        written.append(answers_path)
    return written
