"""Export a Bunny checkpoint to the formats the serving engines read (see docs/export.md).

- `hf-llava` (default): a native transformers Llava directory; `AutoModelForImageTextToText` and
  `AutoProcessor` load it without `bunny`, and vLLM, SGLang, TGI and lmms-eval serve it.
- `gguf`: the LLM as a native transformers checkpoint for llama.cpp's `convert_hf_to_gguf.py`, plus
  `mmproj-model-<dtype>.gguf` (tower + projector) for llama.cpp's multimodal tools.

Every loading mode of `load_pretrained_model` works (full, LoRA on --model-base, projector-only on
--model-base). What a format cannot express (S2 or EVA-CLIP towers, projectors other than
mlp2x_gelu) is refused before anything is written. The directory is written under a temporary
name and renamed when complete, with `export_info.json` saying what it came from; an existing
non-empty directory is never emptied (an earlier export is replaced only with --overwrite).

Run as:
    python -m bunny.export --model-path checkpoints-phi-2/bunny-phi-2 --model-type phi-2 \
        --output-dir exports/bunny-phi-2-llava [--format hf-llava|gguf] [--dtype float16]
"""

from __future__ import annotations

import argparse
import sys

from bunny.conversation import conv_templates
from bunny.export.write import FORMATS, MARKER, ExportRequest, export
from bunny.model.backbones import MODEL_TYPES
from bunny.util.utils import OutputDirectoryError, check_output_directory

DTYPES = ("auto", "float32", "float16", "bfloat16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bunny.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True, help="Bunny checkpoint directory or hub id (a LoRA output too)")
    parser.add_argument("--model-base", default=None, help="base LLM, for LoRA or projector-only checkpoints")
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES, help="the LLM back-end of the checkpoint")
    parser.add_argument("--output-dir", required=True, help="directory to write (new, empty, or an earlier export)")
    parser.add_argument("--format", default="hf-llava", choices=FORMATS, help="what to write (default hf-llava)")
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPES,
        help="weights dtype; auto: the checkpoint's own (its config's dtype), else float32",
    )
    parser.add_argument(
        "--conv-mode", default=None, choices=sorted(name for name in conv_templates if name != "plain"),
        help="conversation template written as the chat template; default: the model type's",
    )
    parser.add_argument("--device", default="cpu", help="device the model is loaded on for the export (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help=f"replace an earlier export (a directory with {MARKER})")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        check_output_directory(args.output_dir, MARKER, args.overwrite)  # before the model loads
    except OutputDirectoryError as err:
        parser.error(f"--output-dir: {err}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    request = ExportRequest(
        model_path=args.model_path, model_base=args.model_base, model_type=args.model_type,
        output_dir=args.output_dir, format=args.format, dtype=args.dtype, conv_mode=args.conv_mode, device=args.device,
    )
    try:
        written = export(request, overwrite=args.overwrite)
    except (OSError, ValueError) as err:
        if args.debug:
            raise
        sys.exit(f"error: {err}")
    print(f"{args.format} export written to {written}")


if __name__ == "__main__":
    main()
