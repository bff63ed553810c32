"""Build each benchmark's question file, in the original's format, from the official release files.

The benchmarks' data stays where the original's users put it (`eval/<benchmark>/...` under the working
directory); `docs/evaluation.md` says which official files to download and where they go. Neither the
benchmarks nor the original's question files can be redistributed, so this rebuilds the question files
from the official files:

    python -m bunny.eval.prepare pope                      # reads eval/pope/coco/coco_pope_*.json
    python -m bunny.eval.prepare mme --data-dir /data/mme  # another folder
    python -m bunny.eval.prepare all                       # every benchmark whose data is under eval/

A question file that is already there is kept (it may be the original's own file) unless `--overwrite`.
A missing official file is an error naming it, where it goes and where it comes from (exit status 2);
a malformed one is an error naming the file and the entry (exit status 1). The same official files
always give byte-identical question files. `prepare(benchmark, data_dir)` is the same as a function.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
from typing import Any, Callable, Iterable, Sequence

from bunny.eval.common import MissingDataError, read_json, read_jsonl, require_file
from bunny.util.utils import atomic_write

# The prompt suffixes inside the original's question files (each preceded by a newline).
SHORT_ANSWER = "Answer the question using a single word or phrase."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
# MME's own instruction, dropped from the question text (the MME converter puts it back).
MME_YES_NO = "Please answer yes or no."

DEFAULT_DATA_DIRS = {
    "mme": "eval/mme",
    "mmbench": "eval/mmbench",
    "seedbench": "eval/seed-bench",
    "mmmu": "eval/mmmu",
    "cmmmu": "eval/cmmmu",
    "vqav2": "eval/vqav2",
    "gqa": "eval/gqa",
    "scienceqa": "eval/scienceqa",
    "pope": "eval/pope",
    "mmvet": "eval/mm-vet",
    "textvqa": "eval/textvqa",
    "vizwiz": "eval/viswiz",  # the original spells the folder `viswiz`
    "shapes": "eval/shapes",  # the demo's synthetic questions (ours: generated, not downloaded)
}

MME_CATEGORIES = tuple(sorted((
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)))
MME_IMAGE_EXTENSIONS = (".jpg", ".png")
# POPE's files number their questions from 1; the question file offsets each category so ids stay unique.
POPE_ID_OFFSETS = {"adversarial": 30_000_000, "popular": 20_000_000, "random": 10_000_000}
SCIENCEQA_OPTIONS = "ABCDE"
MMBENCH_SPLITS = ("MMBench_DEV_EN_legacy", "MMBench_TEST_EN_legacy", "MMBench_DEV_CN_legacy", "MMBench_TEST_CN_legacy")
MMBENCH_COLUMNS = ("index", "question", "hint", "image", "A", "B")

SOURCES = {
    "mme": "request MME_Benchmark_release_version from "
    "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation",
    "pope": "download it from "
    "https://github.com/AoiDragon/POPE/tree/e3e39262c85a6a83f26cf5094022a782cb0df58d/output/coco",
    "scienceqa": "download it from https://github.com/lupantech/ScienceQA/tree/main/data/scienceqa",
    "gqa": "unzip it from https://downloads.cs.stanford.edu/nlp/data/gqa/questions1.2.zip",
    "vqav2": "unzip it from https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_Questions_Test_mscoco.zip",
    "textvqa": "download it from https://dl.fbaipublicfiles.com/textvqa/data/",
    "vizwiz": "unzip it from https://vizwiz.cs.colorado.edu/VizWiz_final/vqa_data/Annotations.zip",
    "mmvet": "unzip it from https://github.com/yuweihao/MM-Vet/releases/download/v1/mm-vet.zip",
    "seedbench": "download it from https://huggingface.co/datasets/AILab-CVC/SEED-Bench",
    "mmbench": "download the legacy TSV from http://opencompass.openxlab.space/utils/MMBench/",
}

Row = dict[str, Any]


# --- reading and writing -------------------------------------------------------------------------

def load_json(path: str, what: str, source: str) -> Any:
    """The parsed JSON document at `path`; missing → MissingDataError, malformed → ValueError naming it."""
    return read_json(require_file(path, what, source))


def field(entry: Any, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """`entry[key]`, which must be a `kind`; else a ValueError naming `where` (file and entry)."""
    if not isinstance(entry, dict) or key not in entry:
        raise ValueError(f"{where}: no {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{where}: {key!r} is {value!r}, not of type {names}")
    return value


def question_row(question_id: int | str, image: str, text: str, category: str) -> Row:
    """One line of a standard question file, keys in the original's order."""
    return {"question_id": question_id, "image": image, "text": text, "category": category}


