"""The model and generation flags every inference entry point takes, and their checks.

Shared by the terminal chat (`python -m bunny.serve.cli`), `script/batch_inference.py`, the
evaluation answer generators and the model worker, so that `--model-path`, `--model-type`,
`--device` ... mean the same everywhere and fail the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

from bunny.conversation import conv_templates
from bunny.model.backbones import MODEL_TYPES


def device_problem(device: str) -> str | None:
    """Why `device` can't be used here, or None."""
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        return f"invalid --device {device!r}: {err}"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {device} was requested but CUDA is not available on this machine; pass --device cpu"
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            return f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible"
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {device} was requested but MPS is not available on this machine; pass --device cpu"
    return None


def model_path_problem(model_path: str) -> str | None:
    """A path that can only be local (absolute, `./`, `~`, or deeper than a hub `org/name`) but is missing."""
    expanded = os.path.expanduser(model_path)
    looks_local = os.path.isabs(expanded) or model_path.startswith((".", "~")) or model_path.count("/") > 1
    if looks_local and not os.path.exists(expanded):
        return f"model path not found: {model_path}"
    return None


def add_model_arguments(
    parser: argparse.ArgumentParser, max_new_tokens: int = 512, temperature: float = 0.2, model_path_required: bool = False
) -> None:
    """The model and generation flags shared by the CLI and script/batch_inference.py."""
    parser.add_argument(
        "--model-path", type=str, default=None, required=model_path_required, help="checkpoint directory or hub id"
    )
    parser.add_argument("--model-base", type=str, default=None, help="base LLM, for LoRA or projector-only checkpoints")
    parser.add_argument(
        "--model-type",
        type=str,
        required=True,
        choices=MODEL_TYPES,
        help="the LLM back-end of the checkpoint; it also picks the conversation template",
    )
    parser.add_argument("--device", type=str, default="cuda", help="torch device to run on, e.g. cuda, cuda:1, cpu")
    parser.add_argument(
        "--conv-mode",
        type=str,
        default=None,
        choices=sorted(conv_templates),
        help="conversation template; default: the one the model type was trained with",
    )
    parser.add_argument("--temperature", type=float, default=temperature, help="sampling temperature; 0 decodes greedily")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="penalty for repeated tokens (1.0: none)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="most tokens generated per reply")


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`parser.error` (exit status 2, the usage and the cause) for a device or model path that can't be used."""
    for problem in (device_problem(args.device), args.model_path and model_path_problem(args.model_path)):
        if problem:
            parser.error(problem)


def load_model(
    args: argparse.Namespace, reading: str = "images", require_vision_tower: bool = True
) -> tuple[Any, Any, Any, int]:
    """`load_pretrained_model` on the flags above (and `--load-8bit`/`--load-4bit`, `--model-name`
    where a tool has them): `(tokenizer, model, image_processor, context_len)`. A model that can't
    be loaded, or that has no vision tower to read `reading` with when one is required, ends the
    program with a one-line error (the traceback with `--debug`)."""
    from bunny.model.builder import load_pretrained_model
    from bunny.util.tokens import get_model_name_from_path
    from bunny.util.utils import torch_init_skipped

    try:
        with torch_init_skipped():
            loaded = load_pretrained_model(
                args.model_path,
                args.model_base,
                getattr(args, "model_name", None) or get_model_name_from_path(args.model_path),
                args.model_type,
                getattr(args, "load_8bit", False),
                getattr(args, "load_4bit", False),
                device=args.device,
            )
    except (OSError, ValueError) as err:
        if getattr(args, "debug", False):
            raise
        sys.exit(f"error: could not load the model from {args.model_path}: {err}")
    if loaded[2] is None and require_vision_tower:
        sys.exit(f"error: {args.model_path} has no vision tower (mm_vision_tower) to read {reading} with")
    return loaded
