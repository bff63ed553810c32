"""Conversation templates: the exact prompt strings Bunny checkpoints were trained on.

Run as `python -m bunny.conversation` to print the default template's generation prompt.

The strings here are part of the model format: label masking during training and every released
checkpoint depend on them byte for byte.
"""

from __future__ import annotations

import base64
import dataclasses
from enum import Enum, auto
from io import BytesIO
from typing import Any

from bunny.constants import DEFAULT_IMAGE_TOKEN


class SeparatorStyle(Enum):
    TWO = auto()
    PLAIN = auto()


@dataclasses.dataclass
class Conversation:
    """A chat history plus the template that renders it into a prompt.

    A message is `[role, content]` where content is `None` (the reply still to be generated), a string,
    or a `(text, PIL.Image, image_process_mode)` tuple (the web UI's message carrying an image).
    """

    system: str
    roles: tuple[str, str]
    messages: list[list[Any]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.TWO
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    skip_next: bool = False

    def __post_init__(self) -> None:
        # Templates are shared module-level objects: keep our own list of our own pairs.
        self.messages = [list(message) for message in self.messages]

    def get_prompt(self) -> str:
        messages = self.messages
        if messages and isinstance(messages[0][1], tuple):
            # The message carrying an image: the placeholder always goes first, on its own line.
            text = messages[0][1][0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            messages = [[messages[0][0], DEFAULT_IMAGE_TOKEN + "\n" + text]] + messages[1:]

        if self.sep_style == SeparatorStyle.TWO:
            seps = (self.sep, self.sep2)
            prompt = self.system + seps[0]
            for i, (role, message) in enumerate(messages):
                if message:
                    if isinstance(message, tuple):
                        message = message[0]
                    prompt += role + ": " + message + seps[i % 2]
                else:
                    prompt += role + ":"
            return prompt
        if self.sep_style == SeparatorStyle.PLAIN:
            # `plain` has no sep2; a filled reply ends with `sep` (the original raised a TypeError here).
            seps = (self.sep, self.sep2 if self.sep2 is not None else self.sep)
            prompt = self.system
            for i, (_, message) in enumerate(messages):
                if message:
                    if isinstance(message, tuple):
                        message = message[0]
                    prompt += message + seps[i % 2]
            return prompt
        raise ValueError(f"Invalid style: {self.sep_style}")

    @property
    def stop_str(self) -> str:
        """The string that ends a reply: `sep2` for the chat templates, `sep` for `plain`."""
        return self.sep2 if self.sep_style == SeparatorStyle.TWO else self.sep

    def append_message(self, role: str, message: Any) -> None:
        self.messages.append([role, message])

    def get_images(
        self,
        return_pil: bool = False,
        pad_color: tuple[int, int, int] = (122, 116, 104),
        resize_to: int = 336,
    ) -> list:
        """Images of the user turns, after each message's `image_process_mode`.

        `pad_color` and `resize_to` default to the original's fixed values; callers that know the
        vision tower pass its mean colour and input size.
        """
        images = []
        for i, (_, message) in enumerate(self.messages[self.offset :]):
            if i % 2 != 0 or not isinstance(message, tuple):
                continue
            _, image, mode = message
            if mode == "Pad":
                image = _expand_to_square(image, pad_color)
            elif mode in ("Default", "Crop"):
                pass
            elif mode == "Resize":
                image = image.resize((resize_to, resize_to))
            else:
                raise ValueError(f"Invalid image_process_mode: {mode}")
            if return_pil:
                images.append(image)
            else:
                buffered = BytesIO()
                image.save(buffered, format="PNG")
                images.append(base64.b64encode(buffered.getvalue()).decode())
        return images

    def to_gradio_chatbot(self) -> list[list[Any]]:
        ret: list[list[Any]] = []
        for i, (_, message) in enumerate(self.messages[self.offset :]):
            if i % 2 == 0:
                if isinstance(message, tuple):
                    text, image, _ = message
                    max_side, min_side = max(image.size), min(image.size)
                    aspect = max_side / min_side
                    shortest = int(min(800 / aspect, 400, min_side))
                    longest = int(shortest * aspect)
                    w, h = image.size
                    size = (longest, shortest) if w > h else (shortest, longest)
                    image = image.resize(size)
                    buffered = BytesIO()
                    image.convert("RGB").save(buffered, format="JPEG")
                    b64 = base64.b64encode(buffered.getvalue()).decode()
                    img_html = f'<img src="data:image/png;base64,{b64}" alt="user upload image" />'
                    message = img_html + text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
                ret.append([message, None])
            else:
                ret[-1][-1] = message
        return ret

    def copy(self) -> "Conversation":
        return Conversation(
            system=self.system,
            roles=self.roles,
            messages=[[role, message] for role, message in self.messages],
            offset=self.offset,
            sep_style=self.sep_style,
            sep=self.sep,
            sep2=self.sep2,
            version=self.version,
        )

    def dict(self) -> dict[str, Any]:
        messages = self.messages
        if self.get_images():
            messages = [[role, m[0] if isinstance(m, tuple) else m] for role, m in messages]
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": messages,
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


def _expand_to_square(image, background):
    from bunny.util.mm_utils import pad_to_square

    return pad_to_square(image, background)


SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def _chat_template(sep2: str, version: str) -> Conversation:
    return Conversation(
        system=SYSTEM,
        roles=("USER", "ASSISTANT"),
        messages=[],
        offset=0,
        sep_style=SeparatorStyle.TWO,
        sep=" ",
        sep2=sep2,
        version=version,
    )


conv_bunny = _chat_template("<|endoftext|>", "bunny")
conv_phi3 = _chat_template("<|endoftext|>", "phi3")
conv_minicpm = _chat_template("</s>", "minicpm")
conv_llama = _chat_template("<|end_of_text|>", "llama")
conv_plain = Conversation(
    system="",
    roles=("", ""),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.PLAIN,
    sep="\n",
)

default_conversation = conv_bunny
conv_templates: dict[str, Conversation] = {
    "default": conv_bunny,
    "bunny": conv_bunny,
    "phi3": conv_phi3,
    "minicpm": conv_minicpm,
    "llama": conv_llama,
    "plain": conv_plain,
}


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template `name`; an unknown name is an error that lists the known ones."""
    try:
        return conv_templates[name].copy()
    except KeyError:
        raise ValueError(f"Unknown conversation template {name!r}; choose one of {sorted(conv_templates)}") from None


if __name__ == "__main__":
    print(default_conversation.get_prompt())
