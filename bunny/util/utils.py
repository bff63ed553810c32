"""Small runtime helpers shared by the command-line tools."""

from __future__ import annotations

import torch


def disable_torch_init() -> None:
    """Skip the random initialisation of Linear and LayerNorm layers (weights are loaded right after)."""
    setattr(torch.nn.Linear, "reset_parameters", lambda self: None)
    setattr(torch.nn.LayerNorm, "reset_parameters", lambda self: None)
