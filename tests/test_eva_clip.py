"""EVA-CLIP tower (bunny.model.vision_tower.eva_clip) on tiny random checkpoints in EVA-CLIP's own
key format, against a plain-torch EVA02 forward written here from the architecture description.

Run as: python -m pytest -q tests/test_eva_clip.py
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bunny.model.checkpoint_files import MissingWeightsError
from bunny.model.vision_tower import build_vision_tower
from tiny import eva_clip_visual_shapes, random_visual_weights
from bunny.model.vision_tower.eva_clip import (
    EVA_CLIP_MEAN,
    EVA_CLIP_STD,
    EvaClipImageProcessor,
    EvaClipVisionConfig,
    EvaClipVisionTower,
    EvaEncoderSlot,
    build_eva_network,
)

# 7 x 7 patches whose RoPE positions are rescaled to a 4 x 4 reference grid (as 24 -> 16 in EVA02-L).
TINY = dict(image_size=28, patch_size=4, width=48, depth=3, head_width=16, mlp_ratio=2.6667,
            rope_ref_grid=4, embed_dim=16, layer_norm_eps=1e-6)
# EVA02-L's token grid, head width and RoPE grid on a narrow, shallow network.
L_GEOMETRY = dict(TINY, image_size=336, patch_size=14, width=128, depth=2, head_width=64, rope_ref_grid=16)


# -- EVA02 written out from its description ----------------------------------------------------------
def reference_rope(grid: int, ref_grid: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA02's 2-D RoPE tables, `[grid * grid, head_dim]` cos and sin.

    Each axis gets half the head channels: head_dim / 4 inverse frequencies (those of a 1-D RoPE
    over head_dim / 2 channels), each repeated for the pair of channels it rotates. Positions of the
    fine grid are scaled onto the reference grid. Token (r, c) uses r on the first half, c on the
    second; tokens are row-major.
    """
    axis_dim = head_dim // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, axis_dim, 2).float() / axis_dim)  # [head_dim / 4]
    positions = torch.arange(grid) / grid * ref_grid  # [grid]
    angles = (positions[:, None] * inv_freq[None, :]).repeat_interleave(2, dim=-1)  # [grid, head_dim / 2]
    rows = angles[:, None, :].expand(grid, grid, axis_dim)
    cols = angles[None, :, :].expand(grid, grid, axis_dim)
    table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    return table.cos(), table.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a quarter turn of each channel pair."""
    return torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)


def reference_features(weights: dict[str, torch.Tensor], cfg: dict, pixels: torch.Tensor) -> torch.Tensor:
    """Bunny's EVA features: all blocks but the last, no final norm, CLS dropped. `[B, N, width]`."""
    w, eps = weights, cfg["layer_norm_eps"]
    width, head_dim = cfg["width"], cfg["head_width"]
    heads, grid = width // head_dim, cfg["image_size"] // cfg["patch_size"]
    batch = pixels.shape[0]

    def layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], w[name + ".weight"], w[name + ".bias"], eps)

    def split_heads(x: torch.Tensor) -> torch.Tensor:  # [B, T, width] -> [B, heads, T, head_dim]
        return x.view(batch, -1, heads, head_dim).transpose(1, 2)

    def rope_after_cls(x: torch.Tensor) -> torch.Tensor:
        patches = x[:, :, 1:]
        return torch.cat([x[:, :, :1], patches * cos + rotate_pairs(patches) * sin], dim=2)

    cos, sin = reference_rope(grid, cfg["rope_ref_grid"], head_dim)
    x = F.conv2d(pixels, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=cfg["patch_size"])
    x = x.flatten(2).transpose(1, 2)  # [B, grid * grid, width], row-major patches
    x = torch.cat([w["cls_token"].expand(batch, -1, -1), x], dim=1) + w["pos_embed"]
    for i in range(cfg["depth"] - 1):
        b = f"blocks.{i}."
        h = layer_norm(x, b + "norm1")
        q = split_heads(F.linear(h, w[b + "attn.q_proj.weight"], w[b + "attn.q_bias"]))
        k = split_heads(F.linear(h, w[b + "attn.k_proj.weight"]))
        v = split_heads(F.linear(h, w[b + "attn.v_proj.weight"], w[b + "attn.v_bias"]))
        q, k = rope_after_cls(q), rope_after_cls(k)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(head_dim)).softmax(dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(batch, -1, width)
        h = layer_norm(h, b + "attn.inner_attn_ln")
        x = x + F.linear(h, w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
        h = layer_norm(x, b + "norm2")
        h = F.silu(F.linear(h, w[b + "mlp.w1.weight"], w[b + "mlp.w1.bias"])) * F.linear(h, w[b + "mlp.w2.weight"], w[b + "mlp.w2.bias"])
        h = layer_norm(h, b + "mlp.ffn_ln")
        x = x + F.linear(h, w[b + "mlp.w3.weight"], w[b + "mlp.w3.bias"])
    return x[:, 1:]


# -- tiny checkpoints in EVA-CLIP's format -------------------------------------------------------------
def rope_tables(cfg: dict) -> dict[str, torch.Tensor]:
    """The persistent RoPE buffers EVA-CLIP's state dicts also carry (shared module -> per block too)."""
    cos, sin = reference_rope(cfg["image_size"] // cfg["patch_size"], cfg["rope_ref_grid"], cfg["head_width"])
    tables = {"rope.freqs_cos": cos, "rope.freqs_sin": sin}
    for i in range(cfg["depth"]):
        tables.update({f"blocks.{i}.attn.rope.freqs_cos": cos, f"blocks.{i}.attn.rope.freqs_sin": sin})
    return tables


def save_eva_checkpoint(path: Path, cfg: dict, weights: dict[str, torch.Tensor], layout: str = "state_dict") -> str:
    """Save `weights` as a whole EVA-CLIP model would be (`visual.*` among text weights and RoPE
    tables) in one of the container layouts EVA-CLIP's loader accepts, plus `<stem>.json`."""
    full = {f"visual.{k}": v for k, v in {**weights, **rope_tables(cfg)}.items()}
    full.update({"text.token_embedding.weight": torch.zeros(4, 8), "logit_scale": torch.tensor(4.6)})
    if layout == "state_dict":  # DDP-wrapped under "state_dict"
        checkpoint = {"state_dict": {f"module.{k}": v for k, v in full.items()}, "epoch": 1}
    elif layout == "model":
        checkpoint = {"model": full}
    else:
        checkpoint = full
    torch.save(checkpoint, path)
    fields = {k: v for k, v in cfg.items()}
    path.with_suffix(".json").write_text(json.dumps(fields))
    return str(path)


@pytest.fixture(scope="module")
def tiny_weights() -> dict[str, torch.Tensor]:
    return random_visual_weights(TINY, seed=0)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_weights) -> str:
    return save_eva_checkpoint(tmp_path_factory.mktemp("eva") / "EVA02_CLIP_tiny.pt", TINY, tiny_weights)


@pytest.fixture(scope="module")
def tiny_tower(tiny_checkpoint) -> EvaClipVisionTower:
    return EvaClipVisionTower(tiny_checkpoint)


def random_pixels(cfg: dict, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, cfg["image_size"], cfg["image_size"], generator=torch.Generator().manual_seed(seed))


# -- features ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["state_dict", "model", "flat"])
def test_features_match_reference_forward(tmp_path, tiny_weights, layout):
    tower = EvaClipVisionTower(save_eva_checkpoint(tmp_path / "EVA02_CLIP_tiny.pt", TINY, tiny_weights, layout))
    pixels = random_pixels(TINY)
    with torch.no_grad():
        features = tower(pixels)
    assert features.shape == (2, 49, 48)
    assert tower.hidden_size == 48 and tower.num_patches == 49
    torch.testing.assert_close(features, reference_features(tiny_weights, TINY, pixels), rtol=1e-4, atol=1e-5)


def test_features_match_reference_at_eva02_l_geometry(tmp_path):
    """576 patches, 64-channel heads, RoPE grid 16 -> 24: EVA02-L's positional layout exactly."""
    weights = random_visual_weights(L_GEOMETRY, seed=3)
    tower = EvaClipVisionTower(save_eva_checkpoint(tmp_path / "EVA02_CLIP_l_geometry.pt", L_GEOMETRY, weights))
    pixels = random_pixels(L_GEOMETRY, batch=1)
    with torch.no_grad():
        features = tower(pixels)
    assert features.shape == (1, 576, 128) and tower.num_patches == 576
    torch.testing.assert_close(features, reference_features(weights, L_GEOMETRY, pixels), rtol=1e-4, atol=1e-4)


def test_timm_rope_tables_are_eva02s():
    network = build_eva_network(EvaClipVisionConfig(**L_GEOMETRY))
    sin, cos = network.rope.get_embed().chunk(2, dim=-1)  # timm concatenates [sin | cos]: [576, 64] each
    ref_cos, ref_sin = reference_rope(24, 16, 64)
    torch.testing.assert_close(cos, ref_cos)
    torch.testing.assert_close(sin, ref_sin)


def test_forward_casts_and_accepts_a_list(tiny_tower):
    pixels = random_pixels(TINY).double()
    batched = tiny_tower(pixels)
    assert batched.dtype == torch.float64
    per_image = tiny_tower([pixels[0], pixels[1]])
    assert [f.shape for f in per_image] == [(1, 49, 48)] * 2
    torch.testing.assert_close(torch.cat(per_image), batched, rtol=1e-4, atol=1e-5)


def test_tower_is_frozen(tiny_tower):
    params = list(tiny_tower.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert tiny_tower.dtype == torch.float32 and tiny_tower.device.type == "cpu"


# -- key layout ----------------------------------------------------------------------------------------
def test_state_dict_has_original_names(tiny_tower, tiny_weights):
    state = tiny_tower.state_dict()
    assert list(state) == [k for k in state if k.startswith("vision_tower.model.")]
    assert set(state) == {f"vision_tower.model.{k}" for k in tiny_weights}  # no RoPE tables, no timm names
    for name, value in tiny_weights.items():
        torch.testing.assert_close(state[f"vision_tower.model.{name}"], value, rtol=0, atol=0)


def test_state_dict_round_trips_strictly(tmp_path, tiny_tower):
    other = EvaClipVisionTower(save_eva_checkpoint(tmp_path / "EVA02_CLIP_other.pt", TINY, random_visual_weights(TINY, seed=7)))
    pixels = random_pixels(TINY)
    assert not torch.allclose(other(pixels), tiny_tower(pixels))
    other.load_state_dict(tiny_tower.state_dict(), strict=True)
    torch.testing.assert_close(other(pixels), tiny_tower(pixels), rtol=0, atol=0)


def test_bunny_checkpoint_keys_load_strictly(tmp_path, tiny_tower, tiny_weights):
    """As language_model.load_vision_tower: `model.vision_tower.*` keys, prefix cut, strict; the
    original's persistent RoPE tables may be among them and are dropped."""
    parent = nn.Module()
    parent.vision_tower = tiny_tower
    saved = parent.state_dict(prefix="model.")
    assert "model.vision_tower.vision_tower.model.blocks.0.attn.q_bias" in saved
    assert "model.vision_tower.vision_tower.model.blocks.0.mlp.w1.weight" in saved
    saved.update({f"model.vision_tower.vision_tower.model.{k}": v for k, v in rope_tables(TINY).items()})

    other = EvaClipVisionTower(save_eva_checkpoint(tmp_path / "EVA02_CLIP_other.pt", TINY, random_visual_weights(TINY, seed=7)))
    other.load_state_dict({k[len("model.vision_tower."):]: v for k, v in saved.items()}, strict=True)
    pixels = random_pixels(TINY)
    torch.testing.assert_close(other(pixels), tiny_tower(pixels), rtol=0, atol=0)
    # Errors name keys as the checkpoint does, not as timm does.
    broken = {k: v for k, v in other.state_dict().items() if k != "vision_tower.model.blocks.1.mlp.w3.weight"}
    broken["vision_tower.model.blocks.1.mlp.w9.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as error:
        other.load_state_dict(broken)
    assert 'Missing key(s) in state_dict: "vision_tower.model.blocks.1.mlp.w3.weight"' in str(error.value)
    assert 'Unexpected key(s) in state_dict: "vision_tower.model.blocks.1.mlp.w9.weight"' in str(error.value)


def test_default_hyper_parameters_are_eva02_clip_l():
    tower = EvaClipVisionTower("/nowhere/EVA02_CLIP_L_336_psz14_s6B.pt", delay_load=True)
    assert (tower.hidden_size, tower.num_patches) == (1024, 576)
    assert (tower.config.image_size, tower.config.patch_size, tower.config.num_heads) == (336, 14, 16)
    with torch.device("meta"):  # shapes only: no memory, no init time
        network = build_eva_network(tower.config)
    state = EvaEncoderSlot(network).state_dict()
    expected = {f"model.{k}": v for k, v in eva_clip_visual_shapes(dict(
        image_size=336, patch_size=14, width=1024, depth=24, mlp_ratio=2.6667, embed_dim=768)).items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert expected["model.blocks.0.mlp.w1.weight"] == (2730, 1024)
    assert network.blocks[0].attn.num_heads == 16 and network.blocks[0].norm1.eps == 1e-6


# -- loading -------------------------------------------------------------------------------------------
def test_lazy_construction_reads_nothing(tiny_checkpoint, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_load)
    tower = EvaClipVisionTower(tiny_checkpoint, delay_load=True)
    assert not tower.is_loaded and tower.image_processor is None
    assert (tower.hidden_size, tower.num_patches, tower.config.image_size) == (48, 49, 28)  # from the JSON
    with pytest.raises(RuntimeError, match="not loaded"):
        tower(random_pixels(TINY))
    monkeypatch.undo()
    tower.load_model()
    encoder = tower.vision_tower
    monkeypatch.setattr(torch, "load", no_load)
    tower.load_model()  # idempotent: nothing re-read or rebuilt
    assert tower.is_loaded and tower.vision_tower is encoder
    assert tower.image_processor.crop_size == {"height": 28, "width": 28}


def test_registry_builds_eva_tower_lazily(tiny_checkpoint):
    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=tiny_checkpoint), delay_load=True)
    assert isinstance(tower, EvaClipVisionTower) and not tower.is_loaded


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        EvaClipVisionTower(str(missing))
    with pytest.raises(FileNotFoundError, match="is a directory"):
        EvaClipVisionTower(str(tmp_path))


def test_checkpoint_without_visual_weights_is_an_error(tmp_path):
    path = tmp_path / "EVA02_CLIP_text_only.pt"
    torch.save({"text.token_embedding.weight": torch.zeros(4, 8)}, path)
    with pytest.raises(ValueError, match="no EVA-CLIP vision weights"):
        EvaClipVisionTower(str(path))


def test_hyper_parameters_that_do_not_fit_the_weights_are_an_error(tmp_path, tiny_weights):
    path = save_eva_checkpoint(tmp_path / "EVA02_CLIP_tiny.pt", TINY, tiny_weights)
    Path(path).with_suffix(".json").write_text(json.dumps(dict(TINY, image_size=32)))  # 8 x 8 patches
    with pytest.raises(RuntimeError) as error:
        EvaClipVisionTower(path)
    assert f"{path} do not fit" in str(error.value) and "image_size=32" in str(error.value)
    assert "size mismatch for pos_embed" in str(error.value)


def test_missing_weights_are_an_error_and_unused_ones_are_logged_with_original_names(tmp_path, tiny_weights, caplog):
    # the original only logged a missing weight, which then stayed at its random initialisation
    weights = {k: v for k, v in tiny_weights.items() if k != "blocks.2.mlp.w3.weight"}
    path = save_eva_checkpoint(tmp_path / "EVA02_CLIP_partial.pt", TINY, weights)
    with pytest.raises(MissingWeightsError, match=r"EVA02_CLIP_partial\.pt lacks 1 weight.*blocks\.2\.mlp\.w3\.weight"):
        EvaClipVisionTower(path)
    weights = dict(tiny_weights, **{"blocks.0.attn.relative_position_bias_table": torch.zeros(3)})
    path = save_eva_checkpoint(tmp_path / "EVA02_CLIP_extra.pt", TINY, weights)
    with caplog.at_level(logging.WARNING, logger="bunny.model.vision_tower.eva_clip"):
        EvaClipVisionTower(path)
    assert "unused keys ['blocks.0.attn.relative_position_bias_table']" in caplog.text


def test_eva_clip_model_config_json(tmp_path):
    path = tmp_path / "EVA02_CLIP_cfg.json"
    path.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {
        "image_size": 28, "layers": 3, "width": 48, "head_width": 16, "mlp_ratio": 2.6667, "patch_size": 4,
        "eva_model_name": "eva-clip-l-14-336", "xattn": True, "fusedLN": True, "rope": True,
        "pt_hw_seq_len": 4, "intp_freq": True, "naiveswiglu": True, "subln": True}}))
    config = EvaClipVisionConfig.from_json_file(path)
    assert config == EvaClipVisionConfig(**TINY)
    path.write_text(json.dumps({"width": 48, "heads": 3, "depth": 3}))
    assert EvaClipVisionConfig.from_json_file(path).head_width == 16
    path.write_text(json.dumps({"width": 48, "layer_count": 3}))
    with pytest.raises(ValueError, match="layer_count"):
        EvaClipVisionConfig.from_json_file(path)
    path.write_text(json.dumps({"vision_cfg": {"subln": False}}))
    with pytest.raises(ValueError, match="subln"):
        EvaClipVisionConfig.from_json_file(path)


