"""Bunny model classes. Importing this package registers the `bunny-*` model types with
`AutoConfig` and `AutoModelForCausalLM`, so saved checkpoints load through the Auto classes."""

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
from bunny.model.backbones import BACKBONES, MODEL_TYPES, get_backbone

__all__ = [
    "BACKBONES",
    "MODEL_TYPES",
    "get_backbone",
    "BunnyLlamaConfig",
    "BunnyLlamaForCausalLM",
    "BunnyMiniCPMConfig",
    "BunnyMiniCPMForCausalLM",
    "BunnyPhi3Config",
    "BunnyPhi3ForCausalLM",
    "BunnyPhiConfig",
    "BunnyPhiForCausalLM",
    "BunnyQwen2Config",
    "BunnyQwen2ForCausalLM",
    "BunnyStableLMConfig",
    "BunnyStableLMForCausalLM",
]
