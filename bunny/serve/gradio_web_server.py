"""The web demo: a Gradio 6 chat page in front of a controller and its model workers.

Run as (after the controller; then start the workers):
    python -m bunny.serve.gradio_web_server --controller-url http://localhost:21001 [--port 7860]
        [--model-list-mode once|reload] [--share] [--moderate] [--embed] [--concurrency-count 10]

The page: model choice, image upload, a streamed chat, regenerate / clear / vote / save, and the
sampling parameters. Answers stream from the worker the controller names for the chosen model;
conversations are logged as JSON lines per day (`<log dir>/<YYYY-MM-DD>-conv.json`) and uploaded
images under `<log dir>/serve_images/<YYYY-MM-DD>/<md5>.jpg` (`bunny.serve.protocol.log_directory`).
The page never serves the log directory: the chat shows an uploaded image from a copy in a private
temporary directory, which Gradio copies into its own cache and serves from there.

Differences from the original, on purpose:
- it binds 127.0.0.1 unless --host says otherwise (as the original's default already did);
- the template comes from the worker when it says which one its model uses (ours do), else from
  the model name as in the original;
- a worker that fails, refuses the request (its reason is shown) or dies mid-answer ends the
  reply with an error note; the page keeps working;
- "Save" offers the conversation as a self-contained HTML file (the original converted HTML to
  .docx with pandoc, a binary the package can't install);
- --concurrency-count is the number of answers the page streams at once (the original ignored it).
"""

import argparse
import atexit
import base64
import datetime
import functools
import hashlib
import html
import json
import os
import shutil
import tempfile
import time
from io import BytesIO
from typing import Any, Iterator, Sequence

import gradio as gr
import requests

from bunny.constants import DEFAULT_IMAGE_TOKEN
from bunny.conversation import Conversation, get_conv_template
from bunny.model.backbones import template_for_model_name
from bunny.serve.protocol import WORKER_REQUEST_TIMEOUT, add_bind_arguments, build_logger, iter_chunks, log_directory
from bunny.util.images import MAX_IMAGE_BYTES, pad_to_square
from bunny.util.utils import atomic_write, moderation_msg, server_error_msg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRIORITY = {"Bunny-v1.1-Llama-3-8B-V": "a", "Bunny-v1.1-4B": "b", "Bunny-v1.0-3B": "c"}
MAX_TEXT = 1536  # characters of a message; 1200 with an image
MAX_TEXT_WITH_IMAGE = 1200
CURSOR = "▌"
EXAMPLES = [
    (os.path.join(REPO, "images", "shapes.png"), "What colour is the triangle?"),
    (os.path.join(REPO, "images", "shapes_tall.png"), "How many shapes are there?"),
]
TITLE = "# Bunny: A family of lightweight multimodal models"
TERMS = (
    "### Terms of use\nBy using this service, users agree that it is a research preview for non-commercial use "
    "only. It gives limited safety measures and may produce offensive content; it must not be used for any "
    "illegal, harmful, violent, racist or sexual purpose. Conversations may be logged for research."
)
LICENSE = "### License\nThe service is a research preview; see the licence of each model served."

logger = build_logger("gradio_web_server", "gradio_web_server.log")


# -- the controller and the workers ----------------------------------------------------------------
def get_model_list(controller_url: str) -> list[str]:
    """The models the controller's workers serve, the original's favourites first."""
    response = requests.post(controller_url + "/refresh_all_workers", timeout=2 * WORKER_REQUEST_TIMEOUT)
    response.raise_for_status()
    response = requests.post(controller_url + "/list_models", timeout=WORKER_REQUEST_TIMEOUT)
    response.raise_for_status()
    models = sorted(response.json()["models"], key=lambda name: PRIORITY.get(name, name))
    logger.info(f"Models: {models}")
    return models


def template_for(model_name: str, worker_status: dict[str, Any] | None = None) -> str:
    """The worker's template for the model if it says (ours do), else the original's rule on the name."""
    reported = (worker_status or {}).get("conv_mode")
    return reported if isinstance(reported, str) else template_for_model_name(model_name)


