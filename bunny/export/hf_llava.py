"""A Bunny model as a native transformers Llava checkpoint, which `AutoModelForImageTextToText` and
`AutoProcessor` load with no `bunny` import and no remote code, and which vLLM, SGLang, TGI and
lmms-eval serve as `LlavaForConditionalGeneration`.

Bunny's arithmetic is Llava's: the tower read at layer -2 (`vision_feature_layer=-2`; all tokens
of SigLIP, `full`; CLIP without its class token, `default`), a Linear-GELU-Linear projector
(`multi_modal_projector.linear_1/2`), and the LLM (`text_config`, bunny.export.text). The files
follow the hub's llava-hf models: `vision_tower.vision_model.*`, `multi_modal_projector.*`,
`language_model.model.*`, `language_model.lm_head.*`.

The tokenizer gains `<image>` as a new id V (the LLM had V); the processor expands it into the
tower's feature count and pads pictures to a square of colour `int(mean*255)` as Bunny's `pad` mode
does, with the PIL backend (`LlavaImageProcessorPil`), which gives Bunny's pixels exactly; the
chat template renders `Conversation.get_prompt()` exactly. What Llava cannot express is refused
(`check_exportable`) before anything is written.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn
from tokenizers import AddedToken
from transformers import LlavaConfig, LlavaProcessor
from transformers.models.llava import LlavaImageProcessorPil

from bunny.constants import DEFAULT_IMAGE_TOKEN
from bunny.conversation import SeparatorStyle, get_conv_template
from bunny.export.text import native_config, text_weights
from bunny.model.vision_tower import vision_tower_type

SUPPORTED_PROJECTOR = "mlp2x_gelu"
# tower type -> (Llava's feature select strategy, tokens the tower puts before its patches)
_TOWERS = {"siglip": ("full", 0), "clip": ("default", 1)}


class NotExportable(ValueError):
    """The model has a part the target format has no equivalent for; the message names it."""


def check_exportable(config: Any, target: str = "a transformers Llava model") -> None:
    """Refuse, from the Bunny config alone (before any weight is read), what `target` cannot compute
    as Bunny does: no tower, S2 or EVA-CLIP towers, projectors other than `mlp2x_gelu`."""
    alternative = "serve it with bunny's own workers (python -m bunny.serve.model_worker) instead"
    name = getattr(config, "mm_vision_tower", None)
    if not name:
        raise NotExportable(f"the model has no vision tower (no mm_vision_tower in its config): nothing to export as {target}")
    if getattr(config, "use_s2", False):
        raise NotExportable(
            f"the model's tower is multi-scale S2 (use_s2, scales {getattr(config, 's2_scales', None)}), which "
            f"{target} cannot express; {alternative}"
        )
    kind = vision_tower_type(name, getattr(config, "mm_vision_tower_type", None))
    if kind not in _TOWERS:
        raise NotExportable(f"the model's vision tower {name!r} is {kind}, which has no native equivalent in {target}; {alternative}")
    projector = getattr(config, "mm_projector_type", "linear")
    if projector != SUPPORTED_PROJECTOR:
        raise NotExportable(
            f"the model's projector is {projector!r}; {target} has only the two-layer GELU MLP ({SUPPORTED_PROJECTOR!r}); "
            f"{alternative}"
        )


def feature_select(config: Any) -> tuple[str, int]:
    """(Llava `vision_feature_select_strategy`, the processor's `num_additional_image_tokens`)."""
    return _TOWERS[vision_tower_type(config.mm_vision_tower, getattr(config, "mm_vision_tower_type", None))]


# -- chat template -------------------------------------------------------------------------------


def chat_template(template_name: str) -> str:
    """A Jinja chat template that renders Bunny's template `template_name` as `get_prompt()` does.

    Messages are `{"role": "system" | "user" | "assistant", "content": str | [parts]}`; a part
    `{"type": "image"}` becomes `<image>\\n` before the message's text (Bunny puts the placeholder
    first, on its own line), `{"type": "text", "text": ...}` the text. A system message replaces the
    template's system prompt; `add_generation_prompt` opens the assistant's turn.
    """
    conv = get_conv_template(template_name)
    if conv.sep_style != SeparatorStyle.TWO:
        raise ValueError(f"template {template_name!r} has no chat turns (pretraining's 'plain'); pick a chat template")
    user, assistant = conv.roles
    lit = json.dumps  # Jinja reads JSON string literals as the same strings
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
        f"{{%- else -%}}{{%- set system = {lit(conv.system)} -%}}{{%- set turns = messages -%}}{{%- endif -%}}"
        f"{{{{- system + {lit(conv.sep)} -}}}}"
        "{%- for message in turns -%}"
        "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
        "{%- else -%}{%- set parts = namespace(images='', text='') -%}"
        "{%- for part in message['content'] -%}"
        f"{{%- if part['type'] == 'image' -%}}{{%- set parts.images = parts.images + {lit(DEFAULT_IMAGE_TOKEN + chr(10))} -%}}"
        "{%- elif part['type'] == 'text' -%}{%- set parts.text = parts.text + part['text'] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set text = parts.images + (parts.text | trim if parts.images else parts.text) -%}{%- endif -%}"
        f"{{%- if message['role'] == 'user' -%}}{{{{- {lit(user + ': ')} + text + {lit(conv.sep)} -}}}}"
        f"{{%- elif message['role'] == 'assistant' -%}}{{{{- {lit(assistant + ': ')} + text + {lit(conv.sep2)} -}}}}"
        "{%- else -%}{{- raise_exception('roles are system (first message only), user and assistant, not ' + message['role']) -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {lit(assistant + ':')} -}}}}{{%- endif -%}}"
    )


