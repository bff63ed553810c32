"""EVA-CLIP vision tower (EVA02-CLIP-L-14-336: 576 tokens x 1024, class token dropped).

`mm_vision_tower` names a torch checkpoint FILE such as `EVA02_CLIP_L_336_psz14_s6B.pt` (a whole
EVA-CLIP model; only its `visual.*` weights are used). The network is timm's `Eva` configured as
EVA02-CLIP-L: SwiGLU MLP with a sub-LayerNorm, separate q/k/v projections with q and v biases and
an inner attention LayerNorm, 2-D RoPE on the patch tokens (reference grid 16, rescaled to the
24 x 24 grid), a learned absolute position embedding for CLS + 576 patches. Bunny's features are
the output of every block but the last, before the final norm, without the CLS token.

The tower's state dict uses EVA-CLIP's own key names under `vision_tower.model.`, as Bunny
checkpoints do (`model.vision_tower.vision_tower.model.blocks.0.attn.q_bias`, ...), although the
modules inside are timm's; `EvaEncoderSlot` translates at the state-dict boundary.

Hyper-parameters default to EVA02-CLIP-L-14-336. A JSON file next to the checkpoint with the same
stem (`foo.pt` -> `foo.json`) overrides them; it is how tests build tiny towers. It is either flat
or an EVA-CLIP model config (`{"embed_dim": ..., "vision_cfg": {...}}`), with these fields:

    image_size       input side in pixels                          (336)
    patch_size       patch side in pixels                          (14)
    width            token width, the tower's hidden_size          (1024)
    depth | layers   number of blocks                              (24)
    head_width       channels per attention head                   (64)
    heads            number of heads; alternative to head_width
    mlp_ratio        SwiGLU hidden = int(width * mlp_ratio)        (2.6667 -> 2730)
    rope_ref_grid | pt_hw_seq_len
                     grid side the RoPE positions are scaled to    (16)
    embed_dim        output width of the (unused) CLIP head        (768)
    layer_norm_eps   epsilon of every LayerNorm                    (1e-6)

EVA-CLIP's architecture switches (`rope`, `subln`, ...) are accepted when they describe this
network; implementation switches (`xattn`, `fusedLN`, ...) are ignored: neither xformers nor apex
is needed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from functools import partial
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers.image_processing_utils import BatchFeature

from bunny.model.checkpoint_files import MissingWeightsError
from bunny.model.vision_tower.base import VisionTower

logger = logging.getLogger(__name__)

# OpenAI CLIP statistics, which EVA-CLIP was trained with; Bunny pads with int(mean * 255).
EVA_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
EVA_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# -- hyper-parameters ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvaClipVisionConfig:
    """EVA02-CLIP vision hyper-parameters; the defaults are EVA02-CLIP-L-14-336's."""

    image_size: int = 336
    patch_size: int = 14
    width: int = 1024
    depth: int = 24
    head_width: int = 64
    mlp_ratio: float = 2.6667
    rope_ref_grid: int = 16
    embed_dim: int = 768
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.head_width:
            raise ValueError(f"width {self.width} is not a multiple of head_width {self.head_width}")
        if self.head_width % 4:
            # 2-D RoPE gives each axis half the head channels, rotated in pairs.
            raise ValueError(f"head_width must be a multiple of 4 for 2-D RoPE, got {self.head_width}")
        if self.depth < 2:
            raise ValueError(f"depth must be at least 2 (Bunny drops the last block), got {self.depth}")

    @property
    def hidden_size(self) -> int:
        return self.width

    @property
    def num_heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "EvaClipVisionConfig":
        with open(path) as f:
            data = json.load(f)
        if "vision_cfg" in data:  # an EVA-CLIP model config: the tower's part plus the head width
            fields = dict(data["vision_cfg"])
            if "embed_dim" in data:
                fields["embed_dim"] = data["embed_dim"]
        else:
            fields = dict(data)
        try:
            return cls(**_config_kwargs(fields))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


_FIELD_ALIASES = {"layers": "depth", "pt_hw_seq_len": "rope_ref_grid"}
# EVA-CLIP switches that select the architecture built here; any other value is another network.
_EVA02_SWITCHES: dict[str, Any] = {
    "rope": True, "intp_freq": True, "naiveswiglu": True, "subln": True, "qkv_bias": True,
    "postnorm": False, "global_average_pool": False, "ls_init_value": None,
}
# Implementation choices of the original (xformers attention, apex LayerNorm) and training-only settings.
_IGNORED_FIELDS = {"eva_model_name", "xattn", "fusedLN", "drop_path_rate", "patch_dropout", "grad_checkpointing"}


