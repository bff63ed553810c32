"""Projectors from vision features `[B, N, mm_hidden_size]` to LLM embeddings `[B, N', hidden_size]`.

`build_vision_projector(config)` reads `config.mm_projector_type`. Parameter names are the original
ones (e.g. `0.weight`/`2.weight` for `mlp2x_gelu`), so `model.mm_projector.*` keys in released
checkpoints and `mm_projector.bin` files load unchanged. An unknown type string is an error.
"""

from __future__ import annotations

import functools
import math
import re
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
    # [B, N, C] -> [B, C, h, h]
    b, n, c = x.shape
    h = int(math.sqrt(n))
    if h * h != n:
        raise ValueError(f"this projector needs a square token grid, got {n} tokens")
    return x.transpose(1, 2).reshape(b, c, h, h)


def _grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    # [B, C, h, w] -> [B, h*w, C]
    return x.flatten(2).transpose(1, 2)


class IdentityMap(nn.Module):
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    @property
    def config(self) -> dict[str, str]:
        return {"mm_projector_type": "identity"}


class SPP(nn.Module):
    """Linear layers around a 2x2 average pool; `variant` (1, 2 or 3) sets the order."""

    def __init__(self, mm_hidden_size: int, hidden_size: int, variant: int) -> None:
        super().__init__()
        self.variant = variant
        # All three layers exist in every variant, as in released checkpoints.
        self.linear_0 = nn.Linear(mm_hidden_size, mm_hidden_size)
        self.linear_1 = nn.Linear(mm_hidden_size, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)
        self.pooling = nn.AvgPool2d(kernel_size=2)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return _grid_to_tokens(self.pooling(_tokens_to_grid(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == 1:
            return self.linear_2(self._pool(self.linear_1(x)))
        if self.variant == 2:
            return self._pool(self.linear_2(self.linear_1(x)))
        return self.linear_2(self.linear_1(self._pool(self.linear_0(x))))


def _make_divisible(value: float, divisor: int = 8) -> int:
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return scale * x


class InvertedResidual(nn.Module):
    """MobileNetV3 inverted residual without expansion (expanded == in == out channels): depthwise
    3x3 conv + LayerNorm + Hardswish, squeeze-excite, 1x1 conv + LayerNorm; residual when stride 1.

    The module tree (`block.0.0`, `block.0.1`, `block.1.fc1`, `block.2.0`, ...) matches the
    torchvision block the original used, so LDP checkpoints load unchanged.
    """

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.use_residual = stride == 1
        self.block = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False),
                LayerNorm2d(channels),
                nn.Hardswish(),
            ),
            SqueezeExcitation(channels, _make_divisible(channels // 4, 8)),
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), LayerNorm2d(channels)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class LDPBlock(nn.Module):
    def __init__(self, mm_hidden_size: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Identity(), nn.Linear(mm_hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.mb_block = nn.Sequential(nn.Identity(), InvertedResidual(hidden_size, 1), InvertedResidual(hidden_size, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _grid_to_tokens(self.mb_block(_tokens_to_grid(self.mlp(x))))


class LDPNetProjector(nn.Module):
    """MobileVLM's lightweight downsample projector: N tokens -> ceil(sqrt(N)/2)^2."""

    def __init__(self, mm_hidden_size: int, hidden_size: int) -> None:
        super().__init__()
        self.model = LDPBlock(mm_hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class TokenGroupProjector(nn.Module):
    """Groups 4 consecutive tokens into one: `interleave` mixes their channels (`vanilla`), otherwise
    they are concatenated (`minigpt`)."""

    def __init__(self, mm_hidden_size: int, hidden_size: int, interleave: bool) -> None:
        super().__init__()
        self.interleave = interleave
        self.linear = nn.Linear(4 * mm_hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        if n % 4 != 0:
            raise ValueError(f"num_tokens must be divisible by 4, got {n}")
        if self.interleave:
            x = x.view(b, n // 4, 4, c).permute(0, 1, 3, 2).reshape(b, n // 4, 4 * c)
        else:
            x = x.reshape(b, n // 4, 4 * c)
        return self.linear(x)


def _mlp_gelu(depth: int, mm_hidden_size: int, hidden_size: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
    return nn.Sequential(*layers)


PROJECTORS = {
    "linear": lambda m, h: nn.Linear(m, h),
    "ldp": LDPNetProjector,
    "vanilla": lambda m, h: TokenGroupProjector(m, h, interleave=True),
    "minigpt": lambda m, h: TokenGroupProjector(m, h, interleave=False),
    "identity": lambda m, h: IdentityMap(),
}
_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")
_SPP = re.compile(r"^spp(?!.*v[123].*v[123]).*v([123])")

PROJECTOR_TYPES_HELP = "linear, mlp<N>x_gelu (e.g. mlp2x_gelu), spp_v1, spp_v2, spp_v3, ldp, vanilla, minigpt, identity"


def build_vision_projector(config: Any) -> nn.Module:
    projector_type = getattr(config, "mm_projector_type", "linear")
    mm_hidden_size, hidden_size = config.mm_hidden_size, config.hidden_size
    if projector_type in PROJECTORS:
        return PROJECTORS[projector_type](mm_hidden_size, hidden_size)
    if match := _MLP_GELU.match(projector_type):
        depth = int(match.group(1))
        if depth >= 1:
            return _mlp_gelu(depth, mm_hidden_size, hidden_size)
    if match := _SPP.match(projector_type):
        return SPP(mm_hidden_size, hidden_size, variant=int(match.group(1)))
    raise ValueError(f"Unknown projector type: {projector_type!r}; valid types: {PROJECTOR_TYPES_HELP}")


@functools.lru_cache(maxsize=None)
def projected_token_count(projector_type: str, num_patches: int) -> int:
    """How many embedding rows one image becomes: the length of what a `projector_type` projector
    makes of `num_patches` tower features, i.e. what the splice inserts per `<image>`.

    Found by running a narrow projector of that type (the widths do not change the count), so it
    can't disagree with the real one: `ldp` gives ceil(sqrt(N)/2)^2, `spp_v*` floor(sqrt(N)/2)^2,
    `vanilla`/`minigpt` N/4, the others N.
    """
    probe = build_vision_projector(SimpleNamespace(mm_projector_type=projector_type, mm_hidden_size=4, hidden_size=4))
    with torch.no_grad():
        return probe(torch.zeros(1, num_patches, 4)).shape[1]
