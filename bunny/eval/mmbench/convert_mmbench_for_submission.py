"""Turn MMBench answers into the xlsx file the official MMBench server scores.

Run as:
    python -m bunny.eval.mmbench.convert_mmbench_for_submission \\
        --annotation-file eval/mmbench/MMBench_DEV_EN_legacy.tsv \\
        --result-dir eval/mmbench/answers/MMBench_DEV_EN_legacy \\
        --upload-dir eval/mmbench/answers_upload/MMBench_DEV_EN_legacy --experiment bunny-phi-2

Reads the question TSV with pandas' defaults (so cells such as `None`, `NA` or `null` are empty and
all-numeric option columns are numbers, which the xlsx keeps), drops the columns `hint`,
`category`, `source`, `image`, `comment` and `l2-category`, inserts a `prediction` column as the
7th column and fills it from `<result-dir>/<experiment>.jsonl`, matching a row's `index` with an
answer's `question_id`. Writes `<upload-dir>/<experiment>.xlsx` (openpyxl, no row index).

Differences from the original, on purpose: the upload folder is created; a `question_id` written as
a string matches too; an answer file made with `--all-rounds` (several answers per question, with
`round_id`) fills a row with its round-0 answer, the one about the options as the TSV lists them
(the original kept whichever came last, an answer about rotated options); rows left without an
answer (their cell stays empty) and answers matching no row are counted on stderr; a TSV without
one of the dropped columns is an error naming it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from bunny.eval.common import read_jsonl
from bunny.util.utils import atomic_write

DROPPED_COLUMNS = ["hint", "category", "source", "image", "comment", "l2-category"]
PREDICTION_POSITION = 6


def id_key(question_id: Any) -> Any:
    """The int an index or question id stands for (numpy ints and digit strings included), else
    the id itself."""
    if isinstance(question_id, str):
        try:
            return int(question_id)
        except ValueError:
            return question_id
    if hasattr(question_id, "__index__") and not isinstance(question_id, bool):
        return int(question_id)
    return question_id


def round_zero_answers(answers: Sequence[dict[str, Any]], source: str) -> dict[Any, str]:
    """{question key: text} of the answers without a `round_id` or with round 0; a later one for
    the same question replaces an earlier one, as in the original."""
    texts: dict[Any, str] = {}
    for number, answer in enumerate(answers, start=1):
        if answer.get("round_id", 0) != 0:
            continue
        if not isinstance(answer["text"], str):
            raise ValueError(f"{source}, line {number} (question_id {answer['question_id']!r}): 'text' is not a string")
        texts[id_key(answer["question_id"])] = answer["text"]
    return texts


def submission_table(table: Any, texts: dict[Any, str]) -> Any:
    """The upload table: `table` without the dropped columns, with the predictions (None where a
    row has no answer) as its 7th column."""
    missing = [column for column in DROPPED_COLUMNS + ["index"] if column not in table.columns]
    if missing:
        raise ValueError(f"the MMBench TSV has no column(s) {missing} (it has {list(table.columns)})")
    upload = table.drop(columns=DROPPED_COLUMNS)
    predictions = [texts.get(id_key(index)) for index in table["index"]]
    upload.insert(PREDICTION_POSITION, "prediction", predictions)
    upload["prediction"] = upload["prediction"].astype(object)
    return upload


def convert(annotation_file: str, result_dir: str, upload_dir: str, experiment: str) -> dict[str, Any]:
    source = os.path.join(result_dir, f"{experiment}.jsonl")
    return convert_files(annotation_file, source, os.path.join(upload_dir, f"{experiment}.xlsx"))


def convert_files(annotation_file: str, source: str, target: str) -> dict[str, Any]:
    """`convert` with the paths given: the question TSV, the answer file, the xlsx to write."""
    import pandas as pd

    table = pd.read_table(annotation_file)
    texts = round_zero_answers(read_jsonl(source, ("question_id", "text")), source)
    upload = submission_table(table, texts)
    unanswered = int(upload["prediction"].isna().sum())
    if unanswered:
        print(
            f"warning: {source}: {unanswered} of {len(upload)} question(s) without an answer; "
            f"their prediction cells are empty",
            file=sys.stderr,
        )
    stray = set(texts) - {id_key(index) for index in table["index"]}
    if stray:
        print(
            f"warning: {source}: {len(stray)} answer(s) whose question_id is no index of {annotation_file}, ignored",
            file=sys.stderr,
        )
    with atomic_write(target, "wb") as f:
        upload.to_excel(f, index=False, engine="openpyxl")
    return {"output": target, "rows": len(upload), "unanswered": unanswered}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.mmbench.convert_mmbench_for_submission", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--annotation-file", type=str, required=True, help="the MMBench question TSV (e.g. MMBench_DEV_EN_legacy.tsv)"
    )
    parser.add_argument("--result-dir", type=str, required=True, help="folder holding <experiment>.jsonl")
    parser.add_argument(
        "--upload-dir", type=str, required=True, help="folder the <experiment>.xlsx is written to (created)"
    )
    parser.add_argument("--experiment", type=str, required=True, help="name of the answer file and of the xlsx")
    args = parser.parse_args(argv)
    try:
        return convert(args.annotation_file, args.result_dir, args.upload_dir, args.experiment)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
