"""Merge a LoRA output into its base LLM and save a full Bunny checkpoint.

Run as:
    python script/merge_lora_weights.py --model-path checkpoints-phi-2/bunny-lora-phi-2 \
        --model-base microsoft/phi-2 --model-type phi-2 --save-model-path checkpoints-phi-2/bunny-phi-2

The merged directory loads without --model-base. Weights are written in float16 as by the
original unless --dtype says otherwise; the directory is written under a temporary name and
renamed when complete, with `merge_info.json` saying what it was merged from.

Unlike the original, which deleted --save-model-path first, an existing non-empty directory is
never emptied: an earlier output of this script (it has `merge_info.json`) is replaced only with
--overwrite, and anything else is refused before the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bunny.model.backbones import MODEL_TYPES
from bunny.model.builder import load_pretrained_model
from bunny.util.tokens import get_model_name_from_path
from bunny.util.utils import OutputDirectoryError, atomic_directory, check_output_directory

MARKER = "merge_info.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Merge LoRA weights into the base LLM.")
    parser.add_argument("--model-path", required=True, help="LoRA output directory (adapter_config.json, non_lora_trainables.bin)")
    parser.add_argument("--model-base", required=True, help="the LLM (or Bunny model) the LoRA run started from")
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES, help="LLM type")
    parser.add_argument("--save-model-path", required=True, help="where to write the merged checkpoint")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="weights dtype (default float16)")
    parser.add_argument("--device", default="cpu", help="device used for merging (default cpu)")
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace an earlier output of this script (a directory with {MARKER})"
    )
    args = parser.parse_args(argv)
    try:
        check_output_directory(args.save_model_path, MARKER, args.overwrite)  # before the model loads
    except OutputDirectoryError as err:
        parser.error(f"--save-model-path: {err}")
    return args


def merge(args: argparse.Namespace) -> str:
    tokenizer, model, _, _ = load_pretrained_model(
        args.model_path,
        args.model_base,
        get_model_name_from_path(args.model_path),
        args.model_type,
        device=args.device,
        device_map={"": args.device},
        dtype=args.dtype,
    )
    with atomic_directory(args.save_model_path, MARKER, args.overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {k: getattr(args, k) for k in ("model_path", "model_base", "model_type", "dtype")}
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
    return os.path.abspath(args.save_model_path)


def main(argv: list[str] | None = None) -> None:
    print(f"merged model written to {merge(parse_args(argv))}")


if __name__ == "__main__":
    main()
