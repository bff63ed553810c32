"""What answer generators and scorers share: chunking, reading question and answer files, answer
records, and the error for a missing benchmark file. (Light: no torch, so scorers start fast.)"""

from __future__ import annotations

import json
import math
import os
import uuid
from typing import Any, Sequence


def chunk_range(count: int, num_chunks: int, chunk_idx: int) -> range:
    """The rows of chunk `chunk_idx` of `num_chunks` consecutive chunks of size ceil(count / num_chunks)
    (empty when there are fewer rows than chunks)."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx {chunk_idx} must be in [0, --num-chunks {num_chunks})")
    size = math.ceil(count / num_chunks)
    return range(min(chunk_idx * size, count), min((chunk_idx + 1) * size, count))


def get_chunk(items: Sequence[Any], num_chunks: int, chunk_idx: int) -> list[Any]:
    """The items of chunk `chunk_idx` (see `chunk_range`)."""
    rows = chunk_range(len(items), num_chunks, chunk_idx)
    return list(items[rows.start : rows.stop])


def read_jsonl(path: str, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file, each with the `required` keys; a malformed line is an error
    naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
            missing = [key for key in required if not isinstance(row, dict) or key not in row]
            if missing:
                raise ValueError(f"{path}, line {number}: no {' or '.join(repr(k) for k in missing)}")
            rows.append(row)
    return rows


def read_question_file(path: str) -> list[dict[str, Any]]:
    return read_jsonl(path, ("question_id", "text"))


def answer_record(question_id: Any, prompt: str, text: str, model_id: str, row: int | str = "", **extra: Any) -> dict[str, Any]:
    """One line of an answer file, with `extra` fields after `text` (MMBench's round and options).
    `answer_id` is derived from the model, the question's row in the question file and its id (the
    original drew a random one), so the same run writes the same file, and repeated question ids
    (MME, TextVQA) still get distinct answer ids."""
    answer_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{model_id}/{row}/{question_id}").hex
    return {
        "question_id": question_id, "prompt": prompt, "text": text, **extra,
        "answer_id": answer_id, "model_id": model_id, "metadata": {},
    }


class MissingDataError(FileNotFoundError):
    """An official benchmark file that is not where the evaluation looks for it. The message says
    what the file is, where it goes and where it comes from."""

    def __init__(self, path: str, what: str, source: str = "") -> None:
        self.path = path
        message = f"missing {path}: {what}"
        if source:
            message += f"; {source}"
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]


def require_file(path: str, what: str, source: str = "") -> str:
    """`path` if it exists, else `MissingDataError` naming it, what it is and where to get it."""
    if not os.path.exists(path):
        raise MissingDataError(path, what, source)
    return path


def read_json(path: str) -> Any:
    """The JSON document at `path`; malformed JSON is a ValueError naming the file and the place."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None


def responses_path(output_path: str) -> str:
    """Where the MMMU/CMMMU generators keep their raw responses, beside the output: `x.json` / `x.jsonl` ->
    `x.responses.jsonl`."""
    return os.path.splitext(output_path)[0] + ".responses.jsonl"
