"""Tiny random Bunny models of every backbone, tower and projector: build, save, reload, generate;
a padded batch decodes exactly like its rows one by one; cached and uncached decoding agree."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from bunny.constants import IMAGE_TOKEN_INDEX
from bunny.model import MODEL_TYPES, get_backbone
from tiny import build_model, left_pad, random_pixels, random_prompt, right_pad, save_siglip_tower

BUNNY_MODEL_TYPES = {
    "phi-1.5": "bunny-phi", "phi-2": "bunny-phi", "phi-3": "bunny-phi3", "stablelm-2": "bunny-stablelm",
    "qwen1.5-1.8b": "bunny-qwen2", "minicpm": "bunny-minicpm", "llama3-8b": "bunny-llama",
}


def greedy(model, input_ids, images, attention_mask=None, use_cache=True, n=6):
    out = model.generate(
        input_ids, images=images, attention_mask=attention_mask, do_sample=False,
        max_new_tokens=n, min_new_tokens=n, use_cache=use_cache,
    )
    return out[:, input_ids.shape[1] :]


def saved_keys(directory) -> set[str]:
    keys = set()
    for path in directory.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            keys |= set(f.keys())
    return keys


def test_model_type_table():
    assert set(MODEL_TYPES) == set(BUNNY_MODEL_TYPES)
    assert get_backbone("llama3-8b").eos_token == "<|end_of_text|>"
    assert {t: get_backbone(t).template for t in MODEL_TYPES} == {
        "phi-1.5": "bunny", "phi-2": "bunny", "phi-3": "phi3", "stablelm-2": "bunny",
        "qwen1.5-1.8b": "bunny", "minicpm": "minicpm", "llama3-8b": "llama",
    }
    with pytest.raises(ValueError, match=r"Unknown Model Type 'gpt2'; valid model types: phi-1.5, phi-2"):
        get_backbone("gpt2")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_reload_generate(model_type, siglip_tower, tmp_path):
    model = build_model(model_type, siglip_tower)
    ids = random_prompt(12, 1, seed=1)[None]
    pixels = random_pixels(1, seed=1)
    with torch.no_grad():
        logits = model(ids, images=pixels).logits
    assert logits.shape == (1, 12 - 1 + 16, model.config.vocab_size)

    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == BUNNY_MODEL_TYPES[model_type]
    assert config["architectures"] == [type(model).__name__]
    assert config["mm_vision_tower"] == siglip_tower and config["mm_projector_type"] == "mlp2x_gelu"
    assert "rope_theta" in config  # pre-5.x field, for installs of the original
    keys = saved_keys(tmp_path)
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.bias", "lm_head.weight"} <= keys
    assert "lm_head.bias" not in keys
    assert any(k.startswith("model.vision_tower.vision_tower.vision_model.encoder.layers.") for k in keys)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model) and reloaded.get_vision_tower().is_loaded
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, images=pixels).logits, logits)
    assert torch.equal(greedy(reloaded, ids, pixels), greedy(model, ids, pixels))


def _mixed_batch():
    """Rows with one image, none, two images, and an image first; their images in order."""
    rows = [random_prompt(9, 1, 2), random_prompt(5, 0, 3), random_prompt(12, 2, 4), random_prompt(3, 0, 5)]
    rows[3][0] = IMAGE_TOKEN_INDEX
    counts = [int((r == IMAGE_TOKEN_INDEX).sum()) for r in rows]
    pixels = random_pixels(sum(counts), seed=6)
    per_row = list(pixels.split(counts))
    return rows, pixels, per_row


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("pad", [left_pad, right_pad], ids=["left", "right"])
def test_batch_equals_one_by_one(model_type, pad, siglip_tower):
    model = build_model(model_type, siglip_tower)
    rows, pixels, per_row = _mixed_batch()
    ids, mask = pad(rows)
    batched = greedy(model, ids, pixels, attention_mask=mask)
    for i, (row, images) in enumerate(zip(rows, per_row)):
        alone = greedy(model, row[None], images if len(images) else None)
        assert batched[i].tolist() == alone[0].tolist(), f"row {i}"


@pytest.mark.parametrize("model_type", ["phi-2", "llama3-8b", "minicpm"])
def test_batched_first_step_logits_match(model_type, siglip_tower):
    model = build_model(model_type, siglip_tower)
    rows, pixels, per_row = _mixed_batch()
    ids, mask = left_pad(rows)
    out = model.generate(
        ids, images=pixels, attention_mask=mask, do_sample=False, max_new_tokens=1,
        output_logits=True, return_dict_in_generate=True,
    )
    for i, (row, images) in enumerate(zip(rows, per_row)):
        alone = model.generate(
            row[None], images=images if len(images) else None, do_sample=False, max_new_tokens=1,
            output_logits=True, return_dict_in_generate=True,
        )
        torch.testing.assert_close(out.logits[0][i], alone.logits[0][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_cached_equals_uncached(model_type, siglip_tower):
    model = build_model(model_type, siglip_tower)
    rows, pixels, _ = _mixed_batch()
    ids, mask = left_pad(rows)
    assert torch.equal(
        greedy(model, ids, pixels, attention_mask=mask, use_cache=True),
        greedy(model, ids, pixels, attention_mask=mask, use_cache=False),
    )
    single = random_prompt(7, 1, 9)[None]
    assert torch.equal(greedy(model, single, pixels[:1]), greedy(model, single, pixels[:1], use_cache=False))


@pytest.mark.parametrize("tower", ["clip_tower", "eva_tower"])
def test_other_towers_save_reload_generate(tower, request, tmp_path):
    tower_path = request.getfixturevalue(tower)
    model = build_model("phi-3", tower_path)
    rows, pixels, per_row = _mixed_batch()
    ids, mask = left_pad(rows)
    batched = greedy(model, ids, pixels, attention_mask=mask)
    for i, (row, images) in enumerate(zip(rows, per_row)):
        assert batched[i].tolist() == greedy(model, row[None], images if len(images) else None)[0].tolist()
    model.save_pretrained(tmp_path)
    keys = saved_keys(tmp_path)
    prefix = "model.vision_tower.vision_tower." + ("model.blocks.0.mlp.w1.weight" if tower == "eva_tower" else "vision_model.")
    assert any(k.startswith(prefix) for k in keys)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(greedy(reloaded, ids, pixels, attention_mask=mask), batched)


def test_one_token_prompt_is_multimodal(siglip_tower):
    # The original treated a 1-token first prompt as a decode step and ignored the image.
    model = build_model("phi-2", siglip_tower)
    ids = torch.tensor([[IMAGE_TOKEN_INDEX]])
    with torch.no_grad():
        assert model(ids, images=random_pixels(1, 0)).logits.shape[1] == 16


def test_generate_returns_prompt_then_new_tokens(siglip_tower):
    model = build_model("phi-2", siglip_tower)
    ids = random_prompt(8, 1, seed=3)[None]
    before = ids.clone()
    out = model.generate(ids, images=random_pixels(1, 3), do_sample=False, max_new_tokens=4, min_new_tokens=4)
    assert torch.equal(ids, before)
    assert out.shape == (1, 12)
    assert torch.equal(out[0, :8], ids[0].masked_fill(ids[0] == IMAGE_TOKEN_INDEX, 0))


def test_sampling_and_beams_run(siglip_tower):
    model = build_model("llama3-8b", siglip_tower)
    rows, pixels, _ = _mixed_batch()
    ids, mask = left_pad(rows)
    torch.manual_seed(0)
    sampled = model.generate(ids, images=pixels, attention_mask=mask, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=3)
    assert sampled.shape[0] == 4
    beams = model.generate(ids, images=pixels, attention_mask=mask, num_beams=2, do_sample=False, max_new_tokens=3)
    assert beams.shape[0] == 4


def test_minicpm_scales_image_features(siglip_tower):
    """MiniCPM multiplies the whole spliced embedding sequence, image rows included, by scale_emb."""
    model = build_model("minicpm", siglip_tower)
    assert model.config.embedding_multiplier == model.config.scale_emb == 4.0
    ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 7]])
    pixels = random_pixels(1, 0)
    seen = {}
    hook = model.model.layers[0].register_forward_pre_hook(lambda mod, args, kwargs: seen.update(h=args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    with torch.no_grad():
        model(ids, images=pixels)
        features = model.encode_images(pixels)[0]
        text = model.get_input_embeddings()(torch.tensor([5, 7]))
    hook.remove()
    torch.testing.assert_close(seen["h"][0, 1:17], features * 4.0)
    torch.testing.assert_close(seen["h"][0, [0, 17]], text * 4.0)


def test_minicpm_config_fields_round_trip(tmp_path):
    config = get_backbone("minicpm").config_class(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=9, scale_emb=12, dim_model_base=16, scale_depth=1.4, vocab_size=10
    )
    assert config.logits_scaling == 4 and config.residual_multiplier == pytest.approx(1.4 / 3)
    assert config.attention_multiplier == pytest.approx(16 ** -0.5)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["scale_emb"], saved["dim_model_base"], saved["scale_depth"]) == (12, 16, 1.4)
    again = AutoConfig.from_pretrained(tmp_path)
    assert (again.embedding_multiplier, again.logits_scaling) == (12, 4)


def test_stablelm_reads_epoch_field_names():
    config = get_backbone("stablelm-2").config_class(rope_pct=0.25, norm_eps=1e-6, use_qkv_bias=True, hidden_size=64, num_attention_heads=4)
    assert config.rope_parameters["partial_rotary_factor"] == 0.25 and config.layer_norm_eps == 1e-6
    saved = config.to_dict()
    assert saved["rope_pct"] == 0.25 and saved["norm_eps"] == 1e-6 and saved["partial_rotary_factor"] == 0.25


def test_unfrozen_tower_weights_come_from_the_checkpoint(siglip_tower, tmp_path):
    model = build_model("phi-2", siglip_tower, unfreeze_vision_tower=True)
    with torch.no_grad():
        for p in model.get_vision_tower().parameters():
            p.add_(0.5)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for (name, a), b in zip(model.get_vision_tower().state_dict().items(), reloaded.get_vision_tower().state_dict().values()):
        assert torch.equal(a, b), name
    # Without the flag the checkpoint's copy is ignored and the tower comes from mm_vision_tower.
    config = json.loads((tmp_path / "config.json").read_text())
    config["unfreeze_vision_tower"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    fresh = build_model("phi-2", siglip_tower)
    for a, b in zip(plain.get_vision_tower().state_dict().values(), fresh.get_vision_tower().state_dict().values()):
        assert torch.equal(a, b)


def test_continuous_training_loads_tower_from_checkpoint(siglip_tower, tmp_path):
    model = build_model("qwen1.5-1.8b", siglip_tower)
    with torch.no_grad():
        for p in model.get_vision_tower().parameters():
            p.mul_(-1)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["continuous_training"] = True  # users add this by hand to a merged model
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.continuous_training is False
    for a, b in zip(model.get_vision_tower().state_dict().values(), reloaded.get_vision_tower().state_dict().values()):
        assert torch.equal(a, b)


def test_image_placeholder_without_images_is_an_error(siglip_tower):
    model = build_model("phi-2", siglip_tower)
    ids = random_prompt(6, 1, 0)[None]
    with pytest.raises(ValueError, match="placeholders .* but no images"):
        model(ids)
    with pytest.raises(ValueError, match="placeholders .* but no images"):
        model.generate(ids, max_new_tokens=2)
    with pytest.raises(ValueError, match="2 image\\(s\\) were given for 1 <image> placeholder"):
        model(torch.cat([ids, ids[:, :3].clamp(min=0)], 1), images=random_pixels(2, 0))


def test_generate_rejects_an_image_without_placeholder(siglip_tower):
    model = build_model("phi-2", siglip_tower)
    text_only = random_prompt(6, 0, 0)[None]
    with pytest.raises(ValueError, match="1 image\\(s\\) were given for 0 <image> placeholder"):
        model.generate(text_only, images=random_pixels(1, 0), max_new_tokens=2)


def test_text_only_model_rejects_images():
    model = build_model("llama3-8b", None)
    with pytest.raises(ValueError, match="without a vision tower"):
        model(random_prompt(6, 1, 0)[None], images=random_pixels(1, 0))


def test_tower_dtype_follows_the_model(siglip_tower):
    model = build_model("phi-2", siglip_tower).to(torch.bfloat16)
    ids = random_prompt(6, 1, 0)[None]
    out = model.generate(ids, images=random_pixels(1, 0), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 9)


def test_tower_chosen_by_config_not_by_path(tmp_path):
    # A SigLIP tower in a directory whose name says "clip" is still SigLIP: its config says so.
    tower = save_siglip_tower(tmp_path / "eva-clip-dir")
    model = build_model("phi-2", tower)
    assert type(model.get_vision_tower()).__name__ == "SiglipVisionTower"


@pytest.mark.parametrize("model_type", ["phi-2", "llama3-8b"])
def test_static_cache_generation(model_type, siglip_tower):
    """A static KV cache (what compiled decoding needs) is sized for the spliced prompt and gives the
    dynamic cache's tokens, batched too."""
    model = build_model(model_type, siglip_tower)
    rows, pixels, _ = _mixed_batch()
    ids, mask = left_pad(rows)
    dynamic = greedy(model, ids, pixels, attention_mask=mask)
    static = model.generate(
        ids, images=pixels, attention_mask=mask, do_sample=False, max_new_tokens=6, min_new_tokens=6,
        cache_implementation="static",
    )[:, ids.shape[1] :]
    assert torch.equal(static, dynamic)


