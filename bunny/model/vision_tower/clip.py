"""CLIP vision tower (e.g. openai/clip-vit-large-patch14-336: 576 tokens x 1024, class token dropped)."""

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip import CLIPImageProcessorPil

from bunny.model.vision_tower.base import TransformersVisionTower


class CLIPVisionTower(TransformersVisionTower):
    model_class = CLIPVisionModel
    config_class = CLIPVisionConfig
    processor_class = CLIPImageProcessorPil
    drop_cls = True

    def _before_encoder(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return model.pre_layrnorm(hidden)
