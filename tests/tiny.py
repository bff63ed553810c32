"""Tiny random Bunny models for tests: every backbone, every tower kind, any projector.

Towers are saved to directories (they load with `from_pretrained`, like real ones); LLMs are built
from configs. Weights are random but seeded; `initializer_range` is large so that greedy choices
have wide margins and don't flip on float round-off between differently shaped batches.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel
from transformers.models.clip import CLIPImageProcessorPil
from transformers.models.siglip import SiglipImageProcessorPil

from bunny.model import get_backbone
from bunny.util.mm_utils import pad_token_ids

VOCAB = 96
HIDDEN = 32
IMAGE_SIZE = 16
PATCH = 4  # 16 image tokens

FIXTURES = Path(__file__).parent / "fixtures" / "reference"

LLM_FIELDS = {
    "phi-1.5": dict(partial_rotary_factor=0.5, hidden_act="gelu_new"),
    "phi-2": dict(partial_rotary_factor=0.4, hidden_act="gelu_new", num_attention_heads=2),  # rotary dim 6
    "phi-3": dict(num_key_value_heads=2, pad_token_id=0, original_max_position_embeddings=256),
    "stablelm-2": dict(use_qkv_bias=True, partial_rotary_factor=0.5, num_key_value_heads=4),
    "qwen1.5-1.8b": dict(num_key_value_heads=2),
    "minicpm": dict(scale_emb=4.0, dim_model_base=8, scale_depth=1.4, num_key_value_heads=2),
    "llama3-8b": dict(num_key_value_heads=2, rope_theta=500000.0),
}


def save_siglip_tower(directory: str | os.PathLike, image_size: int = IMAGE_SIZE, seed: int = 0) -> str:
    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=PATCH,
    )
    SiglipVisionModel(config).save_pretrained(directory)
    SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(directory)
    return str(directory)


def save_clip_tower(directory: str | os.PathLike, seed: int = 0) -> str:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=16,
    )
    CLIPVisionModel(config).save_pretrained(directory)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(directory)
    return str(directory)


# -- EVA-CLIP: a whole-model checkpoint file in EVA-CLIP's own key names, plus <stem>.json ----------
EVA_TINY = dict(image_size=IMAGE_SIZE, patch_size=PATCH, width=16, depth=2, head_width=8, mlp_ratio=2.6667,
                rope_ref_grid=4, embed_dim=8, layer_norm_eps=1e-6)


def eva_clip_visual_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every learned tensor of EVA-CLIP's visual tower, by its EVA-CLIP name."""
    width, patch, hidden = cfg["width"], cfg["patch_size"], int(cfg["width"] * cfg["mlp_ratio"])
    tokens = (cfg["image_size"] // patch) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, tokens, width),
        "patch_embed.proj.weight": (width, 3, patch, patch),
        "patch_embed.proj.bias": (width,),
    }
    for i in range(cfg["depth"]):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (width,), b + "norm1.bias": (width,),
            b + "attn.q_bias": (width,), b + "attn.v_bias": (width,),
            b + "attn.q_proj.weight": (width, width), b + "attn.k_proj.weight": (width, width),
            b + "attn.v_proj.weight": (width, width),
            b + "attn.inner_attn_ln.weight": (width,), b + "attn.inner_attn_ln.bias": (width,),
            b + "attn.proj.weight": (width, width), b + "attn.proj.bias": (width,),
            b + "norm2.weight": (width,), b + "norm2.bias": (width,),
            b + "mlp.w1.weight": (hidden, width), b + "mlp.w1.bias": (hidden,),
            b + "mlp.w2.weight": (hidden, width), b + "mlp.w2.bias": (hidden,),
            b + "mlp.ffn_ln.weight": (hidden,), b + "mlp.ffn_ln.bias": (hidden,),
            b + "mlp.w3.weight": (width, hidden), b + "mlp.w3.bias": (width,),
        })
    shapes.update({
        "norm.weight": (width,), "norm.bias": (width,),
        "head.weight": (cfg["embed_dim"], width), "head.bias": (cfg["embed_dim"],),
    })
    return shapes


def random_visual_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in eva_clip_visual_shapes(cfg).items():
        values = torch.randn(shape, generator=generator)
        if name.endswith(("norm1.weight", "norm2.weight", "ln.weight", "norm.weight")):
            weights[name] = 1.0 + 0.2 * values  # LayerNorm gains near 1
        elif name.endswith(("pos_embed", "cls_token")):
            weights[name] = 0.5 * values
        else:
            weights[name] = values / math.sqrt(math.prod(shape[1:]) if len(shape) > 1 else shape[0])  # fan-in
    return weights


def save_eva_tower(directory: str | os.PathLike, seed: int = 0) -> str:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "EVA02_CLIP_tiny.pt"
    weights = random_visual_weights(EVA_TINY, seed)
    torch.save({"state_dict": {f"visual.{k}": v for k, v in weights.items()}}, path)
    path.with_suffix(".json").write_text(json.dumps(EVA_TINY))
    return str(path)


def bunny_config(model_type: str, tower: str | None, projector: str = "mlp2x_gelu", **overrides):
    """A tiny Bunny config for `model_type`; `tower` is a saved tower directory (or None: LLM only)."""
    backbone = get_backbone(model_type)
    fields = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=256, initializer_range=0.2,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    fields.update(LLM_FIELDS[model_type])
    if tower is not None:
        fields.update(
            mm_vision_tower=tower, mm_hidden_size=16, mm_projector_type=projector, use_mm_proj=True,
            image_aspect_ratio="pad", tokenizer_padding_side="right", tokenizer_model_max_length=256,
            use_s2=False, unfreeze_vision_tower=False, tune_mm_mlp_adapter=False,
        )
    fields.update(overrides)
    return backbone.config_class(**fields)


def build_model(model_type: str, tower: str | None, projector: str = "mlp2x_gelu", seed: int = 0, **overrides):
    """A random Bunny model in eval mode with its tower loaded."""
    torch.manual_seed(seed)
    config = bunny_config(model_type, tower, projector, **overrides)
    model = get_backbone(model_type).model_class(config)
    if tower is not None:
        model.load_vision_tower()
        _randomise(model.get_model().mm_projector, seed)
    return model.eval()


def _randomise(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


def random_prompt(length: int, images: int, seed: int) -> torch.Tensor:
    """Token ids in [3, VOCAB) with `images` placeholders spread through them."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (length,), generator=generator)
    if images:
        slots = torch.randperm(length, generator=generator)[:images]
        ids[slots] = -200
    return ids


def random_pixels(count: int, seed: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=generator) * 2 - 1


def left_pad(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_token_ids(rows, pad_id, side="left")


def right_pad(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_token_ids(rows, pad_id, side="right")
