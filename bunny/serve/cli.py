"""Chat with a Bunny model about one image in the terminal.

Run as:
    python -m bunny.serve.cli --model-path PATH --model-type phi-2 --image-file IMAGE [--device cpu]

Each line typed at the `USER: ` prompt is one turn and the reply streams as it is generated; an
empty line or end of input (Ctrl-D) ends the chat. Output is flushed as it is written, so the chat
can also be driven through a pipe, and then each question is printed after `USER: ` as a terminal
would have echoed it:
    printf 'Describe it\\nAnd the colour?\\n' | python -m bunny.serve.cli --model-path PATH ...

Differences from the original, on purpose:
- without --conv-mode the template is the one the model type was trained with (`llama3-8b` ->
  `llama`, `phi-3` -> `phi3`, `minicpm` -> `minicpm`, the others `bunny`); the original always
  used `bunny`;
- replies are stored in the history without special tokens and without the stop string, so later
  prompts never repeat it (the original kept e.g. `<|endoftext|>` and then appended another);
- `--device cuda` on a machine without CUDA is an argument error that suggests `--device cpu`,
  not a traceback (and no silent fallback: an 8B model in float32 on CPU is rarely wanted);
- an image that can't be read stops with a one-line error naming the file, before the model loads;
- an http(s) --image-file must download within 10 s in all (not per read) and 50 MiB; any address
  may be fetched, as the operator named it (`bunny.util.mm_utils.load_image`).

The prompt-building helpers (`resolve_conv_mode`, `add_user_turn`, `image_prompt`, `clean_reply`)
live in `bunny/serve/generation.py`, shared with batched generation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

import torch
from transformers import TextStreamer

from bunny.constants import IMAGE_TOKEN_INDEX
from bunny.conversation import Conversation, conv_templates, get_conv_template
from bunny.model.backbones import MODEL_TYPES
from bunny.model.builder import load_pretrained_model
from bunny.util.mm_utils import (
    ImageLoadError,
    KeywordsStoppingCriteria,
    get_model_name_from_path,
    load_image,
    process_images,
    tokenizer_image_token,
)
from bunny.serve.generation import (
    add_user_turn,
    clean_reply,
    generation_kwargs,
    resolve_conv_mode,
    stop_prefix_len,
    to_model_inputs,
)
from bunny.util.utils import disable_torch_init

logger = logging.getLogger(__name__)


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


# ---------------------------------------------------------------- streaming


class StopStringStreamer(TextStreamer):
    """`TextStreamer(skip_prompt=True, skip_special_tokens=True)` that prints nothing from the stop string on.

    Text that might be the start of the stop string is held back until the next piece decides it.
    """

    def __init__(self, tokenizer: Any, stop_str: str | None) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop_str = stop_str
        self.held = ""
        self.stopped = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.stopped:
            text = self.held + text
            self.held = ""
            if self.stop_str and self.stop_str in text:
                text = text[: text.index(self.stop_str)]
                self.stopped = True
            elif self.stop_str and not stream_end:
                keep = stop_prefix_len(text, [self.stop_str])
                if keep:
                    text, self.held = text[:-keep], text[-keep:]
            print(text, end="", flush=True)
        if stream_end:
            print(flush=True)
            self.held = ""
            self.stopped = False


# ---------------------------------------------------------------- chat


def add_model_arguments(
    parser: argparse.ArgumentParser, max_new_tokens: int = 512, temperature: float = 0.2, model_path_required: bool = False
) -> None:
    """The model and generation flags shared by the CLI and script/batch_inference.py."""
    parser.add_argument(
        "--model-path", type=str, default=None, required=model_path_required, help="checkpoint directory or hub id"
    )
    parser.add_argument(
        "--model-base", type=str, default=None, help="base LLM, for LoRA or projector-only checkpoints"
    )
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
    parser.add_argument(
        "--temperature", type=float, default=temperature, help="sampling temperature; 0 decodes greedily"
    )
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="penalty for repeated tokens (1.0: none)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="most tokens generated per reply")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.serve.cli",
        description="Chat with a Bunny model about one image; an empty line or end of input ends the chat.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--image-file", type=str, required=True, help="the image to talk about: a local path or an http(s) URL"
    )
    parser.add_argument("--load-8bit", action="store_true", help="load the LLM in 8 bit (bitsandbytes)")
    parser.add_argument("--load-4bit", action="store_true", help="load the LLM in 4 bit NF4 (bitsandbytes)")
    parser.add_argument(
        "--debug", action="store_true", help='print {"prompt": ..., "outputs": ...} after every reply'
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_path is None:
        parser.error("--model-path is required")
    args.model_path = os.path.expanduser(args.model_path)
    for problem in (device_problem(args.device), model_path_problem(args.model_path)):
        if problem is not None:
            parser.error(problem)
    return args


def generate_reply(
    model: Any,
    tokenizer: Any,
    images: torch.Tensor | list[torch.Tensor],
    prompt: str,
    stop_str: str | None,
    temperature: float,
    max_new_tokens: int,
    repetition_penalty: float,
) -> str:
    """Stream the reply to `prompt` to stdout and return it cleaned (see `clean_reply`)."""
    # [1, prompt_len], with IMAGE_TOKEN_INDEX where the image goes
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    input_ids = input_ids.to(model.device)
    stopping_criteria = [KeywordsStoppingCriteria([stop_str], tokenizer, input_ids)] if stop_str else None
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids,
            images=images,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            use_cache=True,
            streamer=StopStringStreamer(tokenizer, stop_str),
            stopping_criteria=stopping_criteria,
            **generation_kwargs(temperature),
        )
    # generate returns the prompt (image slot as one id) followed by the new tokens
    new_tokens = output_ids[0, input_ids.shape[1] :]
    return clean_reply(tokenizer.decode(new_tokens, skip_special_tokens=True), stop_str)


def chat(model: Any, tokenizer: Any, images: Any, conv: Conversation, args: argparse.Namespace) -> None:
    """The read-reply loop; the image goes with every turn."""
    user_role, assistant_role = conv.roles
    while True:
        try:
            text = input(f"{user_role}: ")
        except (EOFError, KeyboardInterrupt):
            text = ""
        if not text.strip():
            print("exit...", flush=True)
            return
        if not sys.stdin.isatty():  # a terminal echoes what is typed; a pipe does not
            print(text, flush=True)
        print(f"{assistant_role}: ", end="", flush=True)
        add_user_turn(conv, text)
        prompt = conv.get_prompt()
        reply = generate_reply(
            model,
            tokenizer,
            images,
            prompt,
            conv.stop_str,
            args.temperature,
            args.max_new_tokens,
            args.repetition_penalty,
        )
        conv.messages[-1][-1] = reply
        if args.debug:
            print(json.dumps({"prompt": prompt, "outputs": reply}, ensure_ascii=False), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    conv_mode = resolve_conv_mode(args.model_type, args.conv_mode)

    # The image first: a bad file should not cost a model load.
    try:
        image = load_image(args.image_file)
    except ImageLoadError as err:
        sys.exit(f"error: {err}")

    disable_torch_init()
    try:
        tokenizer, model, image_processor, _ = load_pretrained_model(
            args.model_path,
            args.model_base,
            get_model_name_from_path(args.model_path),
            args.model_type,
            args.load_8bit,
            args.load_4bit,
            device=args.device,
        )
    except (OSError, ValueError) as err:
        if args.debug:
            raise
        sys.exit(f"error: could not load the model from {args.model_path}: {err}")
    if image_processor is None:
        sys.exit(f"error: {args.model_path} has no vision tower (mm_vision_tower) to read the image with")

    images = to_model_inputs(process_images([image], image_processor, model.config), model)
    try:
        chat(model, tokenizer, images, get_conv_template(conv_mode), args)
    except KeyboardInterrupt:
        print("\nexit...", flush=True)


if __name__ == "__main__":
    main()
