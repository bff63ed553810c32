"""bfloat16 weights with float32 master copies in the optimiser: `--bf16 True` on the CPU.

Under DeepSpeed (the original's scripts) `--bf16 True` runs the model in bfloat16: weights,
activations and gradients. The optimiser keeps a float32 master copy of every trainable weight
with its state, steps the copy and writes it back rounded. Without DeepSpeed, transformers' Trainer
instead keeps float32 weights and runs the forward under autocast, which casts the weights and
activations at every step; on a CPU, master weights made a step 1.09x as fast (bench/train.py,
median of seven runs). So training on the CPU without DeepSpeed casts the model to bfloat16 and
builds its optimiser with `with_master_weights`; on a GPU nothing changes.

As with ZeRO-2, gradients are accumulated in bfloat16 across `--gradient_accumulation_steps` and
clipped there; each step upcasts them to the masters. The masters are saved in the optimiser's
state dict (`master_weights`), so a resumed run continues from them rather than from the rounded
weights in the checkpoint. A state saved without them (a GPU or float32 run's) starts the masters
from the loaded weights, with a warning.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

logger = logging.getLogger(__name__)

MASTER_KEY = "master_weights"


def with_master_weights(
    optimizer_cls: Callable[..., torch.optim.Optimizer], groups: Sequence[dict[str, Any]], **kwargs: Any
) -> torch.optim.Optimizer:
    """`optimizer_cls(groups, **kwargs)` built over float32 copies of the groups' lower-precision
    parameters (float32 ones are stepped directly). Before each step the parameters' gradients are
    upcast onto the copies; after it the copies are written back to the parameters."""
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (model parameter, its float32 master)
    master_groups = []
    for group in groups:
        masters = []
        for param in group["params"]:
            if param.dtype == torch.float32:
                masters.append(param)
                continue
            master = param.detach().to(torch.float32, copy=True)
            pairs.append((param, master))
            masters.append(master)
        master_groups.append({**group, "params": masters})
    optimizer = optimizer_cls(master_groups, **kwargs)

    def gradients_in(*_: Any) -> None:
        for param, master in pairs:
            master.grad = None if param.grad is None else param.grad.to(torch.float32)

    @torch.no_grad()
    def weights_out(*_: Any) -> None:
        for param, master in pairs:
            param.copy_(master)
            master.grad = None

    def save_masters(_: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        return {**state, MASTER_KEY: [master for _, master in pairs]}

    @torch.no_grad()
    def load_masters(_: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        state = dict(state)
        saved = state.pop(MASTER_KEY, None)
        if saved is None:
            # e.g. a checkpoint of a GPU or float32 run: its weights, already loaded, are all there is
            logger.warning(
                "the optimiser state has no float32 master weights (saved by a run that trained without "
                "them); the masters start from the checkpoint's weights as loaded into this bfloat16 model"
            )
            for param, master in pairs:
                master.copy_(param)
            return state
        if len(saved) != len(pairs) or any(s.shape != m.shape for s, (_, m) in zip(saved, pairs)):
            raise ValueError(
                f"the optimiser state's {len(saved)} master weights do not match this model's "
                f"{len(pairs)} trainable bfloat16 parameters"
            )
        for tensor, (param, master) in zip(saved, pairs):
            master.copy_(tensor)
            param.copy_(master)
        return state

    optimizer.register_step_pre_hook(gradients_in)
    optimizer.register_step_post_hook(weights_out)
    optimizer.register_state_dict_post_hook(save_masters)
    optimizer.register_load_state_dict_pre_hook(load_masters)
    return optimizer