def test_phi_gelu_runs_as_one_kernel(siglip_tower):
    from transformers.activations import GELUTanh

    model = build_model("phi-2", siglip_tower)
    assert isinstance(model.model.layers[0].mlp.activation_fn, GELUTanh)
    x = torch.linspace(-6, 6, 1001)
    from transformers.activations import NewGELUActivation

    torch.testing.assert_close(GELUTanh()(x), NewGELUActivation()(x), atol=1e-6, rtol=0)


def test_block_growing_cache_matches_the_dynamic_cache(siglip_tower):
    """generate's default cache gives transformers' DynamicCache results, with beams (which reorder
    and repeat the cache) too."""
    from transformers import DynamicCache

    from bunny.model.kv_cache import BLOCK, BlockGrowingLayer

    model = build_model("qwen1.5-1.8b", siglip_tower)
    rows, pixels, _ = _mixed_batch()
    ids, mask = left_pad(rows)
    for options in (dict(do_sample=False), dict(num_beams=3, do_sample=False)):
        ours = model.generate(ids, images=pixels, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, **options)
        theirs = model.generate(
            ids, images=pixels, attention_mask=mask, max_new_tokens=6, min_new_tokens=6,
            cache=DynamicCache(config=model.config), **options,
        )
        assert torch.equal(ours, theirs)
    # Growth past a block boundary keeps what was written.
    layer = BlockGrowingLayer()
    chunks = [torch.randn(2, 3, n, 4) for n in (BLOCK - 1, 1, 1, BLOCK + 5)]
    for chunk in chunks:
        keys, values = layer.update(chunk, -chunk)
    assert torch.equal(keys, torch.cat(chunks, dim=2)) and torch.equal(values, -keys)
    layer.crop(-3)
    keys, _ = layer.update(chunks[0][:, :, :2], chunks[0][:, :, :2])
    assert torch.equal(keys, torch.cat([torch.cat(chunks, dim=2)[:, :, :-3], chunks[0][:, :, :2]], dim=2))
