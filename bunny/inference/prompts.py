"""Prompts for chatting about an image: which template, and how a turn is added."""

from __future__ import annotations

import logging

from bunny.constants import DEFAULT_IMAGE_TOKEN
from bunny.conversation import Conversation, get_conv_template
from bunny.model.backbones import get_backbone

logger = logging.getLogger(__name__)


def resolve_conv_mode(model_type: str, conv_mode: str | None = None) -> str:
    """The template to chat with: `conv_mode` if given, else the one `model_type` was trained with."""
    inferred = get_backbone(model_type).template
    if conv_mode is None:
        return inferred
    if conv_mode != inferred:
        logger.warning(
            "the conversation mode inferred from model type %s is %s, while --conv-mode is %s; using %s",
            model_type, inferred, conv_mode, conv_mode,
        )
    return conv_mode


def add_user_turn(conv: Conversation, text: str, image: bool = True) -> None:
    """Append a user turn and the empty reply slot; the first turn carries the image (unless there is
    none), on its own line first."""
    if image and not conv.messages:
        text = DEFAULT_IMAGE_TOKEN + "\n" + text
    conv.append_message(conv.roles[0], text)
    conv.append_message(conv.roles[1], None)


def chat_prompt(conv_mode: str, question: str, image: bool = True) -> str:
    """The generation prompt for one question, about one image or none (a single-turn chat)."""
    conv = get_conv_template(conv_mode)
    add_user_turn(conv, question, image)
    return conv.get_prompt()


def image_prompt(conv_mode: str, question: str) -> str:
    """The generation prompt for one question about one image (a single-turn chat)."""
    return chat_prompt(conv_mode, question)
