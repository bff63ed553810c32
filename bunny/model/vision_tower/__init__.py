"""Vision towers, chosen by an explicit `mm_vision_tower_type` or by the tower's own name.

The original picked the tower by searching the whole path for "sig", "eva" or "clip", so a parent
directory named e.g. `design/` forced SigLIP. Here the choice is, in order: the explicit type; the
`model_type` in a local directory's config.json; the final path component.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from bunny.model.vision_tower.base import VisionTower
from bunny.model.vision_tower.s2 import DEFAULT_S2_SCALES, SiglipS2VisionTower


def _siglip(name: str, delay_load: bool) -> VisionTower:
    from bunny.model.vision_tower.siglip import SiglipVisionTower

    return SiglipVisionTower(name, delay_load=delay_load)


def _clip(name: str, delay_load: bool) -> VisionTower:
    from bunny.model.vision_tower.clip import CLIPVisionTower

    return CLIPVisionTower(name, delay_load=delay_load)


def _eva_clip(name: str, delay_load: bool) -> VisionTower:
    from bunny.model.vision_tower.eva_clip import EvaClipVisionTower

    return EvaClipVisionTower(name, delay_load=delay_load)


VISION_TOWERS: dict[str, Callable[[str, bool], VisionTower]] = {
    "siglip": _siglip,
    "clip": _clip,
    "eva_clip": _eva_clip,
}

# `model_type` of a tower directory's config.json -> tower type.
_CONFIG_MODEL_TYPES = {
    "siglip_vision_model": "siglip",
    "siglip": "siglip",
    "clip_vision_model": "clip",
    "clip": "clip",
}


def vision_tower_type(name_or_path: str, explicit: str | None = None) -> str:
    """Which tower `name_or_path` is: one of `VISION_TOWERS`."""
    if explicit:
        if explicit not in VISION_TOWERS:
            raise ValueError(f"Unknown vision tower type {explicit!r}; choose one of {sorted(VISION_TOWERS)}")
        return explicit
    config_file = os.path.join(name_or_path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            model_type = json.load(f).get("model_type")
        if model_type in _CONFIG_MODEL_TYPES:
            return _CONFIG_MODEL_TYPES[model_type]
    name = os.path.basename(os.path.normpath(name_or_path)).lower()
    # Same order as the original, on the last component only: "EVA02_CLIP_L..." is EVA.
    for key, kind in (("sig", "siglip"), ("eva", "eva_clip"), ("clip", "clip")):
        if key in name:
            return kind
    raise ValueError(
        f"Unknown vision tower: {name_or_path!r}. Its last path component must name SigLIP, EVA or CLIP, "
        f"or set mm_vision_tower_type (--vision_tower_type) to one of {sorted(VISION_TOWERS)}"
    )


def build_vision_tower(config: Any, delay_load: bool = False) -> VisionTower:
    """The tower described by a Bunny config (`mm_vision_tower`, `mm_vision_tower_type`, `use_s2`, `s2_scales`)."""
    name = getattr(config, "mm_vision_tower", None) or getattr(config, "vision_tower", None)
    if not name:
        raise ValueError("config has no mm_vision_tower")
    kind = vision_tower_type(name, getattr(config, "mm_vision_tower_type", None))
    if getattr(config, "use_s2", False):
        if kind != "siglip":
            raise ValueError(f"Currently not supporting S2 for {kind}; S2 works with SigLIP towers")
        if not getattr(config, "s2_scales", None):
            config.s2_scales = DEFAULT_S2_SCALES  # persisted, so a checkpoint reloads the same scales
        return SiglipS2VisionTower(name, s2_scales=config.s2_scales, delay_load=delay_load)
    return VISION_TOWERS[kind](name, delay_load)