def emit(path: str, build: Callable[[], list[Row]], overwrite: bool, as_json_list: bool = False) -> str:
    """Write the rows `build()` returns to `path` (JSON lines, or one indented JSON list), unless the
    file is already there and not `overwrite`. JSON is ASCII-escaped, as the original's files are."""
    if os.path.exists(path) and not overwrite:
        print(f"kept {path} (already there; --overwrite rebuilds it)", flush=True)
        return path
    rows = build()
    with atomic_write(path) as f:
        if as_json_list:
            json.dump(rows, f, indent=2)
        else:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print(f"wrote {path} ({len(rows)} questions)", flush=True)
    return path


# --- MME ---------------------------------------------------------------------------------------

def mme_question_text(question: str) -> str:
    """The question without MME's trailing yes/no instruction, plus the short-answer suffix."""
    question = question.strip()
    if question.endswith(MME_YES_NO):
        question = question[: -len(MME_YES_NO)].strip()
    return f"{question}\n{SHORT_ANSWER}"


def read_mme_txt(path: str) -> list[str]:
    """The questions of one MME `question<TAB>answer` file: exactly two, one per line."""
    questions = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.strip().split("\t")
            if len(parts) != 2:
                raise ValueError(f"{path}, line {number}: expected 'question<TAB>answer', got {line.strip()!r}")
            questions.append(parts[0])
    if len(questions) != 2:
        raise ValueError(f"{path}: {len(questions)} questions; MME has 2 per image (the scorer pairs them)")
    return questions


def mme_image_name(qa_dir: str, image_dir: str, txt_name: str) -> str:
    """The image beside a txt file: the txt's stem with the first extension found."""
    stem = txt_name[: -len(".txt")]
    for extension in MME_IMAGE_EXTENSIONS:
        if os.path.isfile(os.path.join(image_dir, stem + extension)):
            return stem + extension
    raise ValueError(f"{os.path.join(qa_dir, txt_name)}: no image {stem}.jpg or {stem}.png in {image_dir}")


def mme_category_questions(release_dir: str, category: str) -> list[Row]:
    """Both questions of every image of one category, images in file-name order."""
    category_dir = require_file(os.path.join(release_dir, category), f"MME's {category} folder", SOURCES["mme"])
    if os.path.isdir(os.path.join(category_dir, "images")):
        image_dir, prefix = os.path.join(category_dir, "images"), f"{category}/images/"
        qa_dir = require_file(
            os.path.join(category_dir, "questions_answers_YN"), f"MME's {category} questions", SOURCES["mme"]
        )
    else:
        image_dir = qa_dir = category_dir
        prefix = f"{category}/"
    rows = []
    for txt_name in sorted(name for name in os.listdir(qa_dir) if name.endswith(".txt")):
        image = prefix + mme_image_name(qa_dir, image_dir, txt_name)
        for question in read_mme_txt(os.path.join(qa_dir, txt_name)):
            rows.append(question_row(image, image, mme_question_text(question), category))
    if not rows:
        raise ValueError(f"{qa_dir}: no question files (*.txt)")
    return rows


def prepare_mme(data_dir: str, overwrite: bool = False) -> list[str]:
    release_dir = os.path.join(data_dir, "MME_Benchmark_release_version")

    def build() -> list[Row]:
        require_file(release_dir, "MME's images and questions", SOURCES["mme"])
        return [row for category in MME_CATEGORIES for row in mme_category_questions(release_dir, category)]

    return [emit(os.path.join(data_dir, "bunny_mme.jsonl"), build, overwrite)]


# --- POPE --------------------------------------------------------------------------------------

def pope_questions(category: str, entries: Iterable[Row], path: str) -> list[Row]:
    """One POPE category's questions, ids offset per category (ids 1.. in each official file)."""
    offset = POPE_ID_OFFSETS[category]
    rows = []
    for number, entry in enumerate(entries, start=1):
        where = f"{path}, question {number}"
        question_id = field(entry, "question_id", where, int)
        if not 0 < question_id < 10_000_000:
            raise ValueError(f"{where}: question_id {question_id} is outside 1..9999999")
        text = field(entry, "text", where)
        image = field(entry, "image", where)
        rows.append(question_row(offset + question_id, image, f"{text}\n{SHORT_ANSWER}", category))
    return rows