def _config_kwargs(fields: Mapping[str, Any]) -> dict[str, Any]:
    """JSON fields -> `EvaClipVisionConfig` arguments; unknown fields and other architectures are errors."""
    names = {f.name for f in dataclasses.fields(EvaClipVisionConfig)}
    kwargs: dict[str, Any] = {}
    unknown = []
    for key, value in fields.items():
        key = _FIELD_ALIASES.get(key, key)
        if key in names:
            kwargs[key] = value
        elif key in _EVA02_SWITCHES:
            if value != _EVA02_SWITCHES[key]:
                raise ValueError(f"{key}={value!r} describes another network than EVA02-CLIP ({key}={_EVA02_SWITCHES[key]!r})")
        elif key not in _IGNORED_FIELDS and key != "heads":
            unknown.append(key)
    if unknown:
        known = sorted(names | set(_FIELD_ALIASES) | {"heads"})
        raise ValueError(f"unknown EVA-CLIP config fields {sorted(unknown)}; known: {known}")
    if "heads" in fields:
        width = kwargs.get("width", EvaClipVisionConfig.width)
        heads = fields["heads"]
        head_width = kwargs.setdefault("head_width", width // heads)
        if head_width * heads != width:
            raise ValueError(f"heads={heads} and head_width={head_width} do not make width={width}")
    return kwargs


def config_path_for(checkpoint: str | os.PathLike) -> str:
    """`foo.pt` -> `foo.json`: where a checkpoint's optional hyper-parameter overrides live."""
    return os.path.splitext(os.fspath(checkpoint))[0] + ".json"


# -- network ---------------------------------------------------------------------------------------
def build_eva_network(config: EvaClipVisionConfig) -> nn.Module:
    """timm's `Eva` laid out as EVA02-CLIP (as timm's `eva02_large_patch14_clip_336` for the defaults),
    randomly initialised, on the current default device."""
    from timm.layers import LayerNorm
    from timm.models.eva import Eva

    grid = config.rope_ref_grid
    return Eva(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=True,  # q and v only: timm's separate k_proj has no bias, as in EVA
        qkv_fused=False,  # separate q_proj / k_proj / v_proj, as in the checkpoints
        swiglu_mlp=True,
        scale_mlp=True,  # the SwiGLU sub-LayerNorm (ffn_ln)
        scale_attn_inner=True,  # the attention sub-LayerNorm (inner_attn_ln)
        use_rot_pos_emb=True,  # 2-D RoPE on the tokens after CLS, positions rescaled to ref_feat_shape
        ref_feat_shape=(grid, grid),
        norm_layer=partial(LayerNorm, eps=config.layer_norm_eps),
        global_pool="token",  # keeps the final `norm` (not an fc_norm), as EVA-CLIP's visual tower
        num_classes=config.embed_dim,  # the CLIP projection `head`, kept only for the key layout
    )


# Checkpoint keys: EVA-CLIP names (what checkpoints hold) vs timm names (what the network has). Only
# some block sub-modules are named differently; everything else (patch_embed, cls_token, pos_embed,
# norm1/norm2, q/k/v_proj weights, proj, norm, head) is the same in both.
_EVA_TO_TIMM_IN_BLOCK = {
    "attn.q_bias": "attn.q_proj.bias",
    "attn.v_bias": "attn.v_proj.bias",
    **{f"attn.inner_attn_ln.{p}": f"attn.norm.{p}" for p in ("weight", "bias")},
    **{f"mlp.ffn_ln.{p}": f"mlp.norm.{p}" for p in ("weight", "bias")},
    **{f"mlp.w1.{p}": f"mlp.fc1_g.{p}" for p in ("weight", "bias")},  # SwiGLU gate (through SiLU)
    **{f"mlp.w2.{p}": f"mlp.fc1_x.{p}" for p in ("weight", "bias")},
    **{f"mlp.w3.{p}": f"mlp.fc2.{p}" for p in ("weight", "bias")},
}
_TIMM_TO_EVA_IN_BLOCK = {v: k for k, v in _EVA_TO_TIMM_IN_BLOCK.items()}
_BLOCK_KEY = re.compile(r"^(blocks\.\d+\.)(.+)$")
# EVA-CLIP keeps its RoPE tables as persistent buffers, once as `rope.*` and again under every
# block's attention (the module is shared); timm recomputes them, so they are never loaded.
_ROPE_TABLE = re.compile(r"(^|\.)rope\.freqs_(cos|sin)$")


def _rename(key: str, table: Mapping[str, str]) -> str:
    match = _BLOCK_KEY.match(key)
    if match and match.group(2) in table:
        return match.group(1) + table[match.group(2)]
    return key


def eva_clip_to_timm_key(key: str) -> str:
    """An EVA-CLIP visual key (no `visual.` prefix) -> timm's name; timm names pass unchanged."""
    return _rename(key, _EVA_TO_TIMM_IN_BLOCK)


def timm_to_eva_clip_key(key: str) -> str:
    """A timm `Eva` key -> the EVA-CLIP name it is stored under in checkpoints."""
    return _rename(key, _TIMM_TO_EVA_IN_BLOCK)


def eva_clip_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EVA-CLIP visual weights -> timm names, without the RoPE tables timm recomputes."""
    return {eva_clip_to_timm_key(k): v for k, v in state_dict.items() if not _ROPE_TABLE.search(k)}


class EvaEncoderSlot(nn.Module):
    """Holds the timm network under `model` and speaks EVA-CLIP key names at its state-dict boundary.

    Bunny checkpoints store this tower as `model.vision_tower.vision_tower.model.<EVA-CLIP name>`
    (the original wrapped its EVA-CLIP module in an encoder with a `model` attribute). The slot keeps
    that prefix as module structure and translates the few names timm spells differently with hooks:
    `state_dict()` writes EVA-CLIP names; `load_state_dict()` accepts EVA-CLIP (or timm) names, drops
    EVA-CLIP's RoPE tables and reports missing/unexpected keys by their EVA-CLIP names.
    `named_parameters()` still shows timm's names.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._load_prefix = ""
        self.register_state_dict_post_hook(_state_dict_to_eva_clip_names)
        self.register_load_state_dict_pre_hook(_state_dict_from_eva_clip_names)
        self.register_load_state_dict_post_hook(_incompatible_keys_to_eva_clip_names)


def _state_dict_to_eva_clip_names(module: EvaEncoderSlot, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    inner = prefix + "model."
    # This slot's keys were written last, so re-inserting them renamed keeps the order.
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[inner + timm_to_eva_clip_key(key[len(inner) :])] = state_dict.pop(key)


def _state_dict_from_eva_clip_names(module: EvaEncoderSlot, state_dict: dict, prefix: str, *args: Any) -> None:
    module._load_prefix = prefix  # the post hook is not given it
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(inner)]:
        name = key[len(inner) :]
        value = state_dict.pop(key)
        if not _ROPE_TABLE.search(name):
            state_dict[inner + eva_clip_to_timm_key(name)] = value


def _incompatible_keys_to_eva_clip_names(module: EvaEncoderSlot, incompatible_keys: Any) -> None:
    inner = module._load_prefix + "model."
    for keys in (incompatible_keys.missing_keys, incompatible_keys.unexpected_keys):
        keys[:] = [inner + timm_to_eva_clip_key(k[len(inner) :]) if k.startswith(inner) else k for k in keys]


# -- checkpoint ------------------------------------------------------------------------------------
def read_eva_clip_visual_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The `visual.*` weights of an EVA-CLIP checkpoint, prefix removed, in EVA-CLIP names.

    As EVA-CLIP's own loader: the weights may sit under a `model`, `module` or `state_dict` entry,
    and a DDP `module.` prefix is removed.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint
    if isinstance(checkpoint, Mapping):
        for container in ("model", "module", "state_dict"):
            if isinstance(checkpoint.get(container), Mapping):
                state_dict = checkpoint[container]
                break
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state_dict).__name__})")
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    visual = {k[len("visual.") :]: v for k, v in state_dict.items() if k.startswith("visual.")}
    if not visual:
        raise ValueError(
            f"{path} holds no EVA-CLIP vision weights (no 'visual.*' keys among {len(state_dict)}); "
            "mm_vision_tower must be an EVA-CLIP checkpoint such as EVA02_CLIP_L_336_psz14_s6B.pt"
        )
    return visual


