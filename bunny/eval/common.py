"""What the answer generators share: their flags, chunking, reading question files, answer records."""

from __future__ import annotations

import argparse
import json
import math
import uuid
from typing import Any, Sequence

import torch

from bunny.conversation import conv_templates
from bunny.model.backbones import MODEL_TYPES


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The original's shared generator flags, plus `--device`."""
    parser.add_argument("--model-path", type=str, required=True, help="checkpoint directory or hub id")
    parser.add_argument("--model-base", type=str, default=None, help="base LLM, for LoRA or projector-only checkpoints")
    parser.add_argument(
        "--model-type", type=str, required=True, choices=MODEL_TYPES, help="the LLM back-end of the checkpoint"
    )
    parser.add_argument("--image-folder", type=str, default="", help="image paths in the question file are relative to this")
    parser.add_argument("--question-file", type=str, required=True, help="questions, one JSON object per line")
    parser.add_argument("--answers-file", type=str, required=True, help="answers are written here, one JSON object per line")
    parser.add_argument(
        "--conv-mode", type=str, default=None, choices=sorted(conv_templates),
        help="conversation template; default: the one the model type was trained with",
    )
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many consecutive chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="answer only this chunk (0-based)")
    parser.add_argument("--temperature", type=float, default=0.2, help="sampling temperature; 0 decodes greedily")
    parser.add_argument(
        "--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when available, else cpu)",
    )


def get_chunk(items: Sequence[Any], num_chunks: int, chunk_idx: int) -> list[Any]:
    """Chunk `chunk_idx` of `num_chunks` consecutive chunks of size ceil(len / num_chunks)."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx {chunk_idx} must be in [0, --num-chunks {num_chunks})")
    size = math.ceil(len(items) / num_chunks)
    return list(items[chunk_idx * size : (chunk_idx + 1) * size])


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


def answer_record(question_id: Any, prompt: str, text: str, model_id: str) -> dict[str, Any]:
    """One line of an answer file. `answer_id` is derived from the model and question (the original
    drew a random one), so the same run writes the same file."""
    answer_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{model_id}/{question_id}").hex
    return {"question_id": question_id, "prompt": prompt, "text": text, "answer_id": answer_id, "model_id": model_id, "metadata": {}}