# -- tokenizer and processor -----------------------------------------------------------------------


def check_portable_tokenizer(tokenizer: Any) -> None:
    """Engines load tokenizers without remote code: refuse one that needs it (a Python tokenizer
    class from the checkpoint's repository) rather than write a directory they cannot read."""
    module = type(tokenizer).__module__
    if not module.startswith("transformers.") or not getattr(tokenizer, "is_fast", False):
        raise NotExportable(
            f"the tokenizer is {type(tokenizer).__name__} ({module}), not a `tokenizers` fast tokenizer: engines "
            "load tokenizers without remote code; convert it to a tokenizer.json first (or pick a checkpoint that has one)"
        )


def add_image_token(tokenizer: Any) -> int:
    """Add `<image>` as a special token with a new id (the vocabulary's next); returns the id."""
    if DEFAULT_IMAGE_TOKEN in tokenizer.get_vocab():
        raise NotExportable(
            f"the tokenizer already has a {DEFAULT_IMAGE_TOKEN!r} token (id {tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)}), "
            "which Bunny reads as text; Llava needs it as the image placeholder"
        )
    before = len(tokenizer)
    tokenizer.add_tokens([AddedToken(DEFAULT_IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    if image_id != before or len(tokenizer) != before + 1:
        raise RuntimeError(f"adding {DEFAULT_IMAGE_TOKEN} gave id {image_id}, not the new row {before}")
    return image_id


def image_processor(model: nn.Module) -> LlavaImageProcessorPil:
    """The tower's preprocessing as Llava's PIL image processor, padding to a square in `pad` mode."""
    source = model.get_vision_tower().image_processor
    crop = getattr(source, "crop_size", None)
    return LlavaImageProcessorPil(
        do_resize=source.do_resize,
        size={k: v for k, v in dict(source.size).items() if v is not None},
        resample=source.resample,
        do_center_crop=bool(source.do_center_crop),
        crop_size={k: v for k, v in dict(crop).items() if v is not None} if crop else None,
        do_rescale=source.do_rescale,
        rescale_factor=source.rescale_factor,
        do_normalize=source.do_normalize,
        image_mean=list(source.image_mean),
        image_std=list(source.image_std),
        do_convert_rgb=True,
        do_pad=getattr(model.config, "image_aspect_ratio", None) == "pad",
    )


def build_processor(model: nn.Module, tokenizer: Any, template_name: str) -> LlavaProcessor:
    """Llava's processor: `tokenizer` (which has `<image>`), the tower's image processor, the
    placeholder expanded to the number of image features the model splices."""
    strategy, additional = feature_select(model.config)
    processor = LlavaProcessor(
        image_processor=image_processor(model),
        tokenizer=tokenizer,
        patch_size=model.get_vision_tower().config.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=additional,
        chat_template=chat_template(template_name),
    )
    tokenizer.chat_template = processor.chat_template
    return processor


# -- config and weights --------------------------------------------------------------------------


def llava_config(model: nn.Module, image_token_id: int) -> LlavaConfig:
    """The Llava config of `model`, its vocabulary one row longer (`image_token_id` = V)."""
    tower = model.get_vision_tower()
    strategy, _ = feature_select(model.config)
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=native_config(model, image_token_id + 1).to_dict(),
        image_token_index=image_token_id,
        image_seq_length=model.image_token_count,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = model.dtype
    return config


def llava_weights(model: nn.Module, vocab_size: int) -> dict[str, torch.Tensor]:
    """Every weight under the llava-hf hub names."""
    state = {f"language_model.{name}": tensor for name, tensor in text_weights(model, vocab_size).items()}
    projector = model.get_model().mm_projector  # Sequential(Linear, GELU, Linear)
    for index, name in ((0, "linear_1"), (2, "linear_2")):
        state[f"multi_modal_projector.{name}.weight"] = projector[index].weight.detach().contiguous()
        state[f"multi_modal_projector.{name}.bias"] = projector[index].bias.detach().contiguous()
    tower = model.get_vision_tower().vision_tower  # VisionModelSlot: keys `vision_model.*`, as on the hub
    state.update({f"vision_tower.{name}": tensor.detach().contiguous() for name, tensor in tower.state_dict().items()})
    return state
