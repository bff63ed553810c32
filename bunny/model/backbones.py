"""The seven LLM back-ends, keyed by the model type string users pass (`--model-type`).

One row per model type: the Bunny config/model classes (native transformers architectures), the
conversation template it was trained with, and the tokenizer quirks the original applied.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    template: str  # conversation template for finetuning and chat
    eos_token: str | None = None  # eos forced by token text (llama-3: <|end_of_text|>, id 128001)
    tokenizer_trust_remote_code: bool = False


BACKBONES: dict[str, Backbone] = {
    "phi-1.5": Backbone(BunnyPhiConfig, BunnyPhiForCausalLM, "bunny"),
    "phi-2": Backbone(BunnyPhiConfig, BunnyPhiForCausalLM, "bunny"),
    "phi-3": Backbone(BunnyPhi3Config, BunnyPhi3ForCausalLM, "phi3"),
    "stablelm-2": Backbone(BunnyStableLMConfig, BunnyStableLMForCausalLM, "bunny", tokenizer_trust_remote_code=True),
    "qwen1.5-1.8b": Backbone(BunnyQwen2Config, BunnyQwen2ForCausalLM, "bunny"),
    "minicpm": Backbone(BunnyMiniCPMConfig, BunnyMiniCPMForCausalLM, "minicpm"),
    "llama3-8b": Backbone(BunnyLlamaConfig, BunnyLlamaForCausalLM, "llama", eos_token="<|end_of_text|>"),
}

MODEL_TYPES = tuple(BACKBONES)


def get_backbone(model_type: str) -> Backbone:
    try:
        return BACKBONES[model_type]
    except KeyError:
        raise ValueError(f"Unknown Model Type {model_type!r}; valid model types: {', '.join(MODEL_TYPES)}") from None
