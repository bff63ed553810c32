"""S2 multi-scale wrapper around SigLIP (`use_s2`): the image is encoded at every scale, larger
scales as tiles of the smallest, and the feature maps are concatenated on channels.

With the default scales 384,768,1152 a 1152 px input gives 729 tokens x 3 * 1152 = 3456 channels.
"""

from __future__ import annotations

from typing import Any

import torch

from bunny.model.vision_tower.siglip import SiglipVisionTower

DEFAULT_S2_SCALES = "384,768,1152"


def parse_s2_scales(scales: str | list[int]) -> list[int]:
    if isinstance(scales, str):
        try:
            values = [int(s) for s in scales.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"s2_scales must be comma-separated integers, got {scales!r}") from None
    else:
        values = [int(s) for s in scales]
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"s2_scales must list positive image sizes, got {scales!r}")
    return sorted(values)


class SiglipS2VisionTower(SiglipVisionTower):
    def __init__(self, vision_tower: str, s2_scales: str = DEFAULT_S2_SCALES, delay_load: bool = False) -> None:
        self.s2_scales = parse_s2_scales(s2_scales)
        self.s2_split_size = self.s2_scales[0]  # each tile is encoded at the tower's native size
        self.s2_image_size = self.s2_scales[-1]  # the processor resizes to the largest scale
        super().__init__(vision_tower, delay_load=delay_load)

    def load_model(self, **kwargs: Any) -> None:
        if self.is_loaded:
            return
        super().load_model(**kwargs)
        if self.config.image_size != self.s2_split_size:
            raise ValueError(
                f"S2 scales {self.s2_scales} start at {self.s2_split_size} px, but the tower "
                f"{self.vision_tower_name!r} takes {self.config.image_size} px images"
            )
        size = {"height": self.s2_image_size, "width": self.s2_image_size}
        self.image_processor.size = dict(size)
        self.image_processor.crop_size = dict(size)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        from s2wrapper import forward as multiscale_forward

        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"S2 needs square images, got {tuple(images.shape[-2:])}")
        features = multiscale_forward(
            super()._encode, images, img_sizes=self.s2_scales, max_split_size=self.s2_split_size
        )
        return features.to(images.dtype)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size * len(self.s2_scales)