# -- image processor -------------------------------------------------------------------------------
class EvaClipImageProcessor:
    """EVA-CLIP's eval transform: RGB -> bicubic resize of the shortest side -> center crop ->
    [0, 1] -> normalise with the CLIP mean/std. Pixel-identical to torchvision's
    `Resize(size, BICUBIC)`, `CenterCrop(size)`, `ToTensor()`, `Normalize(mean, std)` on PIL images.
    """

    def __init__(
        self,
        image_size: int = 336,
        image_mean: tuple[float, ...] = EVA_CLIP_MEAN,
        image_std: tuple[float, ...] = EVA_CLIP_STD,
    ) -> None:
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.size = {"shortest_edge": image_size}
        self.crop_size = {"height": image_size, "width": image_size}
        self.resample = Image.BICUBIC

    def __call__(self, images: Image.Image | Iterable[Image.Image], return_tensors: str | None = "pt") -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors)

    def preprocess(self, images: Image.Image | Iterable[Image.Image], return_tensors: str | None = "pt") -> BatchFeature:
        """One image or a list -> `{"pixel_values": [N, 3, crop_h, crop_w]}`."""
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        pixel_values = [self._transform(image) for image in images]
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def _transform(self, image: Image.Image | np.ndarray) -> np.ndarray:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        image = _to_rgb(image)
        image = self._resize_shortest_side(image, self.size["shortest_edge"])
        image = _center_crop(image, self.crop_size["height"], self.crop_size["width"])
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255)  # [H, W, 3] in [0, 1]
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        return ((pixels - mean) / std).transpose(2, 0, 1)  # [3, H, W]

    def _resize_shortest_side(self, image: Image.Image, size: int) -> Image.Image:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size * long / short)  # torchvision truncates the long side
        new_size = (size, new_long) if width <= height else (new_long, size)
        if new_size == image.size:
            return image
        return image.resize(new_size, self.resample)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        # Transparent pixels become white, as transformers' convert_to_rgb does.
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    image_width, image_height = image.size
    if height > image_height or width > image_width:
        raise ValueError(f"cannot crop {width}x{height} from a {image_width}x{image_height} image")
    # torchvision's offsets: round half to even, as Python's round.
    top = int(round((image_height - height) / 2.0))
    left = int(round((image_width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


# -- tower -----------------------------------------------------------------------------------------
class EvaClipVisionTower(VisionTower):
    """EVA02-CLIP encoder from an EVA-CLIP checkpoint file: `[B, 3, 336, 336]` -> `[B, 576, 1024]`."""

    def load_model(self, device_map: Any = None, dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        if self.is_loaded:
            return
        path = self.vision_tower_name
        if not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else "does not exist"
            raise FileNotFoundError(
                f"EVA-CLIP checkpoint {path!r} {what}; mm_vision_tower must name a torch checkpoint file "
                "such as EVA02_CLIP_L_336_psz14_s6B.pt"
            )
        weights = eva_clip_to_timm(read_eva_clip_visual_weights(path))  # first: a wrong file fails fast
        config = self.config
        network = build_eva_network(config)
        try:
            incompatible = network.load_state_dict(weights, strict=False)
        except RuntimeError as err:  # shape mismatches: most likely hyper-parameters that don't fit
            raise RuntimeError(
                f"EVA-CLIP weights from {path} do not fit {config} (overrides are read from "
                f"{config_path_for(path)}): {err}"
            ) from err
        # Names are given as in the checkpoint. A missing weight would stay random (the original only
        # logged it); weights the tower does not use are reported.
        if incompatible.missing_keys:
            raise MissingWeightsError(path, config, [timm_to_eva_clip_key(k) for k in incompatible.missing_keys])
        if incompatible.unexpected_keys:
            logger.warning(
                "EVA-CLIP weights from %s: unused keys %s", path,
                [timm_to_eva_clip_key(k) for k in incompatible.unexpected_keys],
            )
        self.image_processor = EvaClipImageProcessor(config.image_size)
        self.vision_tower = EvaEncoderSlot(network)
        self.vision_tower.requires_grad_(False)
        if isinstance(device_map, (str, torch.device)) and device_map != "auto":
            self.vision_tower.to(device=device_map)
        if dtype is not None:
            self.vision_tower.to(dtype=dtype)
        self.is_loaded = True

    def _load_config(self) -> EvaClipVisionConfig:
        json_path = config_path_for(self.vision_tower_name)
        if os.path.isfile(json_path):
            return EvaClipVisionConfig.from_json_file(json_path)
        return EvaClipVisionConfig()

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.vision_tower.model
        # The output of block depth-2, i.e. every block but the last, without the final norm and
        # with the CLS token split off: [B, 3, H, W] -> [B, (H / patch) * (W / patch), width].
        (features,) = model.forward_intermediates(
            pixel_values,
            indices=[len(model.blocks) - 2],
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return features
