"""The interface every vision tower implements, and the shared penultimate-layer feature path for
towers built on transformers vision models (SigLIP, CLIP)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Bunny feeds the projector with the output of the second-to-last encoder layer.
SELECT_LAYER = -2


class VisionModelSlot(nn.Module):
    """Holds a transformers vision model under the attribute `vision_model`.

    Checkpoints written with transformers 4.x store tower weights as
    `model.vision_tower.vision_tower.vision_model.*` because the 4.x vision models had a
    `vision_model` child; the 5.x classes hold their layers directly. This slot keeps the old key
    layout for what we load and what we save.
    """

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model


class VisionTower(nn.Module):
    """A frozen-by-default image encoder: `[B, 3, H, W]` pixels -> `[B, N, C]` features.

    Construction is lazy: only the name is kept until `load_model()` reads the weights and the
    image processor (checkpoints are loaded first, then the tower from `mm_vision_tower`).
    """

    def __init__(self, vision_tower: str, delay_load: bool = False) -> None:
        super().__init__()
        self.vision_tower_name = vision_tower
        self.is_loaded = False
        self.image_processor: Any = None
        self._config: Any = None
        if not delay_load:
            self.load_model()

    # -- implemented by each tower -------------------------------------------------------------
    def load_model(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def _load_config(self) -> Any:
        raise NotImplementedError

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, 3, H, W]` in the tower's dtype/device -> `[B, N, C]`."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if not self.is_loaded:
            raise RuntimeError(f"vision tower {self.vision_tower_name!r} is not loaded; call load_model() first")
        if isinstance(images, (list, tuple)):
            return [self._encode(image.unsqueeze(0)) for image in images]
        return self._encode(images)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        # No torch.no_grad here: gradients must flow when the tower is unfrozen.
        features = self._features(images.to(device=self.device, dtype=self.dtype))
        return features.to(images.dtype)

    @property
    def config(self) -> Any:
        if self._config is None:
            self._config = self._load_config()
        return self._config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches(self) -> int:
        return (self.config.image_size // self.config.patch_size) ** 2

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)


class TransformersVisionTower(VisionTower):
    """A tower on a transformers vision model class; `drop_cls` removes the class token (CLIP)."""

    model_class: Any = None
    config_class: Any = None
    processor_class: Any = None
    drop_cls = False

    def load_model(self, device_map: Any = None, dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        if self.is_loaded:
            return
        # The PIL backend reproduces the 4.x processors pixel for pixel; the torchvision one does not.
        self.image_processor = self.processor_class.from_pretrained(self.vision_tower_name)
        size = self.image_processor.size
        height = size.get("height") or size.get("shortest_edge")
        width = size.get("width") or size.get("shortest_edge")
        crop = getattr(self.image_processor, "crop_size", None)
        if crop is None or crop.get("height") is None:
            self.image_processor.crop_size = {"height": height, "width": width}
        else:
            self.image_processor.crop_size = {"height": crop["height"], "width": crop["width"]}
        model = self.model_class.from_pretrained(
            self.vision_tower_name, device_map=device_map, dtype=dtype or torch.float32
        )
        self._config = model.config
        self.vision_tower = VisionModelSlot(model)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def _load_config(self) -> Any:
        return self.config_class.from_pretrained(self.vision_tower_name)

    def _before_encoder(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.vision_tower.vision_model
        hidden = self._before_encoder(model, model.embeddings(pixel_values))
        layers = model.encoder.layers
        # hidden_states[-2] of the full model: the output of all layers but the last. Stopping there
        # skips the last layer, the post-layernorm and the pooling head, whose outputs are unused.
        for layer in layers[: len(layers) + 1 + SELECT_LAYER]:
            hidden = layer(hidden, None)
        return hidden[:, 1:] if self.drop_cls else hidden
