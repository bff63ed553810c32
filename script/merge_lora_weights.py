"""Merge a LoRA output into its base LLM and save a full Bunny checkpoint.

Run as:
    python script/merge_lora_weights.py --model-path checkpoints-phi-2/bunny-lora-phi-2 \
        --model-base microsoft/phi-2 --model-type phi-2 --save-model-path checkpoints-phi-2/bunny-phi-2

The merged directory loads without --model-base. Weights are written in float16 as by the
original unless --dtype says otherwise; the directory is written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bunny.model.backbones import MODEL_TYPES
from bunny.model.builder import load_pretrained_model
from bunny.util.mm_utils import get_model_name_from_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Merge LoRA weights into the base LLM.")
    parser.add_argument("--model-path", required=True, help="LoRA output directory (adapter_config.json, non_lora_trainables.bin)")
    parser.add_argument("--model-base", required=True, help="the LLM (or Bunny model) the LoRA run started from")
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES, help="LLM type")
    parser.add_argument("--save-model-path", required=True, help="where to write the merged checkpoint")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="weights dtype (default float16)")
    parser.add_argument("--device", default="cpu", help="device used for merging (default cpu)")
    return parser.parse_args(argv)


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
    target = os.path.normpath(args.save_model_path)
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> None:
    print(f"merged model written to {merge(parse_args(argv))}")


if __name__ == "__main__":
    main()