def worker_status(address: str) -> dict[str, Any] | None:
    try:
        response = requests.post(address + "/worker_get_status", timeout=WORKER_REQUEST_TIMEOUT)
        return response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def violates_moderation(text: str) -> bool:
    """OpenAI's moderation endpoint (needs OPENAI_API_KEY); an unreachable endpoint flags nothing."""
    try:
        response = requests.post(
            "https://api.openai.com/v1/moderations",
            headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]},
            json={"input": text.replace("\n", "")},
            timeout=5,
        )
        return bool(response.json()["results"][0]["flagged"])
    except (requests.RequestException, KeyError, IndexError, ValueError) as err:
        logger.warning(f"moderation check failed: {err}")
        return False


# -- conversation state ----------------------------------------------------------------------------
def image_md5(image: Any) -> str:
    """The md5 of an image's pixels, hashed once (kept in `image.info`): the chat is re-rendered,
    and its image looked up, on every streamed chunk."""
    if "bunny_md5" not in image.info:
        image.info["bunny_md5"] = hashlib.md5(image.tobytes()).hexdigest()
    return image.info["bunny_md5"]


def _write_jpeg(image: Any, path: str) -> str:
    if not os.path.isfile(path):
        with atomic_write(path, "wb") as f:
            image.convert("RGB").save(f, format="JPEG")
    return path


def save_image(image: Any) -> str:
    """Keep an uploaded image under <log dir>/serve_images/<date>/<md5>.jpg (once); returns the path."""
    directory = os.path.join(log_directory(), "serve_images", str(datetime.date.today()))
    return _write_jpeg(image, os.path.join(directory, image_md5(image) + ".jpg"))