def prepare_pope(data_dir: str, overwrite: bool = False) -> list[str]:
    def build() -> list[Row]:
        rows = []
        for category in POPE_ID_OFFSETS:  # adversarial, popular, random
            path = os.path.join(data_dir, "coco", f"coco_pope_{category}.json")
            require_file(path, f"POPE's {category} questions", SOURCES["pope"])
            rows += pope_questions(category, read_jsonl(path, ("question_id", "image", "text", "label")), path)
        return rows

    return [emit(os.path.join(data_dir, "bunny_pope_test.jsonl"), build, overwrite)]


# --- ScienceQA ---------------------------------------------------------------------------------

def scienceqa_prompt(problem: Row, where: str) -> str:
    """The human turn of LLaVA's CQM-A format: `Context: <hint>` line (only when there is a hint),
    the question, one `X. choice` line per option; `<image>` first for image questions."""
    choices = field(problem, "choices", where, list)
    if not 2 <= len(choices) <= len(SCIENCEQA_OPTIONS) or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: 'choices' must be 2 to 5 strings, got {choices!r}")
    hint = field(problem, "hint", where)
    lines = [f"Context: {hint}"] if hint else []
    lines.append(field(problem, "question", where))
    lines += [f"{letter}. {choice}" for letter, choice in zip(SCIENCEQA_OPTIONS, choices)]
    text = "\n".join(lines)
    return f"<image>\n{text}" if problem.get("image") else text


def scienceqa_entry(pid: str, problem: Row, where: str) -> Row:
    """One entry of the LLaVA-style question list: id, image (if any), the two conversation turns."""
    answer = field(problem, "answer", where, int)
    if not 0 <= answer < len(field(problem, "choices", where, list)):
        raise ValueError(f"{where}: 'answer' {answer} is not the index of a choice")
    image = problem.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError(f"{where}: 'image' is {image!r}, not a file name or null")
    entry: Row = {"id": pid}
    if image:
        entry["image"] = f"{pid}/{image}"
    entry["conversations"] = [
        {"from": "human", "value": scienceqa_prompt(problem, where)},
        {"from": "gpt", "value": SCIENCEQA_OPTIONS[answer]},
    ]
    return entry


def prepare_scienceqa(data_dir: str, overwrite: bool = False, split: str = "test") -> list[str]:
    def build() -> list[Row]:
        problems_path = os.path.join(data_dir, "problems.json")
        splits_path = os.path.join(data_dir, "pid_splits.json")
        problems = load_json(problems_path, "ScienceQA's problems", SOURCES["scienceqa"])
        splits = load_json(splits_path, "ScienceQA's split lists", SOURCES["scienceqa"])
        pids = field(splits, split, splits_path, list)
        entries = []
        for pid in pids:
            if not isinstance(problems, dict) or str(pid) not in problems:
                raise ValueError(f"{problems_path}: no problem {pid!r} (listed in {splits_path}, {split!r})")
            entries.append(scienceqa_entry(str(pid), problems[str(pid)], f"{problems_path}, problem {pid!r}"))
        return entries

    return [emit(os.path.join(data_dir, "bunny_test_CQM-A.json"), build, overwrite, as_json_list=True)]


# --- GQA, VQAv2 --------------------------------------------------------------------------------

def gqa_questions(questions: Any, path: str) -> list[Row]:
    """`{qid: {imageId, question, ...}}` in file order → short-answer questions with string ids."""
    if not isinstance(questions, dict):
        raise ValueError(f"{path}: expected an object mapping question ids to questions")
    rows = []
    for question_id, entry in questions.items():
        where = f"{path}, question {question_id!r}"
        image = f"{field(entry, 'imageId', where)}.jpg"
        rows.append(question_row(question_id, image, f"{field(entry, 'question', where)}\n{SHORT_ANSWER}", "default"))
    return rows


