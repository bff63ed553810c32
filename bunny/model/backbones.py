"""The seven LLM back-ends, keyed by the model type string users pass (`--model-type`).

One row per model type: the Bunny config/model classes (native transformers architectures), the
`model_type` strings of the base LLMs it is trained from, the conversation template it was trained
with, the tokenizer quirks the original applied, and the released models whose names don't say
their LLM. Everything else that differs between model types reads it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bunny.model.language_model import (
    BunnyLlamaConfig,
    BunnyLlamaForCausalLM,
    BunnyMiniCPMConfig,
    BunnyMiniCPMForCausalLM,
    BunnyPhi3Config,
    BunnyPhi3ForCausalLM,
    BunnyPhiConfig,
    BunnyPhiForCausalLM,
    BunnyQwen2Config,
    BunnyQwen2ForCausalLM,
    BunnyStableLMConfig,
    BunnyStableLMForCausalLM,
)


@dataclass(frozen=True)
class Backbone:
    config_class: type
    model_class: type
    base_model_types: tuple[str, ...]  # `model_type` of the upstream LLM checkpoints it starts from
    template: str  # conversation template for finetuning and chat
    eos_token: str | None = None  # eos forced by token text (llama-3: <|end_of_text|>, id 128001)
    tokenizer_trust_remote_code: bool = False
    # training writes the tokenizer's bos/eos ids into the model config (the original did for phi and llama-3)
    special_ids_from_tokenizer: bool = False
    # released checkpoints whose names don't contain the model type (the web page picks their template by name)
    released_names: tuple[str, ...] = ()


BACKBONES: dict[str, Backbone] = {
    "phi-1.5": Backbone(BunnyPhiConfig, BunnyPhiForCausalLM, ("phi",), "bunny", special_ids_from_tokenizer=True),
    "phi-2": Backbone(BunnyPhiConfig, BunnyPhiForCausalLM, ("phi",), "bunny", special_ids_from_tokenizer=True),
    "phi-3": Backbone(
        BunnyPhi3Config, BunnyPhi3ForCausalLM, ("phi3",), "phi3",
        released_names=("Bunny-v1_0-4B", "Bunny-v1.0-4B", "Bunny-v1_1-4B", "Bunny-v1.1-4B"),
    ),
    "stablelm-2": Backbone(
        BunnyStableLMConfig, BunnyStableLMForCausalLM, ("stablelm", "stablelm_epoch"), "bunny",
        tokenizer_trust_remote_code=True,
    ),
    "qwen1.5-1.8b": Backbone(BunnyQwen2Config, BunnyQwen2ForCausalLM, ("qwen2",), "bunny"),
    "minicpm": Backbone(
        BunnyMiniCPMConfig, BunnyMiniCPMForCausalLM, ("minicpm",), "minicpm",
        released_names=("Bunny-v1_0-3B-zh", "Bunny-v1.0-3B-zh"),
    ),
    "llama3-8b": Backbone(
        BunnyLlamaConfig, BunnyLlamaForCausalLM, ("llama",), "llama", eos_token="<|end_of_text|>",
        special_ids_from_tokenizer=True,
        released_names=("Bunny-Llama-3-8B-V", "Bunny-v1_1-Llama-3-8B-V", "Bunny-v1.1-Llama-3-8B-V"),
    ),
}

MODEL_TYPES = tuple(BACKBONES)


def get_backbone(model_type: str) -> Backbone:
    try:
        return BACKBONES[model_type]
    except KeyError:
        raise ValueError(f"Unknown Model Type {model_type!r}; valid model types: {', '.join(MODEL_TYPES)}") from None


def templates_by_model_type() -> str:
    """Which template each model type was trained with, for messages: `phi-1.5/phi-2/...: bunny, ...`."""
    groups: dict[str, list[str]] = {}
    for name, backbone in BACKBONES.items():
        groups.setdefault(backbone.template, []).append(name)
    return ", ".join(f"{'/'.join(names)}: {template}" for template, names in groups.items())


def template_for_model_name(model_name: str) -> str:
    """The template of a served model known only by its name (the original web page's rule): a
    model type in the name (`phi-3`, `minicpm`, `llama3-8b`) or a released model's name; else `bunny`."""
    lowered = model_name.lower()
    for name, backbone in BACKBONES.items():
        if backbone.template != "bunny" and (name in lowered or model_name in backbone.released_names):
            return backbone.template
    return "bunny"


def _model_types_reading(config_model_type: str) -> list[str]:
    """The `--model-type` values whose Bunny or base LLM checkpoints carry `config_model_type`."""
    return [
        name for name, backbone in BACKBONES.items()
        if config_model_type == backbone.config_class.model_type or config_model_type in backbone.base_model_types
    ]


def check_checkpoint_type(path: str, model_type: str, config_dict: dict[str, Any] | None = None) -> None:
    """Refuse to read the checkpoint at `path` as `model_type` when its config names another LLM.

    Loading it anyway would leave the weights the other architecture lacks at random (the model
    chats garbage). `config_dict` is the checkpoint's config.json, read here when not given.
    """
    backbone = get_backbone(model_type)
    if config_dict is None:
        from transformers import PreTrainedConfig

        config_dict, _ = PreTrainedConfig.get_config_dict(path)
    found = config_dict.get("model_type")
    expected = (backbone.config_class.model_type, *backbone.base_model_types)
    if found is None or found in expected:
        return
    readers = _model_types_reading(found)
    hint = f"pass --model-type {' or '.join(readers)}" if readers else "it is not an LLM Bunny is built on"
    raise ValueError(
        f"{path} holds a {found!r} checkpoint (model_type in its config.json), but --model-type {model_type} reads "
        f"{' or '.join(repr(t) for t in expected)} checkpoints: {hint}"
    )
