"""MMMU's data: the Hugging Face dataset read in place, the prompt config, the questions as prompts,
and the validation answer key.

The dataset is a clone of https://huggingface.co/datasets/MMMU/MMMU (parquet files
`<data_path>/<Subject>/<split>-NNNNN-of-NNNNN.parquet`; the hub's converted layout
`<data_path>/<Subject>/<split>/*.parquet` is read too), placed by default at `eval/mmmu/MMMU`:

    git lfs install && git clone https://huggingface.co/datasets/MMMU/MMMU eval/mmmu/MMMU
    python -m bunny.eval.prepare mmmu     # writes eval/mmmu/config.yaml and eval/mmmu/answer_dict_val.json

`prepare(data_dir)` is that second step as a function. The answer generator
(`python -m bunny.eval.model_vqa_mmmu`) reads the questions through `load_split` + `build_query`;
images stay encoded until `build_query` decodes the one a question uses.
"""

from __future__ import annotations

import ast
import glob
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from bunny.eval.common import MissingDataError
from bunny.util.utils import atomic_write

if TYPE_CHECKING:
    from PIL import Image

# The 30 subject configs of the dataset, in the order the original concatenates (and scores) them.
SUBJECTS: tuple[str, ...] = (
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory", "Basic_Medical_Science",
    "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design", "Diagnostics_and_Laboratory_Medicine",
    "Economics", "Electronics", "Energy_and_Power", "Finance", "Geography", "History", "Literature", "Manage",
    "Marketing", "Materials", "Math", "Mechanical_Engineering", "Music", "Pharmacy", "Physics", "Psychology",
    "Public_Health", "Sociology",
)
DATASET_URL = "https://huggingface.co/datasets/MMMU/MMMU"
CONFIG_FILE = "config.yaml"
ANSWER_FILE = "answer_dict_val.json"
DATASET_FOLDER = "MMMU"

# Parsed values of the original's eval/mmmu/config.yaml (its file writes the formats as multi-line
# double-quoted scalars whose blank lines fold into single newlines).
CONFIG_YAML = """\
# MMMU prompt formats (read by python -m bunny.eval.model_vqa_mmmu --config-path ...).
# Single-element lists are unwrapped when read, except eval_params.
task_instructions:
- ""
multi_choice_example_format:
- "{}\\n{}\\nAnswer with the option's letter from the given choices directly."
short_ans_example_format:
- "{}\\nAnswer the question using a single word or phrase."
temperature:
- 0
"""
CONFIG_TEMPLATES = {"multi_choice_example_format": 2, "short_ans_example_format": 1}  # key -> number of {} slots

IMAGE_COLUMN = re.compile(r"image_\d+")
OPTION_IMAGE = re.compile(r"<img='(.*?)'>")  # an image referenced from an option's text
LFS_POINTER = b"version https://git-lfs"


# --- files shared with CMMMU: YAML configs, parquet splits, embedded images ---------------------------

def read_yaml_mapping(path: str) -> dict[str, Any]:
    """The YAML mapping in `path`; anything else is a ValueError naming the file."""
    import yaml

    with open(path, encoding="utf-8") as f:
        try:
            value = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a mapping of prompt settings, found {type(value).__name__}")
    return value


def unwrap_single_values(config: dict[str, Any], path: str, keep: Sequence[str]) -> dict[str, Any]:
    """`config` with every one-element list replaced by its element (the original's convention), except
    the keys in `keep`; a longer list is an error naming the key."""
    unwrapped = {}
    for key, value in config.items():
        if key not in keep and isinstance(value, list):
            if len(value) != 1:
                raise ValueError(f"{path}: {key!r} has {len(value)} values; expected exactly one")
            value = value[0]
        unwrapped[key] = value
    return unwrapped


