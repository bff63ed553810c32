"""Every projector type with the original parameter names; tower selection; CLIP and S2 towers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from bunny.model.projector import build_vision_projector, projected_token_count
from bunny.model.vision_tower import build_vision_tower, vision_tower_type
from tiny import build_model, random_pixels, random_prompt, save_siglip_tower

# type -> (tokens out for a 16-token 4x4 grid, parameter names)
PROJECTORS = {
    "linear": (16, {"weight", "bias"}),
    "mlp2x_gelu": (16, {"0.weight", "0.bias", "2.weight", "2.bias"}),
    "mlp3x_gelu": (16, {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}),
    "spp_v1": (4, {f"linear_{i}.{p}" for i in range(3) for p in ("weight", "bias")}),
    "spp_v2": (4, {f"linear_{i}.{p}" for i in range(3) for p in ("weight", "bias")}),
    "spp_v3": (4, {f"linear_{i}.{p}" for i in range(3) for p in ("weight", "bias")}),
    "ldp": (4, {
        "model.mlp.1.weight", "model.mlp.1.bias", "model.mlp.3.weight", "model.mlp.3.bias",
        *(f"model.mb_block.{b}.block.{k}" for b in (1, 2) for k in (
            "0.0.weight", "0.1.weight", "0.1.bias", "1.fc1.weight", "1.fc1.bias", "1.fc2.weight",
            "1.fc2.bias", "2.0.weight", "2.1.weight", "2.1.bias",
        )),
    }),
    "vanilla": (4, {"linear.weight", "linear.bias"}),
    "minigpt": (4, {"linear.weight", "linear.bias"}),
    "identity": (16, set()),
}


@pytest.mark.parametrize("projector_type", PROJECTORS)
def test_projector_shapes_and_names(projector_type):
    tokens, names = PROJECTORS[projector_type]
    hidden = 16 if projector_type == "identity" else 32
    projector = build_vision_projector(SimpleNamespace(mm_projector_type=projector_type, mm_hidden_size=16, hidden_size=hidden))
    assert set(projector.state_dict()) == names
    out = projector(torch.randn(2, 16, 16))
    assert out.shape == (2, tokens, hidden)


def test_ldp_squeeze_channels_and_token_count():
    projector = build_vision_projector(SimpleNamespace(mm_projector_type="ldp", mm_hidden_size=24, hidden_size=64))
    assert projector.model.mb_block[1].block[1].fc1.out_channels == 16  # make_divisible(64 / 4, 8)
    assert projector(torch.randn(1, 729, 24)).shape == (1, 196, 64)  # SigLIP's 27x27 -> 14x14


def test_token_grouping_orders():
    x = torch.arange(2 * 8 * 3, dtype=torch.float).view(2, 8, 3)
    vanilla = build_vision_projector(SimpleNamespace(mm_projector_type="vanilla", mm_hidden_size=3, hidden_size=12))
    minigpt = build_vision_projector(SimpleNamespace(mm_projector_type="minigpt", mm_hidden_size=3, hidden_size=12))
    for p in (vanilla, minigpt):
        torch.nn.init.eye_(p.linear.weight)
        torch.nn.init.zeros_(p.linear.bias)
    # minigpt concatenates 4 tokens; vanilla interleaves their channels.
    assert torch.equal(minigpt(x)[0, 0], x[0, :4].reshape(-1))
    assert torch.equal(vanilla(x)[0, 0], x[0, :4].T.reshape(-1))
    with pytest.raises(ValueError, match="num_tokens must be divisible by 4"):
        vanilla(torch.randn(1, 729, 3))


@pytest.mark.parametrize("bad", ["spp", "spp_v4", "mlp_gelu", "mlpx_gelu", "mlp0x_gelu", "mlp2x_relu", "qformer", ""])
def test_invalid_projector_type_is_an_error(bad):
    with pytest.raises(ValueError, match="Unknown projector type"):
        build_vision_projector(SimpleNamespace(mm_projector_type=bad, mm_hidden_size=4, hidden_size=4))


@pytest.mark.parametrize("projector_type", PROJECTORS)
def test_models_with_every_projector_save_reload_generate(projector_type, siglip_tower, tmp_path):
    # identity passes tower features through, so the LLM is as wide as the tower there.
    width = dict(hidden_size=16, num_attention_heads=2) if projector_type == "identity" else {}
    model = build_model("phi-1.5", siglip_tower, projector=projector_type, **width)
    ids = random_prompt(6, 1, 0)[None]
    pixels = random_pixels(1, 0)
    logits = model(ids, images=pixels).logits
    assert logits.shape[1] == 6 - 1 + PROJECTORS[projector_type][0]
    # what the worker's context check and training's supervision check count per image
    assert model.image_token_count == logits.shape[1] - 5
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(again(ids, images=pixels).logits, logits)
    out = again.generate(ids, images=pixels, do_sample=False, max_new_tokens=3, min_new_tokens=3)
    assert torch.equal(out, model.generate(ids, images=pixels, do_sample=False, max_new_tokens=3, min_new_tokens=3))


@pytest.mark.parametrize(
    "name,kind",
    [
        ("google/siglip-so400m-patch14-384", "siglip"),
        ("openai/clip-vit-large-patch14-336", "clip"),
        ("/weights/EVA02_CLIP_L_336_psz14_s6B.pt", "eva_clip"),
        ("/home/design/clip-vit-large-patch14-336", "clip"),  # "sig" in a parent directory no longer wins
        ("/data/eva/siglip-so400m", "siglip"),
    ],
)
def test_tower_type_from_final_path_component(name, kind):
    assert vision_tower_type(name) == kind


def test_tower_type_explicit_and_unknown(tmp_path):
    assert vision_tower_type("/some/tower", explicit="clip") == "clip"
    with pytest.raises(ValueError, match="Unknown vision tower type 'vit'"):
        vision_tower_type("/some/tower", explicit="vit")
    with pytest.raises(ValueError, match="Unknown vision tower: '/models/resnet50'"):
        vision_tower_type("/models/resnet50")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    assert vision_tower_type(str(tmp_path)) == "clip"


def test_s2_only_with_siglip(clip_tower):
    with pytest.raises(ValueError, match="not supporting S2 for clip"):
        build_vision_tower(SimpleNamespace(mm_vision_tower=clip_tower, use_s2=True))


def test_clip_drops_the_class_token(clip_tower):
    model = build_model("stablelm-2", clip_tower)
    tower = model.get_vision_tower()
    pixels = random_pixels(2, 0)
    hf = tower.vision_tower.vision_model
    expected = hf(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(tower(pixels), expected)
    assert tower.num_patches == 16 and tower.image_processor.crop_size == {"height": 16, "width": 16}


def test_siglip_features_are_the_penultimate_layer(siglip_tower):
    model = build_model("phi-2", siglip_tower)
    tower = model.get_vision_tower()
    pixels = random_pixels(3, 1)
    expected = tower.vision_tower.vision_model(pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(tower(pixels), expected)
    listed = tower(list(pixels))
    assert len(listed) == 3 and listed[1].shape == (1, 16, 16)


def s2_oracle(tower, images, scales):
    """Encode at every scale (tiles of the smallest scale), stitch, area-resize, concat channels."""
    split = scales[0]
    grid = int(tower.num_patches ** 0.5)
    maps = []
    for scale in scales:
        x = F.interpolate(images, size=scale, mode="bicubic")
        n = scale // split
        tiles = [x[:, :, i * split : (i + 1) * split, j * split : (j + 1) * split] for i in range(n) for j in range(n)]
        feats = [tower._features(t).transpose(1, 2).reshape(len(images), -1, grid, grid) for t in tiles]
        rows = [torch.cat(feats[i * n : (i + 1) * n], dim=3) for i in range(n)]
        maps.append(torch.cat(rows, dim=2))
    maps = [F.interpolate(m, size=grid, mode="area") for m in maps]
    return torch.cat(maps, dim=1).flatten(2).transpose(1, 2)


def test_s2_tower_and_persisted_scales(siglip_tower, tmp_path):
    model = build_model("phi-3", siglip_tower, use_s2=True, s2_scales="16,32,48", mm_hidden_size=48)
    tower = model.get_vision_tower()
    assert tower.hidden_size == 48 and tower.image_processor.crop_size == {"height": 48, "width": 48}
    images = random_pixels(2, 5, size=48)
    torch.testing.assert_close(tower(images), s2_oracle(tower, images, [16, 32, 48]), atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["s2_scales"] == "16,32,48"
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.get_vision_tower().s2_scales == [16, 32, 48]
    ids = random_prompt(8, 1, 2)[None]
    expected = model.generate(ids, images=images[:1], do_sample=False, max_new_tokens=3, min_new_tokens=3)
    assert torch.equal(again.generate(ids, images=images[:1], do_sample=False, max_new_tokens=3, min_new_tokens=3), expected)


def test_s2_default_scales_are_written_to_the_config(siglip_tower):
    config = SimpleNamespace(mm_vision_tower=siglip_tower, use_s2=True)
    tower = build_vision_tower(config, delay_load=True)
    assert config.s2_scales == "384,768,1152" and tower.s2_scales == [384, 768, 1152]
    assert tower.hidden_size == 16 * 3
    with pytest.raises(ValueError, match="start at 384 px"):
        tower.load_model()  # the tiny test tower takes 16 px tiles


def test_lazy_tower_reads_no_weights(tmp_path):
    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=str(tmp_path / "siglip-missing")), delay_load=True)
    assert not tower.is_loaded
    with pytest.raises(RuntimeError, match="not loaded"):
        tower(torch.zeros(1, 3, 16, 16))


def test_missing_tower_is_a_clear_error(tmp_path, siglip_tower):
    model = build_model("phi-2", None)
    from bunny.model.language_model import BunnyPhiForCausalLM

    config = model.config
    config.update(dict(mm_vision_tower=str(tmp_path / "siglip-gone"), mm_hidden_size=16, mm_projector_type="linear"))
    broken = BunnyPhiForCausalLM(config)
    with pytest.raises(OSError, match="could not load the vision tower .*siglip-gone"):
        broken.load_vision_tower()


def test_second_tower_directory(tmp_path):
    tower = save_siglip_tower(tmp_path / "siglip-32", image_size=32)
    model = build_model("phi-2", tower)
    assert model.encode_images(random_pixels(1, 0, size=32)).shape == (1, 64, 32)


@pytest.mark.parametrize("projector_type,grid", [("ldp", 27), ("spp_v2", 27), ("minigpt", 24), ("mlp2x_gelu", 27)])
def test_projected_token_count_at_real_tower_sizes(projector_type, grid):
    real = build_vision_projector(SimpleNamespace(mm_projector_type=projector_type, mm_hidden_size=24, hidden_size=40))
    assert projected_token_count(projector_type, grid * grid) == real(torch.zeros(1, grid * grid, 24)).shape[1]