@functools.cache
def display_directory() -> str:
    """A private temporary directory (mode 700, removed at exit) for the copies of uploaded images
    the chat shows: the page must never serve the log directory, where every user's images and
    conversations are."""
    directory = tempfile.mkdtemp(prefix="bunny-chat-images-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def display_image(image: Any) -> str:
    """The path of the copy of `image` the chat shows (written once)."""
    return _write_jpeg(image, os.path.join(display_directory(), image_md5(image) + ".jpg"))


def conversation_images(
    state: Conversation, pad_color: tuple[int, int, int] = (122, 116, 104), resize_to: int = 336
) -> list[Any]:
    """The images of the user turns, after each message's preprocessing mode (the page's hidden
    "Preprocess for non-square image" choice; `pad_color` and `resize_to` are the original's fixed
    values for its "Pad" and "Resize")."""
    images = []
    for i, (_, message) in enumerate(state.messages[state.offset :]):
        if i % 2 != 0 or not isinstance(message, tuple):
            continue
        _, image, mode = message
        if mode == "Pad":
            image = pad_to_square(image, pad_color)
        elif mode == "Resize":
            image = image.resize((resize_to, resize_to))
        elif mode not in ("Default", "Crop"):
            raise ValueError(f"Invalid image_process_mode: {mode}")
        images.append(image)
    return images


def base64_png(image: Any) -> str:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def chat_messages(state: Conversation) -> list[dict[str, Any]]:
    """The conversation as Gradio chat messages (an uploaded image shown above its question)."""
    messages = []
    for i, (_, message) in enumerate(state.messages[state.offset :]):
        if i % 2 == 0:
            if isinstance(message, tuple):
                text, image, _ = message
                messages.append({"role": "user", "content": {"path": display_image(image)}})
                message = text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
            messages.append({"role": "user", "content": message})
        elif message is not None:
            messages.append({"role": "assistant", "content": message})
    return messages


def log_conversation(record: dict[str, Any]) -> None:
    path = os.path.join(log_directory(), f"{datetime.date.today()}-conv.json")
    os.makedirs(log_directory(), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def client_ip(request: Any) -> str:
    return getattr(getattr(request, "client", None), "host", "") or ""


def conversation_html(state: Conversation) -> str:
    """The conversation as a self-contained HTML page, images inline."""
    parts = ["<!doctype html><meta charset='utf-8'><title>Bunny conversation</title>"]
    for role, message in state.messages[state.offset :]:
        if message is None:
            continue
        if isinstance(message, tuple):
            text, image, _ = message
            data = base64_png(image.convert("RGB"))
            parts.append(f"<p><img src='data:image/png;base64,{data}' style='max-width:400px'></p>")
            message = text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        parts.append(f"<p><b>{html.escape(role)}:</b> {html.escape(message)}</p>")
    return "\n".join(parts)


# -- the page's handlers ---------------------------------------------------------------------------
class WebServer:
    """The handlers of the page; `args` are the command-line options."""

    def __init__(self, args: argparse.Namespace, models: list[str]) -> None:
        self.args = args
        self.models = models

    def add_text(self, state: Conversation, text: str, image: Any, mode: str, request: gr.Request = None):
        """Add the user's message (with the uploaded image, if any) to the conversation."""
        text = text or ""
        if not text.strip() and image is None:
            state.skip_next = True
            return state, chat_messages(state), "", None, *self.buttons(False)
        if self.args.moderate and violates_moderation(text):
            state.skip_next = True
            return state, chat_messages(state), moderation_msg, None, *self.buttons(False)
        text = text[: MAX_TEXT_WITH_IMAGE if image is not None else MAX_TEXT]
        if image is not None:
            if DEFAULT_IMAGE_TOKEN not in text:
                text = text + "\n" + DEFAULT_IMAGE_TOKEN
            if conversation_images(state):  # one image per conversation: start afresh
                state = get_conv_template("bunny")
            message: Any = (text, image, mode)
        else:
            message = text
        state.append_message(state.roles[0], message)
        state.append_message(state.roles[1], None)
        state.skip_next = False
        logger.info(f"add_text from {client_ip(request)}: {len(text)} characters, image: {image is not None}")
        return state, chat_messages(state), "", gr.update(value=None), *self.buttons(False)

    @staticmethod
    def buttons(enabled: bool) -> list[Any]:
        return [gr.update(interactive=enabled)] * 5  # upvote, downvote, regenerate, clear, save

    def http_bot(
        self, state: Conversation, model_name: str, temperature: float, top_p: float, max_new_tokens: int,
        repetition_penalty: float, request: gr.Request = None,
    ) -> Iterator[tuple]:
        """Stream the answer of the worker serving `model_name` into the last reply."""
        start = time.time()
        address = "" if state.skip_next else self.worker_address(model_name)
        if not address:
            if not state.skip_next:
                state.messages[-1][-1] = server_error_msg
            yield state, chat_messages(state), *self.buttons(True)
            return
        if len(state.messages) == state.offset + 2:  # the first turn: the model's own template
            template = get_conv_template(template_for(model_name, worker_status(address)))
            template.append_message(template.roles[0], state.messages[-2][1])
            template.append_message(template.roles[1], None)
            state = template
        images = conversation_images(state)
        for image in images:
            save_image(image)
        payload = {
            "model": model_name, "prompt": state.get_prompt(), "temperature": float(temperature),
            "top_p": float(top_p), "max_new_tokens": min(int(max_new_tokens), 1536),
            "repetition_penalty": float(repetition_penalty), "stop": state.stop_str,
            "images": [base64_png(image) for image in images],
        }
        logger.info(f"==== request to {address} ====\n{dict(payload, images=f'{len(images)} image(s)')}")
        finished = yield from self.stream_reply(state, address, payload)
        if finished:
            log_conversation({
                "tstamp": round(time.time(), 4), "type": "chat", "model": model_name, "start": round(start, 4),
                "finish": round(time.time(), 4), "state": state.dict(), "images": [image_md5(i) for i in images],
                "ip": client_ip(request),
            })

    def worker_address(self, model_name: str) -> str:
        """The worker the controller names for `model_name`; "" when none, or the controller is silent."""
        try:
            response = requests.post(
                self.args.controller_url + "/get_worker_address", json={"model": model_name}, timeout=WORKER_REQUEST_TIMEOUT
            )
            return response.json()["address"]
        except (requests.RequestException, ValueError, KeyError, TypeError) as err:
            logger.warning(f"controller {self.args.controller_url} did not answer: {err}")
            return ""

    def stream_reply(self, state: Conversation, address: str, payload: dict[str, Any]) -> Iterator[tuple]:
        """Show the worker's answer as it streams (a cursor at its end); returns whether it ended well."""
        state.messages[-1][-1] = CURSOR
        yield state, chat_messages(state), *self.buttons(False)
        try:
            with requests.post(
                address + "/worker_generate_stream", headers={"User-Agent": "Bunny Client"}, json=payload,
                stream=True, timeout=1000,
            ) as response:
                for chunk in iter_chunks(response.iter_lines(delimiter=b"\0")):
                    if chunk["error_code"] != 0:
                        state.messages[-1][-1] = chunk["text"] + f" (error_code: {chunk['error_code']})"
                        yield state, chat_messages(state), *self.buttons(True)
                        return False
                    state.messages[-1][-1] = chunk["text"][len(payload["prompt"]):].strip() + CURSOR
                    yield state, chat_messages(state), *self.buttons(False)
                    time.sleep(0.03)
        except (requests.RequestException, ValueError) as err:
            logger.warning(f"worker {address} failed: {err}")
            state.messages[-1][-1] = server_error_msg
            yield state, chat_messages(state), *self.buttons(True)
            return False
        state.messages[-1][-1] = state.messages[-1][-1].removesuffix(CURSOR)
        yield state, chat_messages(state), *self.buttons(True)
        return True

    def vote(self, kind: str):
        def handler(state: Conversation, model_name: str, request: gr.Request = None):
            log_conversation({
                "tstamp": round(time.time(), 4), "type": kind, "model": model_name, "state": state.dict(),
                "ip": client_ip(request),
            })
            return "", gr.update(interactive=False), gr.update(interactive=False)

        return handler

    def regenerate(self, state: Conversation, mode: str):
        state.messages[-1][-1] = None
        previous = state.messages[-2]
        if isinstance(previous[1], tuple):
            previous[1] = (*previous[1][:2], mode)
        state.skip_next = False
        return state, chat_messages(state), "", None, *self.buttons(False)

    def clear_history(self):
        state = get_conv_template("bunny")
        return state, [], "", None, *self.buttons(False)

    def save(self, state: Conversation):
        directory = tempfile.mkdtemp(prefix="bunny-conversation-")
        path = os.path.join(directory, "conversation.html")
        with open(path, "w", encoding="utf-8") as f:
            f.write(conversation_html(state))
        return gr.update(value=path, visible=True)

    def load_page(self, request: gr.Request = None):
        """Page load: `reload` fetches the model list again; `?model=NAME` preselects a known model."""
        if self.args.model_list_mode == "reload":
            self.models = get_model_list(self.args.controller_url)
        wanted = (dict(request.query_params) if request is not None else {}).get("model")
        value = wanted if wanted in self.models else (self.models[0] if self.models else None)
        return get_conv_template("bunny"), gr.update(choices=self.models, value=value, visible=True)


def build_demo(server: WebServer, embed: bool = False):
    with gr.Blocks(title="Bunny") as demo:
        state = gr.State(get_conv_template("bunny"))
        if not embed:
            gr.Markdown(TITLE)
        with gr.Row():
            with gr.Column(scale=3):
                model_selector = gr.Dropdown(
                    choices=server.models, value=server.models[0] if server.models else None,
                    allow_custom_value=True, show_label=False, interactive=True,
                )
                image = gr.Image(type="pil", label="Image")
                mode = gr.Radio(["Crop", "Resize", "Pad", "Default"], value="Default", label="Preprocess for non-square image", visible=False)
                examples = [(path, question) for path, question in EXAMPLES if os.path.isfile(path)]
                with gr.Accordion("Parameters", open=False):
                    temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.1, label="Temperature")
                    top_p = gr.Slider(0.0, 1.0, value=0.7, step=0.1, label="Top P")
                    max_output_tokens = gr.Slider(0, 1024, value=512, step=64, label="Max output tokens")
                    repetition_penalty = gr.Slider(1.0, 2.0, value=1.08, step=0.01, label="Repetition penalty")
                file = gr.File(label="Download", visible=False)
            with gr.Column(scale=8):
                chatbot = gr.Chatbot(elem_id="chatbot", label="Bunny Chatbot", height=550)
                with gr.Row():
                    textbox = gr.Textbox(show_label=False, placeholder="Enter text and press ENTER", container=False, scale=8)
                    send = gr.Button("Send", variant="primary", scale=1)
                with gr.Row():
                    upvote = gr.Button("Upvote", interactive=False)
                    downvote = gr.Button("Downvote", interactive=False)
                    regenerate = gr.Button("Regenerate", interactive=False)
                    clear = gr.Button("Clear", interactive=False)
                    save = gr.Button("Save", interactive=False)
        if examples:
            gr.Examples(examples=[list(e) for e in examples], inputs=[image, textbox])
        if not embed:
            gr.Markdown(TERMS)
            gr.Markdown(LICENSE)

        buttons = [upvote, downvote, regenerate, clear, save]
        bot_inputs = [state, model_selector, temperature, top_p, max_output_tokens, repetition_penalty]
        bot_outputs = [state, chatbot, *buttons]
        for event in (textbox.submit, send.click):
            event(
                server.add_text, [state, textbox, image, mode], [state, chatbot, textbox, image, *buttons]
            ).then(server.http_bot, bot_inputs, bot_outputs)
        regenerate.click(server.regenerate, [state, mode], [state, chatbot, textbox, image, *buttons]).then(
            server.http_bot, bot_inputs, bot_outputs
        )
        clear.click(server.clear_history, None, [state, chatbot, textbox, image, *buttons])
        upvote.click(server.vote("upvote"), [state, model_selector], [textbox, upvote, downvote])
        downvote.click(server.vote("downvote"), [state, model_selector], [textbox, upvote, downvote])
        save.click(server.save, [state], [file])
        demo.load(server.load_page, None, [state, model_selector])
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bunny.serve.gradio_web_server", description=__doc__.split("\n")[0])
    add_bind_arguments(parser, None, "port to listen on (default: Gradio's, 7860)")
    parser.add_argument("--controller-url", "--controller", default="http://localhost:21001", help="URL of the controller")
    parser.add_argument("--concurrency-count", type=int, default=10, help="answers streamed at once")
    parser.add_argument(
        "--model-list-mode", choices=["once", "reload"], default="once",
        help="once: fetch the model list at start-up; reload: on every page load",
    )
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio link")
    parser.add_argument("--moderate", action="store_true", help="check messages with OpenAI's moderation API")
    parser.add_argument("--embed", action="store_true", help="leave out the title, terms and licence")
    parser.add_argument(
        "--max-upload-bytes", type=int, default=MAX_IMAGE_BYTES, help="largest file a visitor may upload (an image)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.controller_url = args.controller_url.rstrip("/")
    logger.info(f"args: {args}")
    if args.moderate and not os.environ.get("OPENAI_API_KEY"):
        raise SystemExit("gradio_web_server: --moderate needs OPENAI_API_KEY for OpenAI's moderation API")
    try:
        models = get_model_list(args.controller_url)
    except (requests.RequestException, ValueError, KeyError) as err:
        raise SystemExit(f"gradio_web_server: cannot get the model list from {args.controller_url}: {err}")
    demo = build_demo(WebServer(args, models), embed=args.embed)
    demo.queue(default_concurrency_limit=args.concurrency_count, api_open=False).launch(
        server_name=args.host, server_port=args.port, share=args.share, max_threads=10, show_error=True,
        max_file_size=args.max_upload_bytes,
        theme=gr.themes.Default(primary_hue="blue", secondary_hue="lime"),
    )


if __name__ == "__main__":
    main()
