"""Turn MM-Vet answers into the JSON file the online GPT-4 evaluator reads.

Run as:
    python -m bunny.eval.mm_vet.convert_mmvet_for_eval --src ./eval/mm-vet/answers/bunny-phi-2.jsonl \
        --dst ./eval/mm-vet/results/bunny-phi-2.json

Writes `{"v1_<question_id>": answer text, ...}` (indent 2) in answer-file order; a later answer to
the same question replaces an earlier one.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from bunny.eval.common import read_jsonl
from bunny.util.utils import atomic_write


def mmvet_results(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {f"v1_{answer['question_id']}": answer["text"] for answer in answers}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.mm_vet.convert_mmvet_for_eval", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--src", type=str, required=True, help="the answers, one JSON object per line")
    parser.add_argument("--dst", type=str, required=True, help="the JSON file for the MM-Vet evaluator")
    args = parser.parse_args(argv)
    try:
        results = mmvet_results(read_jsonl(args.src, ("question_id", "text")))
        with atomic_write(args.dst) as f:
            json.dump(results, f, indent=2)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")
    return results


if __name__ == "__main__":
    main()
