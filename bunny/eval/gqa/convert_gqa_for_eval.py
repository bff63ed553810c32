"""Turn merged GQA answers into the predictions file the official GQA evaluation reads.

Run as:
    python -m bunny.eval.gqa.convert_gqa_for_eval --src ./eval/gqa/answers/bunny_gqa_testdev_balanced/bunny-phi-2/merge.jsonl \
        --dst ./eval/gqa/testdev_balanced_predictions.json

Writes a JSON list of `{"questionId": question_id, "prediction": answer}` in answer-file order, the
answer with trailing periods removed and lower-cased.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from bunny.eval.common import read_jsonl
from bunny.util.utils import atomic_write


def gqa_predictions(answers: Sequence[dict[str, Any]], src: str = "answers") -> list[dict[str, Any]]:
    predictions = []
    for answer in answers:
        if not isinstance(answer["text"], str):
            raise ValueError(f"{src}: question_id {answer['question_id']!r} has a non-text answer {answer['text']!r}")
        predictions.append({"questionId": answer["question_id"], "prediction": answer["text"].rstrip(".").lower()})
    return predictions


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """{"predictions": the list written, "output": its path}."""
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.gqa.convert_gqa_for_eval", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--src", type=str, required=True, help="the merged answers, one JSON object per line")
    parser.add_argument("--dst", type=str, required=True, help="e.g. testdev_balanced_predictions.json")
    args = parser.parse_args(argv)
    try:
        predictions = gqa_predictions(read_jsonl(args.src, ("question_id", "text")), args.src)
        with atomic_write(args.dst) as f:
            json.dump(predictions, f)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")
    return {"predictions": predictions, "output": args.dst}


if __name__ == "__main__":
    main()
