"""Conversation templates: the exact prompt strings Bunny checkpoints were trained on.

Run as `python -m bunny.conversation` to print the default template's generation prompt.

The strings here are part of the model format: label masking during training and every released
checkpoint depend on them byte for byte.
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto
from typing import Any

from bunny.constants import DEFAULT_IMAGE_TOKEN


@dataclasses.dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool


def _joined(segments: list[Segment]) -> list[Segment]:
    """Neighbouring segments of the same kind as one."""
    merged: list[Segment] = []
    for segment in segments:
        if merged and merged[-1].supervised == segment.supervised:
            merged[-1] = Segment(merged[-1].text + segment.text, segment.supervised)
        elif segment.text:
            merged.append(segment)
    return merged


class SeparatorStyle(Enum):
    TWO = auto()
    PLAIN = auto()


@dataclasses.dataclass
class Conversation:
    """A chat history plus the template that renders it into a prompt.

    A message is `[role, content]` where content is `None` (the reply still to be generated), a string,
    or a `(text, PIL.Image, image_process_mode)` tuple (the web page's message carrying an image).
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
        return "".join(segment.text for segment in self.segments())

    def segments(self) -> list[Segment]:
        """The prompt cut into pieces, each marked supervised (a reply and the end string after it:
        what training learns to produce) or not. Their texts joined are `get_prompt()`."""
        messages = self.messages
        if messages and isinstance(messages[0][1], tuple):
            # The message carrying an image: the placeholder always goes first, on its own line.
            text = messages[0][1][0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            messages = [[messages[0][0], DEFAULT_IMAGE_TOKEN + "\n" + text]] + messages[1:]
        texts = [(role, message[0] if isinstance(message, tuple) else message) for role, message in messages]
        if self.sep_style == SeparatorStyle.TWO:
            pieces = [Segment(self.system + self.sep, False)]
            for i, (role, message) in enumerate(texts):
                if not message:
                    pieces.append(Segment(role + ":", False))
                elif i % 2 == 0:
                    pieces.append(Segment(f"{role}: {message}{self.sep}", False))
                else:
                    # The space after "ASSISTANT:" is tokenised with the reply's first word, so it is supervised.
                    pieces += [Segment(role + ":", False), Segment(f" {message}{self.sep2}", True)]
            return _joined(pieces)
        if self.sep_style == SeparatorStyle.PLAIN:
            # `plain` has no sep2; a filled reply ends with `sep` (the original raised a TypeError here).
            pieces = [Segment(self.system, False)]
            for i, (_, message) in enumerate(texts):
                if message:
                    pieces.append(Segment(message + self.sep, i % 2 == 1))
            return _joined(pieces)
        raise ValueError(f"Invalid style: {self.sep_style}")

    @property
    def stop_str(self) -> str:
        """The string that ends a reply: `sep2` for the chat templates, `sep` for `plain`."""
        return self.sep2 if self.sep_style == SeparatorStyle.TWO else self.sep

    def append_message(self, role: str, message: Any) -> None:
        self.messages.append([role, message])

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
        """The conversation as JSON can hold it: a message with an image keeps only its text."""
        messages = [[role, m[0] if isinstance(m, tuple) else m] for role, m in self.messages]
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": messages,
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


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
