"""The LLM inside a Bunny model as the native transformers checkpoint it is built on: its native
config and weights, ready for the Llava export (`hf_llava`) and for llama.cpp's converter (`gguf`).

Every Bunny model class subclasses a native `*ForCausalLM` (bunny.model.language_model), so the
native class is the first transformers class in its MRO: PhiForCausalLM, Phi3ForCausalLM,
StableLmForCausalLM, Qwen2ForCausalLM, GraniteForCausalLM (MiniCPM) or LlamaForCausalLM. What
the engines read differently from transformers is mended here, without changing a logit:

- MiniCPM divides its logits by `logits_scaling`; the division is folded into an untied `lm_head`
  and `logits_scaling` becomes 1 (engines that ignore the field still compute the same logits);
- phi's native head has a bias (vLLM's phi loads one): a zero bias is written;
- the head is always written untied, so no engine has to know which of these LLMs tie it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Bunny-only config fields (tower, projector, training switches): not part of the LLM's config.
_MULTIMODAL_PREFIXES = ("mm_", "tokenizer_", "s2_")


def native_class(model: nn.Module) -> type:
    """The transformers `*ForCausalLM` class the Bunny model subclasses."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers.") and cls.__name__.endswith("ForCausalLM"):
            return cls
    raise TypeError(f"{type(model).__name__} is not built on a transformers *ForCausalLM class")


def native_config(model: nn.Module, vocab_size: int) -> Any:
    """The LLM's config as its native class, with `vocab_size` rows, an untied head, and (MiniCPM)
    `logits_scaling` 1 once `text_weights` has folded it into the head."""
    config_class = native_class(model).config_class
    known = set(config_class().to_dict()) - {"model_type", "architectures", "_name_or_path"}
    fields = {
        key: value for key, value in model.config.to_dict().items()
        if key in known and not key.startswith(_MULTIMODAL_PREFIXES)
    }
    fields.update(vocab_size=vocab_size, tie_word_embeddings=False, architectures=[native_class(model).__name__])
    if "logits_scaling" in fields:
        fields["logits_scaling"] = 1.0
    config = config_class.from_dict(fields)
    config.dtype = model.dtype
    return config


def _extend_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` `[V, ...]` with `rows - V` more rows, each the mean of the first V.

    For the head this makes the new column's logit the mean of the others' (`h . mean(W) =
    mean(h . W)`): never above the largest, so greedy decoding never picks it, whatever the
    engine; the generation config suppresses it for sampling.
    """
    extra = rows - weight.shape[0]
    if extra < 0:
        raise ValueError(f"cannot shrink {weight.shape[0]} vocabulary rows to {rows}")
    if extra == 0:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(extra, *weight.shape[1:])])


def text_weights(model: nn.Module, vocab_size: int) -> dict[str, torch.Tensor]:
    """The LLM's weights under its native names (`model.*`, `lm_head.*`), vocabulary rows extended
    to `vocab_size`, the head untied, MiniCPM's logit division folded into it, phi's zero bias."""
    state = {
        name: tensor for name, tensor in model.state_dict().items()
        if name.startswith(("model.", "lm_head.")) and not name.startswith(("model.mm_projector.", "model.vision_tower."))
    }
    embed = model.get_input_embeddings().weight.detach()
    head = model.get_output_embeddings().weight.detach()
    scaling = getattr(model.config, "logits_scaling", None)
    if scaling is not None and scaling != 1:
        head = (head.float() / scaling).to(head.dtype)
    embed_name = next(name for name, tensor in state.items() if tensor is embed or name.endswith("embed_tokens.weight"))
    state[embed_name] = _extend_rows(embed, vocab_size)
    state["lm_head.weight"] = _extend_rows(head, vocab_size).clone()
    if native_class(model).__name__ == "PhiForCausalLM":
        state["lm_head.bias"] = torch.zeros(vocab_size, dtype=head.dtype)
    return {name: tensor.contiguous() for name, tensor in state.items()}