def prepare_gqa(data_dir: str, overwrite: bool = False) -> list[str]:
    def build() -> list[Row]:
        path = os.path.join(data_dir, "testdev_balanced_questions.json")
        return gqa_questions(load_json(path, "GQA's test-dev balanced questions", SOURCES["gqa"]), path)

    return [emit(os.path.join(data_dir, "bunny_gqa_testdev_balanced.jsonl"), build, overwrite)]


def vqav2_questions(document: Any, path: str) -> list[Row]:
    """Official `{"questions": [{image_id, question, question_id}]}` → short-answer questions."""
    rows = []
    for number, entry in enumerate(field(document, "questions", path, list), start=1):
        where = f"{path}, question {number}"
        image = f"COCO_test2015_{field(entry, 'image_id', where, int):012d}.jpg"
        text = f"{field(entry, 'question', where)}\n{SHORT_ANSWER}"
        rows.append(question_row(field(entry, "question_id", where, int), image, text, "default"))
    return rows


def prepare_vqav2(data_dir: str, overwrite: bool = False) -> list[str]:
    written = []
    for split in ("test-dev2015", "test2015"):
        source = os.path.join(data_dir, f"v2_OpenEnded_mscoco_{split}_questions.json")

        def build(source: str = source, split: str = split) -> list[Row]:
            return vqav2_questions(load_json(source, f"VQAv2's {split} questions", SOURCES["vqav2"]), source)

        written.append(emit(os.path.join(data_dir, f"bunny_vqav2_mscoco_{split}.jsonl"), build, overwrite))
    return written


# --- TextVQA, VizWiz, MM-Vet -------------------------------------------------------------------

def rosetta_tokens(path: str) -> dict[str, list[str]]:
    """image_id → OCR tokens from the official `TextVQA_Rosetta_OCR_v0.2_val.json`."""
    what = "TextVQA's OCR tokens (needed when the val JSON has no 'ocr_tokens')"
    document = load_json(path, what, SOURCES["textvqa"])
    tokens = {}
    for number, entry in enumerate(field(document, "data", path, list), start=1):
        where = f"{path}, entry {number}"
        tokens[field(entry, "image_id", where)] = field(entry, "ocr_tokens", where, list)
    return tokens


def textvqa_text(question: str, tokens: Sequence[Any], where: str) -> str:
    """The 3-line prompt; an image without OCR tokens keeps `Reference OCR token: ` (trailing space)."""
    if not all(isinstance(token, str) for token in tokens):
        raise ValueError(f"{where}: 'ocr_tokens' must be strings, got {list(tokens)!r}")
    return f"{question}\nReference OCR token: {', '.join(tokens)}\n{SHORT_ANSWER}"


def textvqa_questions(entries: list[Any], path: str, ocr: Callable[[], dict[str, list[str]]]) -> list[Row]:
    """Val questions in file order; OCR tokens from each entry, else from `ocr()` (read when needed)."""
    rows, ocr_tokens = [], None
    for number, entry in enumerate(entries, start=1):
        where = f"{path}, question {number}"
        image_id = field(entry, "image_id", where)
        if isinstance(entry, dict) and "ocr_tokens" in entry:
            tokens = field(entry, "ocr_tokens", where, list)
        else:
            ocr_tokens = ocr() if ocr_tokens is None else ocr_tokens
            if image_id not in ocr_tokens:
                raise ValueError(f"{where}: image {image_id!r} has no entry in the OCR file")
            tokens = ocr_tokens[image_id]
        text = textvqa_text(field(entry, "question", where), tokens, where)
        rows.append(question_row(image_id, f"{image_id}.jpg", text, "default"))
    return rows


def prepare_textvqa(data_dir: str, overwrite: bool = False) -> list[str]:
    def build() -> list[Row]:
        path = os.path.join(data_dir, "TextVQA_0.5.1_val.json")
        document = load_json(path, "TextVQA's val questions", SOURCES["textvqa"])
        ocr_path = os.path.join(data_dir, "TextVQA_Rosetta_OCR_v0.2_val.json")
        return textvqa_questions(field(document, "data", path, list), path, lambda: rosetta_tokens(ocr_path))

    return [emit(os.path.join(data_dir, "bunny_textvqa_val_v051_ocr.jsonl"), build, overwrite)]


def vizwiz_questions(entries: Any, path: str) -> list[Row]:
    """Official test list `[{image, question, ...}]` → questions numbered from 0."""
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of questions")
    rows = []
    for number, entry in enumerate(entries):
        where = f"{path}, question {number}"
        text = f"{field(entry, 'question', where)}\n{UNANSWERABLE}\n{SHORT_ANSWER}"
        rows.append(question_row(number, field(entry, "image", where), text, "default"))
    return rows


