"""What trains in each stage, and the state dicts each stage writes.

Stages (train.md §2.2): pretraining trains the projector only; full finetuning trains the LLM and
the projector; LoRA trains adapters plus the projector; `--unfreeze_vision_tower` adds the tower.
Saved pieces, with the original's key names:
- `mm_projector.bin`: `model.mm_projector.*`;
- `non_lora_trainables.bin`: every trainable non-LoRA parameter, PEFT-prefixed
  (`base_model.model.model.mm_projector.0.weight`, ...).
Under DeepSpeed ZeRO-3 parameters are sharded, so every rank joins the gather and rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable

import torch
from torch import nn

from bunny.model.builder import MULTIMODAL_KEYWORDS, exclude_multimodal_modules
from bunny.util.utils import atomic_write

logger = logging.getLogger(__name__)

PROJECTOR_KEYWORDS = ("mm_projector", "vision_resampler")


def find_all_linear_names(model: nn.Module) -> list[str]:
    """LoRA targets: the last name component of every Linear in the LLM (not the head, tower or projector)."""
    names = set()
    for name, module in model.named_modules():
        if any(keyword in name for keyword in MULTIMODAL_KEYWORDS):
            continue
        if isinstance(module, nn.Linear):
            names.add(name.split(".")[-1])
    names.discard("lm_head")
    return sorted(names)


def lora_target_modules(model: nn.Module) -> list[str] | str:
    """`find_all_linear_names`: a list when only the LLM is there (as in the original's adapter
    config), a regex excluding the tower and projector when they already exist (continued
    training of a merged model)."""
    names = find_all_linear_names(model)
    if not any(any(k in n for k in MULTIMODAL_KEYWORDS) for n, _ in model.named_modules()):
        return names
    return exclude_multimodal_modules(names)


def is_projector(name: str) -> bool:
    return any(keyword in name for keyword in PROJECTOR_KEYWORDS)


def _gathered(params: list[nn.Parameter]):
    """All ranks' shards of ZeRO-3 parameters, for the duration of the block (no-op otherwise)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters([p for p in params if hasattr(p, "ds_id")])
    return contextlib.nullcontext()


def cpu_state(named: Iterable[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
    named = list(named)
    with _gathered([p for _, p in named]):
        return {name: p.detach().cpu().clone() for name, p in named}


def projector_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.mm_projector.*` weights (what pretraining saves), names without any PEFT prefix."""
    return cpu_state((n, p) for n, p in _unwrapped(model).named_parameters() if is_projector(n))


def non_lora_trainables(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters outside the LoRA adapters, with the PEFT model's names."""
    return cpu_state((n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The Bunny model under a PEFT wrapper, if any."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def save_bin(state: dict[str, torch.Tensor], path: str) -> None:
    """`torch.save` to `path` through a temporary name, so a crash never leaves a partial file."""
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def describe_trainable(model: nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.2f}%)"