def check_template(config: dict[str, Any], key: str, slots: int, path: str) -> None:
    """A prompt format must be a string that `str.format` fills with `slots` values."""
    template = config.get(key)
    if not isinstance(template, str):
        raise ValueError(f"{path}: {key!r} must be a string prompt format, found {template!r}")
    try:
        template.format(*["x"] * slots)
    except (IndexError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: {key!r} is not a format taking {slots} '{{}}' value(s) ({err!r})") from None


def split_files(dataset_dir: str, config: str, split: str, what: str, source: str) -> list[str]:
    """The parquet files of `split` in the dataset's `config` folder (hub layout `<split>-*.parquet`,
    or the converted layout `<split>/*.parquet`); none is a MissingDataError naming the folder."""
    if not os.path.isdir(dataset_dir):
        raise MissingDataError(dataset_dir, what, source)
    folder = os.path.join(dataset_dir, config)
    pattern = os.path.join(glob.escape(folder), "")
    files = sorted(glob.glob(f"{pattern}{split}-*.parquet")) + sorted(glob.glob(f"{pattern}{split}/*.parquet"))
    if not files:
        raise MissingDataError(folder, f"no {split!r} split ({split}-*.parquet) of {config} in {what}", source)
    return files


def read_parquet_rows(path: str, without_images: bool = False) -> list[dict[str, Any]]:
    """The rows of one parquet file as plain Python dicts (image columns stay `{"bytes", "path"}`
    structs, or are left out with `without_images`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(path, "rb") as f:
        if f.read(len(LFS_POINTER)) == LFS_POINTER:
            raise ValueError(f"{path} is a Git LFS pointer, not the data: run `git lfs pull` in the dataset clone")
    try:
        parquet = pq.ParquetFile(path)
        columns = None
        if without_images:
            columns = [name for name in parquet.schema_arrow.names if not IMAGE_COLUMN.fullmatch(name)]
        return parquet.read(columns=columns).to_pylist()
    except pa.ArrowException as err:
        raise ValueError(f"{path}: not a readable parquet file ({err})") from None


def decode_image(cell: Any, where: str) -> "Image.Image | None":
    """The RGB picture of a dataset image cell (`{"bytes", "path"}` or raw bytes); None for an empty cell."""
    from PIL import Image

    if cell is None:
        return None
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        raise ValueError(f"{where}: the image cell has no embedded bytes ({cell!r:.80})")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{where}: unreadable image ({err})") from None


def image_loader(cell: Any, where: str) -> "Callable[[], Image.Image] | None":
    """A function decoding the picture of an image cell when called (pictures are decoded one batch at
    a time, not all at once); None for an empty cell."""
    if cell is None:
        return None
    return lambda: decode_image(cell, where)


def require_fields(sample: dict[str, Any], names: Sequence[str], where: str) -> None:
    missing = [name for name in names if name not in sample]
    if missing:
        raise ValueError(f"{where}: no {', '.join(repr(name) for name in missing)} field")


# --- MMMU --------------------------------------------------------------------------------------------

def load_config(path: str) -> dict[str, Any]:
    """The prompt config at `path` (the original's eval/mmmu/config.yaml), single-element lists unwrapped
    except `eval_params`."""
    config = unwrap_single_values(read_yaml_mapping(path), path, keep=("eval_params",))
    instructions = config.get("task_instructions")
    if instructions and not isinstance(instructions, str):
        raise ValueError(f"{path}: 'task_instructions' must be a string, found {instructions!r}")
    for key, slots in CONFIG_TEMPLATES.items():
        check_template(config, key, slots, path)
    return config


def load_split(data_path: str, split: str, without_images: bool = False) -> list[dict[str, Any]]:
    """Every subject's rows of `split`, concatenated in SUBJECTS order."""
    rows = []
    for subject in SUBJECTS:
        for path in split_files(data_path, subject, split, "the MMMU dataset", dataset_source(data_path)):
            rows.extend(read_parquet_rows(path, without_images))
    return rows


def dataset_source(data_path: str) -> str:
    return f"clone it with `git lfs install && git clone {DATASET_URL} {data_path}`"


@dataclass
class Query:
    """One MMMU question ready for the generator."""

    sample_id: str  # e.g. "validation_Art_1"
    question_type: str  # "multiple-choice" or "open", as in the dataset
    prompt: str  # the user text that follows "<image>\n"
    image: "Callable[[], Image.Image] | None"  # decodes image_1 in RGB; None when the options reference several images (or none is given)
    all_choices: list[str] = field(default_factory=list)  # ["A", "B", ...]; [] for open questions
    index2ans: dict[str, str] = field(default_factory=dict)  # {"A": option text, ...}


def parse_options(options: Any, where: str) -> list[str]:
    """The dataset's `options` cell: a Python list literal held in a string."""
    try:
        value = ast.literal_eval(options) if isinstance(options, str) else options
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise ValueError(f"{where}: options are not a Python list literal ({err}): {options!r:.200}") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: options must be a list, found {options!r:.200}")
    return [str(option) for option in value]


def build_query(sample: dict[str, Any], config: dict[str, Any]) -> Query:
    """The prompt, choices and image of one dataset row (the original's prompt construction)."""
    where = f"MMMU sample {sample.get('id')!r}"
    require_fields(sample, ("id", "question", "options", "question_type"), where)
    options = parse_options(sample["options"], where)
    if sample["question_type"] == "multiple-choice":
        all_choices = [chr(ord("A") + index) for index in range(len(options))]
        index2ans = dict(zip(all_choices, options))
        listing = "".join(f"({letter}) {option}\n" for letter, option in index2ans.items())
        body = config["multi_choice_example_format"].format(sample["question"], listing)
    else:
        all_choices, index2ans = [], {}
        body = config["short_ans_example_format"].format(sample["question"])
    instructions = config.get("task_instructions")
    prompt = f"{instructions.strip()}\n\n{body}" if instructions else body
    several_option_images = sum(len(OPTION_IMAGE.findall(option)) for option in options) > 1
    image = None if several_option_images else image_loader(sample.get("image_1"), f"{where}, image_1")
    return Query(str(sample["id"]), sample["question_type"], prompt, image, all_choices, index2ans)


def write_config(path: str) -> None:
    """Write a config.yaml whose parsed values are the original's."""
    with atomic_write(path) as f:
        f.write(CONFIG_YAML)


def ground_truth(answer: str) -> str | list[str]:
    """The dataset's answer as the answer key holds it: a list when the cell is a list literal of strings
    (open questions with several accepted answers, e.g. "['$MgS$', 'MgS']"), else the string."""
    if answer.startswith("["):
        try:
            value = ast.literal_eval(answer)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return answer
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
    return answer


def answer_key(rows: Sequence[dict[str, Any]], where: str) -> dict[str, dict[str, Any]]:
    """`{id: {"question_type": "multiple-choice" | "short-answer", "ground_truth": str | list}}`."""
    key: dict[str, dict[str, Any]] = {}
    for row in rows:
        row_where = f"{where}, sample {row.get('id')!r}"
        require_fields(row, ("id", "question_type", "answer"), row_where)
        if row["id"] in key:
            raise ValueError(f"{row_where}: the id occurs twice")
        if not isinstance(row["answer"], str):
            raise ValueError(f"{row_where}: the answer must be a string, found {row['answer']!r}")
        question_type = "multiple-choice" if row["question_type"] == "multiple-choice" else "short-answer"
        key[row["id"]] = {"question_type": question_type, "ground_truth": ground_truth(row["answer"])}
    return key


def prepare(data_dir: str) -> list[str]:
    """Write `<data_dir>/config.yaml` and `<data_dir>/answer_dict_val.json` (from the validation split of
    the dataset clone `<data_dir>/MMMU`), each only if absent; the paths written."""
    written = []
    config_path = os.path.join(data_dir, CONFIG_FILE)
    if not os.path.exists(config_path):
        write_config(config_path)
        written.append(config_path)
    answers_path = os.path.join(data_dir, ANSWER_FILE)
    if not os.path.exists(answers_path):
        dataset = os.path.join(data_dir, DATASET_FOLDER)
        key = answer_key(load_split(dataset, "validation", without_images=True), dataset)
        with atomic_write(answers_path) as f:
            json.dump(key, f, indent=4, ensure_ascii=False)
            f.write("\n")
        written.append(answers_path)
    return written
