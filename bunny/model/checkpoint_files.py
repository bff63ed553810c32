"""Reading tensor files that Bunny (ours or the original) wrote: safetensors, or legacy torch
pickles, which are only ever loaded with `weights_only=True`."""

from __future__ import annotations

import glob
import os
from typing import Any, Sequence

import torch


class MissingWeightsError(ValueError):
    """A checkpoint lacks weights the model needs; loading on would leave them at random."""

    def __init__(self, checkpoint: str, config: Any, missing: Sequence[str]) -> None:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        kind = getattr(config, "model_type", None) or type(config).__name__
        tied = getattr(config, "tie_word_embeddings", None)
        hint = (
            " The head is not tied to the embeddings (tie_word_embeddings is false in the config), so it must be stored."
            if any(k.startswith("lm_head.") for k in missing) and tied is False
            else ""
        )
        super().__init__(
            f"{checkpoint} lacks {len(missing)} weight(s) of this {kind} model, which would be "
            f"left at random: {shown}.{hint} Check that the checkpoint is of the kind being loaded (--model-type) "
            "and that its weight files are complete."
        )
        self.missing = list(missing)


def load_state_file(path: str) -> dict[str, torch.Tensor]:
    """One tensor file: `*.safetensors`, or a legacy `*.bin` torch pickle."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def tensor_names(path: str) -> list[str]:
    """The tensor names in one file, without reading a safetensors file's data."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            return list(f.keys())
    return list(load_state_file(path))


def load_projector_weights(projector: torch.nn.Module, path: str) -> None:
    """Load an `mm_projector.bin` (keys `model.mm_projector.*`, any prefix before `mm_projector.`)
    into `projector`, every weight required, cast to the projector's dtype."""
    weights = {k.split("mm_projector.", 1)[1]: v for k, v in load_state_file(path).items() if "mm_projector." in k}
    if not weights:
        raise ValueError(f"{path} holds no mm_projector weights")
    dtype = next(projector.parameters()).dtype
    projector.load_state_dict({k: v.to(dtype) for k, v in weights.items()})


def read_checkpoint_tensors(checkpoint: str, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose names start with `prefix` from a checkpoint directory or hub id: its
    `*.safetensors` files (read key by key), else its legacy `*.bin` files."""
    from safetensors import safe_open

    directory = checkpoint
    if not os.path.isdir(directory):
        from huggingface_hub import snapshot_download

        directory = snapshot_download(checkpoint, allow_patterns=["*.safetensors", "*.bin"])
    state: dict[str, torch.Tensor] = {}
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    for path in files:
        with safe_open(path, framework="pt") as f:
            state.update({key: f.get_tensor(key) for key in f.keys() if key.startswith(prefix)})
    if not files:
        for path in sorted(glob.glob(os.path.join(directory, "*.bin"))):
            if os.path.basename(path) != "training_args.bin":
                state.update({k: v for k, v in load_state_file(path).items() if k.startswith(prefix)})
    return state
