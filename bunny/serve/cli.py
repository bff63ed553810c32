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

The prompts, the stop string and generation are `bunny.inference`'s, shared with the batch
script, evaluation and the model worker.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from bunny.conversation import Conversation, get_conv_template
from bunny.inference.generate import generate_replies
from bunny.inference.options import add_model_arguments, check_model_arguments, load_model
from bunny.inference.prompts import add_user_turn, resolve_conv_mode
from bunny.inference.stops import StopStringStreamer
from bunny.util.images import ImageLoadError, load_image, process_images


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
    check_model_arguments(parser, args)
    return args


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
        [reply] = generate_replies(
            [prompt], images, tokenizer, model, conv.stop_str, args.max_new_tokens, args.temperature,
            repetition_penalty=args.repetition_penalty, streamer=StopStringStreamer(tokenizer, conv.stop_str),
        )
        conv.messages[-1][-1] = reply.text
        if args.debug:
            print(json.dumps({"prompt": prompt, "outputs": reply.text}, ensure_ascii=False), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    conv_mode = resolve_conv_mode(args.model_type, args.conv_mode)
    # The image first: a bad file should not cost a model load.
    try:
        image = load_image(args.image_file)
    except ImageLoadError as err:
        sys.exit(f"error: {err}")
    tokenizer, model, image_processor, _ = load_model(args, "the image")
    images = process_images([image], image_processor, model.config)  # once, for every turn
    try:
        chat(model, tokenizer, images, get_conv_template(conv_mode), args)
    except KeyboardInterrupt:
        print("\nexit...", flush=True)


if __name__ == "__main__":
    main()