def prepare_vizwiz(data_dir: str, overwrite: bool = False) -> list[str]:
    def build() -> list[Row]:
        path = os.path.join(data_dir, "test.json")
        return vizwiz_questions(load_json(path, "VizWiz's test questions", SOURCES["vizwiz"]), path)

    return [emit(os.path.join(data_dir, "bunny_test.jsonl"), build, overwrite)]


def mmvet_questions(document: Any, path: str) -> list[Row]:
    """`{"v1_<n>": {imagename, question, ...}}` → questions with id n, no suffix, category `conv`.
    Keys in the original file's order (image, text, category, question_id)."""
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected an object mapping 'v1_<n>' to questions")
    rows = []
    for key, entry in document.items():
        match = re.fullmatch(r"v1_(\d+)", key)
        if not match:
            raise ValueError(f"{path}: question key {key!r} is not 'v1_<number>'")
        where = f"{path}, question {key!r}"
        rows.append({
            "image": field(entry, "imagename", where), "text": field(entry, "question", where),
            "category": "conv", "question_id": int(match.group(1)),
        })
    return rows


def prepare_mmvet(data_dir: str, overwrite: bool = False) -> list[str]:
    def build() -> list[Row]:
        path = os.path.join(data_dir, "mm-vet.json")
        return mmvet_questions(load_json(path, "MM-Vet's questions", SOURCES["mmvet"]), path)

    return [emit(os.path.join(data_dir, "bunny-mm-vet.jsonl"), build, overwrite)]


# --- SEED-Bench, MMBench, MMMU, CMMMU ----------------------------------------------------------

def seed_question(entry: Any, where: str) -> Row:
    """One SEED-Bench question: options A-D and the letter instruction; id as int when it parses
    (the SEED converter compares ids as ints); the image, or the video's middle frame."""
    raw_id = field(entry, "question_id", where, (str, int))
    try:
        question_id: int | str = int(raw_id)  # what the converter's int() accepts
    except ValueError:
        question_id = raw_id
    data_type = field(entry, "data_type", where)
    if data_type == "image":
        image = f"SEED-Bench-image/{field(entry, 'data_id', where)}"
    elif data_type == "video":
        image = f"SEED-Bench-video-image/{field(entry, 'question_type_id', where, (int, str))}_{raw_id}.png"
    else:
        raise ValueError(f"{where}: 'data_type' is {data_type!r}, not 'image' or 'video'")
    options = [f"{letter}. {field(entry, f'choice_{letter.lower()}', where)}" for letter in "ABCD"]
    text = "\n".join([field(entry, "question", where), *options, OPTION_LETTER])
    return question_row(question_id, image, text, data_type)


def prepare_seedbench(data_dir: str, overwrite: bool = False) -> list[str]:
    def build() -> list[Row]:
        path = os.path.join(data_dir, "SEED-Bench.json")
        document = load_json(path, "SEED-Bench's annotation", SOURCES["seedbench"])
        entries = field(document, "questions", path, list)
        return [seed_question(entry, f"{path}, question {number}") for number, entry in enumerate(entries, start=1)]

    return [emit(os.path.join(data_dir, "bunny-seed-bench.jsonl"), build, overwrite)]


def check_mmbench_tsv(path: str) -> None:
    """The TSV's header has the columns the MMBench generator reads."""
    with open(path, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f, delimiter="\t"), [])
    missing = [column for column in MMBENCH_COLUMNS if column not in header]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(repr(c) for c in missing)} in the header (is it a legacy TSV?)")


def prepare_mmbench(data_dir: str, overwrite: bool = False) -> list[str]:
    """MMBench's TSVs are read in place: check the ones present (at least the dev split's)."""
    found = [os.path.join(data_dir, f"{split}.tsv") for split in MMBENCH_SPLITS]
    found = [path for path in found if os.path.isfile(path)]
    if not found:
        path = os.path.join(data_dir, f"{MMBENCH_SPLITS[0]}.tsv")
        raise MissingDataError(path, "MMBench's dev split (or another *_legacy.tsv split)", SOURCES["mmbench"])
    for path in found:
        check_mmbench_tsv(path)
        print(f"found {path}", flush=True)
    return found


