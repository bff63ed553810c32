"""Answer a question file about images with a Bunny model, with long answers: the MM-Vet generator.

Run as:
    python -m bunny.eval.model_vqa --model-path PATH [--model-base BASE] --model-type phi-2 \\
        --question-file eval/mm-vet/bunny-mm-vet.jsonl --image-folder eval/mm-vet/images \\
        --answers-file answers.jsonl [--conv-mode bunny] [--temperature 0] [--top_p P] [--num_beams 1] \\
        [--max_new_tokens 1024] [--batch-size 8] [--num-chunks N --chunk-idx K] [--device cpu]

The question and answer files are those of `bunny.eval.model_vqa_loader`. As in the original, the
answer stops at the template's stop string, which is cut from it, and may be 1024 tokens long.
Fixed on purpose: pictures are converted to RGB (the original passed palette and RGBA pictures on
as they were) and `--max_new_tokens` may change the length (it was fixed at 1024).
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from bunny.eval import model_vqa_loader


def build_parser() -> argparse.ArgumentParser:
    return model_vqa_loader.build_parser("python -m bunny.eval.model_vqa", __doc__.split("\n\n")[0], max_new_tokens=1024)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return model_vqa_loader.run(argv, build_parser(), trim_stop=True)


if __name__ == "__main__":
    main()