# -- image processor -----------------------------------------------------------------------------------
def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}.get(mode, 1)
    array = np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode=mode)


def normalised(image: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    return (pixels - torch.tensor(EVA_CLIP_MEAN)[:, None, None]) / torch.tensor(EVA_CLIP_STD)[:, None, None]


@pytest.mark.parametrize(
    "size, resized, box",
    [
        ((50, 30), (560, 336), (112, 0, 448, 336)),  # landscape: long side int(336 * 50 / 30)
        ((30, 50), (336, 560), (0, 112, 336, 448)),  # portrait
        ((101, 100), (339, 336), (2, 0, 338, 336)),  # offset round(1.5) = 2
        ((200, 205), (336, 344), (0, 4, 336, 340)),  # int(344.4) = 344, offset 4
        ((336, 336), (336, 336), (0, 0, 336, 336)),
    ],
)
def test_processor_resizes_shortest_side_and_center_crops(size, resized, box):
    image = random_image(*size)
    expected = normalised(image.resize(resized, Image.BICUBIC).crop(box))
    pixel_values = EvaClipImageProcessor().preprocess(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 336, 336) and pixel_values.dtype == torch.float32
    torch.testing.assert_close(pixel_values[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(50, 30), (101, 100), (337, 500), (640, 480)])
def test_processor_matches_torchvision(size):
    transforms = pytest.importorskip("torchvision.transforms")
    reference = transforms.Compose([
        transforms.Resize(336, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(336),
        transforms.ToTensor(),
        transforms.Normalize(EVA_CLIP_MEAN, EVA_CLIP_STD),
    ])
    image = random_image(*size, seed=5)
    pixel_values = EvaClipImageProcessor()(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values[0], reference(image), rtol=0, atol=1e-6)


def test_processor_takes_one_image_or_a_list():
    processor = EvaClipImageProcessor()
    images = [random_image(40, 60, seed=1), random_image(70, 35, seed=2)]
    batch = processor(images, return_tensors="pt")["pixel_values"]
    assert batch.shape == (2, 3, 336, 336)
    torch.testing.assert_close(processor.preprocess(images, return_tensors="pt")["pixel_values"], batch)
    torch.testing.assert_close(processor(images[1], return_tensors="pt")["pixel_values"][0], batch[1])


def test_processor_attributes():
    processor = EvaClipImageProcessor()
    assert processor.image_mean == EVA_CLIP_MEAN and processor.image_std == EVA_CLIP_STD
    assert processor.crop_size == {"height": 336, "width": 336}
    assert processor.size == {"shortest_edge": 336}
    assert tuple(int(x * 255) for x in processor.image_mean) == (122, 116, 104)  # Bunny's pad colour


def test_processor_converts_to_rgb():
    processor = EvaClipImageProcessor(image_size=28)
    grey = random_image(30, 28, mode="L")
    torch.testing.assert_close(
        processor(grey)["pixel_values"], processor(grey.convert("RGB"))["pixel_values"]
    )
    transparent = Image.new("RGBA", (28, 28), (10, 20, 30, 0))
    white = processor(Image.new("RGB", (28, 28), (255, 255, 255)))["pixel_values"]
    torch.testing.assert_close(processor(transparent)["pixel_values"], white)