def prepare_mmmu(data_dir: str, overwrite: bool = False) -> list[str]:
    from bunny.eval.mmmu import data  # the dataset is read in place; this writes the answer key and config

    return list(data.prepare(data_dir))


def prepare_cmmmu(data_dir: str, overwrite: bool = False) -> list[str]:
    from bunny.eval.cmmmu import data

    return list(data.prepare(data_dir))


def prepare_shapes(data_dir: str, overwrite: bool = False) -> list[str]:
    """The demo's held-out shapes questions: nothing to build, but they must be there (written by
    `python -m bunny.demo.synthetic`, which `make demo` runs)."""
    make = f"python -m bunny.demo.synthetic --output-dir {data_dir} --num-pretrain 0 --num-finetune 0 --num-eval 400"
    return [
        require_file(os.path.join(data_dir, "eval", name), what, f"write it with `{make}`")
        for name, what in (("questions.jsonl", "the shapes questions"), ("answer_key.jsonl", "their answer key"))
    ]


PREPARERS: dict[str, Callable[[str, bool], list[str]]] = {
    "mme": prepare_mme,
    "mmbench": prepare_mmbench,
    "seedbench": prepare_seedbench,
    "mmmu": prepare_mmmu,
    "cmmmu": prepare_cmmmu,
    "vqav2": prepare_vqav2,
    "gqa": prepare_gqa,
    "scienceqa": prepare_scienceqa,
    "pope": prepare_pope,
    "mmvet": prepare_mmvet,
    "textvqa": prepare_textvqa,
    "vizwiz": prepare_vizwiz,
    "shapes": prepare_shapes,
}


def prepare(benchmark: str, data_dir: str | None = None, overwrite: bool = False) -> list[str]:
    """Build `benchmark`'s question files from the official files in `data_dir` (default: the
    original's folder, e.g. `eval/pope`); the paths of its question files (written or kept)."""
    if benchmark not in PREPARERS:
        raise ValueError(f"{benchmark!r} is not a benchmark; choose one of {', '.join(PREPARERS)}")
    return PREPARERS[benchmark](data_dir or DEFAULT_DATA_DIRS[benchmark], overwrite)


# --- command line ------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bunny.eval.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "benchmark", choices=[*PREPARERS, "all"], help="the benchmark, or `all` for every one whose data is there"
    )
    parser.add_argument(
        "--data-dir", default=None,
        help="the benchmark's folder (default: the original's, e.g. eval/pope); "
        "with `all`, the folder holding them (default: eval)",
    )
    parser.add_argument("--overwrite", action="store_true", help="rebuild question files that are already there")
    return parser, parser.parse_args(argv)


def prepare_all(root: str, overwrite: bool) -> tuple[dict[str, list[str]], dict[str, str], dict[str, str]]:
    """Every benchmark under `root`: files per prepared one, and messages for missing and malformed data."""
    files, missing, malformed = {}, {}, {}
    for benchmark, default in DEFAULT_DATA_DIRS.items():
        if benchmark == "shapes":
            continue  # ours, generated by bunny.demo.synthetic, not an official benchmark
        try:
            files[benchmark] = prepare(benchmark, os.path.join(root, os.path.basename(default)), overwrite)
        except MissingDataError as err:
            missing[benchmark] = str(err)
            print(f"{benchmark}: skipped, {err}", flush=True)
        except (OSError, ValueError) as err:
            malformed[benchmark] = str(err)
            print(f"{benchmark}: error: {err}", flush=True)
    return files, missing, malformed


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser, args = parse_args(argv)
    if args.benchmark == "all":
        files, missing, malformed = prepare_all(args.data_dir or "eval", args.overwrite)
        if malformed:
            parser.exit(1, f"error: malformed data for {', '.join(malformed)} (see above)\n")
        if not files:
            parser.exit(2, f"error: no benchmark data under {args.data_dir or 'eval'} (see above)\n")
        return {"benchmark": "all", "files": files, "missing": missing}
    try:
        files = prepare(args.benchmark, args.data_dir, args.overwrite)
    except MissingDataError as err:
        parser.exit(2, f"error: {err}\n")
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")
    return {"benchmark": args.benchmark, "files": {args.benchmark: files}, "missing": {}}


if __name__ == "__main__":
    main()
