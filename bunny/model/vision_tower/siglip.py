"""SigLIP vision tower (e.g. google/siglip-so400m-patch14-384: 729 tokens x 1152)."""

from transformers import SiglipVisionConfig, SiglipVisionModel
from transformers.models.siglip import SiglipImageProcessorPil

from bunny.model.vision_tower.base import TransformersVisionTower


class SiglipVisionTower(TransformersVisionTower):
    model_class = SiglipVisionModel
    config_class = SiglipVisionConfig
    processor_class = SiglipImageProcessorPil
