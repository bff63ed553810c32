"""The llama.cpp mmproj export (bunny.export.gguf_mmproj) on tiny SigLIP and CLIP Bunny models.

Files are read back with gguf's own `GGUFReader` and checked against the model: every metadata key
clip.cpp's loader reads, in the value type its getters require; every tensor's name, type, shape and
values; the blocks feature layer -2 needs and nothing else. Names and keys are spelled out here as
literals, independently of the module's use of gguf-py's constants. An oracle then runs clip.cpp's
LLaVA graph, as llama.cpp's sources describe it, on the file alone and must reproduce Bunny's
projected features. (llama.cpp build 11434's own clip.cpp, built from source by hand, agrees with it to
~1e-3 on these files; that C++ build is too slow for this suite.)

Shapes: GGUF records a tensor's dims fastest-varying first (ggml's `ne`), the reverse of torch's
order, and `GGUFReader` reports them that way in `ReaderTensor.shape`, while `ReaderTensor.data`
is a numpy array in torch's order (raw bytes for BF16, which numpy lacks).

Run as: python -m pytest -q tests/test_export_gguf.py
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bunny.export.gguf_mmproj import write_mmproj
from tiny import build_model, random_pixels

TOWERS = ("siglip", "clip")
LLMS = {"phi-2": {}, "llama3-8b": {"hidden_size": 48}}  # projection_dim 32 and 48
DTYPES = {torch.float16: 1, torch.float32: 0, torch.bfloat16: 32}  # -> general.file_type (llama_ftype)
# transformers encoder-layer module -> llama.cpp block tensor
BLOCK = {
    "layer_norm1": "ln1", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_out", "layer_norm2": "ln2", "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down",
}


def make_model(request: pytest.FixtureRequest, tower: str, llm: str = "phi-2", **overrides: Any) -> Any:
    return build_model(llm, request.getfixturevalue(f"{tower}_tower"), **LLMS[llm], **overrides)


def export(model: Any, directory: Any, dtype: torch.dtype = torch.float16) -> gguf.GGUFReader:
    path = os.path.join(directory, "mmproj.gguf")
    write_mmproj(model, path, dtype=dtype)
    return gguf.GGUFReader(path)


def metadata(reader: gguf.GGUFReader) -> dict[str, tuple[tuple[str, ...], Any]]:
    """key -> (value type names, e.g. ('ARRAY', 'INT32'), value)."""
    return {
        name: (tuple(gguf.GGUFValueType(t).name for t in field.types), field.contents())
        for name, field in reader.fields.items() if not name.startswith("GGUF.")
    }


def values(tensor: Any) -> torch.Tensor:
    """A reader tensor's values in torch's dim order and its own dtype."""
    data = torch.from_numpy(np.array(tensor.data))
    if tensor.tensor_type == gguf.GGMLQuantizationType.BF16:
        data = data.view(torch.bfloat16)  # raw bytes [..., 2 * last] -> [..., last]
    return data


def expected_tensors(model: Any, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.dtype]]:
    """Every tensor the file must hold: name -> (source weight, dtype it is stored in)."""
    vision = model.get_vision_tower().vision_tower.vision_model
    emb, patch = vision.embeddings, vision.embeddings.patch_embedding
    expected = {
        "v.patch_embd.weight": (patch.weight, torch.float16 if dtype == torch.float16 else torch.float32),
        "v.position_embd.weight": (emb.position_embedding.weight, torch.float32),
    }
    if patch.bias is not None:  # SigLIP
        expected["v.patch_embd.bias"] = (patch.bias, torch.float32)
    if hasattr(emb, "class_embedding"):  # CLIP
        expected["v.class_embd"] = (emb.class_embedding, torch.float32)
        expected["v.pre_ln.weight"] = (vision.pre_layrnorm.weight, torch.float32)
        expected["v.pre_ln.bias"] = (vision.pre_layrnorm.bias, torch.float32)
    # Feature layer -2: the output of all blocks but the last, so the last block is left out.
    for i, layer in enumerate(vision.encoder.layers[:-1]):
        for module_name, short in BLOCK.items():
            module = layer.get_submodule(module_name)
            expected[f"v.blk.{i}.{short}.weight"] = (module.weight, dtype if module.weight.ndim == 2 else torch.float32)
            expected[f"v.blk.{i}.{short}.bias"] = (module.bias, torch.float32)
    projector = model.get_model().mm_projector
    for index in (0, 2):
        expected[f"mm.{index}.weight"] = (projector[index].weight, dtype)
        expected[f"mm.{index}.bias"] = (projector[index].bias, torch.float32)
    return expected


# -- metadata --------------------------------------------------------------------------------------
@pytest.mark.parametrize("llm", LLMS)
@pytest.mark.parametrize("tower_kind", TOWERS)
def test_metadata_is_what_clip_cpp_reads(request, tmp_path, tower_kind, llm):
    model = make_model(request, tower_kind, llm)
    tower = model.get_vision_tower()
    config, processor = tower.config, tower.image_processor
    blocks = config.num_hidden_layers - 1
    meta = metadata(export(model, tmp_path))
    u32, boolean = ("UINT32",), ("BOOL",)
    expected = {
        "general.architecture": (("STRING",), "clip"),
        "general.type": (("STRING",), "mmproj"),
        "general.file_type": (u32, 1),
        "clip.projector_type": (("STRING",), "mlp"),
        "clip.has_vision_encoder": (boolean, True),
        # SigLIP's gelu_pytorch_tanh is ggml_gelu; CLIP's quick_gelu is clip.cpp's default gelu_quick.
        "clip.use_gelu": (boolean, tower_kind == "siglip"),
        "clip.vision.image_size": (u32, config.image_size),
        "clip.vision.patch_size": (u32, config.patch_size),
        "clip.vision.embedding_length": (u32, config.hidden_size),
        "clip.vision.feed_forward_length": (u32, config.intermediate_size),
        "clip.vision.projection_dim": (u32, model.config.hidden_size),
        "clip.vision.attention.head_count": (u32, config.num_attention_heads),
        # Blocks 0 .. n-2 are stored and run; hidden_states index n-1 (0 = the encoder's input) is -2.
        "clip.vision.block_count": (u32, blocks),
        "clip.vision.feature_layer": (("ARRAY", "INT32"), [blocks]),
    }
    for key, value in expected.items():
        assert meta[key] == value, key
    assert meta["clip.vision.attention.layer_norm_epsilon"][0] == ("FLOAT32",)
    assert meta["clip.vision.attention.layer_norm_epsilon"][1] == pytest.approx(config.layer_norm_eps, rel=1e-6)
    for key, source in (("clip.vision.image_mean", processor.image_mean), ("clip.vision.image_std", processor.image_std)):
        assert meta[key][0] == ("ARRAY", "FLOAT32")
        assert meta[key][1] == pytest.approx(list(source), rel=1e-6)
    assert config.image_size == processor.crop_size["height"] == processor.crop_size["width"]


def test_projection_dim_and_widths_agree_with_the_tensors(request, tmp_path):
    model = make_model(request, "siglip", "llama3-8b")
    reader = export(model, tmp_path)
    meta, tensors = metadata(reader), {t.name: t for t in reader.tensors}
    # ne order: [in, out]
    assert int(tensors["mm.2.weight"].shape[1]) == meta["clip.vision.projection_dim"][1] == 48
    assert int(tensors["mm.0.weight"].shape[0]) == meta["clip.vision.embedding_length"][1]
    # clip.cpp swaps ffn_up/ffn_down when ffn_down's ne[0] equals n_embd (its legacy-file test).
    assert int(tensors["v.blk.0.ffn_down.weight"].shape[0]) == meta["clip.vision.feed_forward_length"][1]
    assert int(tensors["v.blk.0.ffn_up.weight"].shape[0]) == meta["clip.vision.embedding_length"][1]


# -- tensors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("tower_kind", TOWERS)
def test_every_tensor_name_type_shape_and_value(request, tmp_path, tower_kind, dtype):
    model = make_model(request, tower_kind)
    reader = export(model, tmp_path, dtype)
    assert metadata(reader)["general.file_type"][1] == DTYPES[dtype]
    expected = expected_tensors(model, dtype)
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(reader.tensors)  # no duplicate names
    assert set(tensors) == set(expected)  # nothing left out, nothing extra (post-LN, head, last block)
    ggml_type = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    for name, (source, stored) in expected.items():
        tensor = tensors[name]
        assert tensor.tensor_type.name == ggml_type[stored], name
        assert [int(n) for n in tensor.shape] == list(reversed(source.shape)), name
        read = values(tensor)
        assert read.dtype == stored and read.shape == source.shape, name
        assert torch.equal(read, source.detach().to(stored)), name
        if stored == torch.float32:
            assert torch.equal(read, source.detach()), name  # float32 weights are written exactly


def test_no_post_layernorm_head_or_last_block(request, tmp_path):
    model = make_model(request, "siglip")
    names = {t.name for t in export(model, tmp_path).tensors}
    last = model.get_vision_tower().config.num_hidden_layers - 1
    assert not any(n.startswith(("v.post_ln", f"v.blk.{last}.", "v.head")) for n in names)
    assert any(n.startswith(f"v.blk.{last - 1}.") for n in names)


# -- the file computes Bunny's features -----------------------------------------------------------
def llava_graph(reader: gguf.GGUFReader, pixels: torch.Tensor) -> torch.Tensor:
    """clip.cpp's LLaVA graph (tools/mtmd/models/llava.cpp, build_inp, the `mlp` projector) run on the
    file's tensors and metadata alone: `[B, 3, H, W]` -> `[B, N, projection_dim]`.

    The class token goes first, as in transformers and in llama.cpp before its graph refactor
    (llama.cpp issue #25814). ggml_gelu is the tanh approximation, ggml_gelu_quick x * sigmoid(1.702 x).
    """
    meta = {k: v for k, (_, v) in metadata(reader).items()}
    w = {t.name: values(t).float() for t in reader.tensors}
    eps, heads = meta["clip.vision.attention.layer_norm_epsilon"], meta["clip.vision.attention.head_count"]
    use_gelu = meta["clip.use_gelu"]
    x = F.conv2d(pixels, w["v.patch_embd.weight"], w.get("v.patch_embd.bias"), stride=meta["clip.vision.patch_size"])
    x = x.flatten(2).transpose(1, 2)  # [B, n_patches, C]
    has_cls = "v.class_embd" in w
    if has_cls:
        x = torch.cat([w["v.class_embd"].expand(x.shape[0], 1, -1), x], dim=1)
    x = x + w["v.position_embd.weight"][: x.shape[1]]

    def norm(t: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:], w[f"{prefix}.weight"], w[f"{prefix}.bias"], eps)

    def linear(t: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.linear(t, w[f"{prefix}.weight"], w[f"{prefix}.bias"])

    if "v.pre_ln.weight" in w:
        x = norm(x, "v.pre_ln")
    # llava.cpp runs blocks below the deepest feature layer, then v.post_ln if the file has one.
    for i in range(max(meta["clip.vision.feature_layer"])):
        b = f"v.blk.{i}"
        h = norm(x, f"{b}.ln1")
        q, k, v = (linear(h, f"{b}.attn_{s}").unflatten(-1, (heads, -1)).transpose(1, 2) for s in "qkv")
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
        x = x + linear(attn.transpose(1, 2).flatten(2), f"{b}.attn_out")
        h = linear(norm(x, f"{b}.ln2"), f"{b}.ffn_up")
        h = F.gelu(h, approximate="tanh") if use_gelu else h * torch.sigmoid(1.702 * h)
        x = x + linear(h, f"{b}.ffn_down")
    assert "v.post_ln.weight" not in w
    x = x[:, 1:] if has_cls else x  # clip.cpp's "patches" rows skip the class token
    return linear(F.gelu(linear(x, "mm.0"), approximate="tanh"), "mm.2")


@pytest.mark.parametrize("tower_kind", TOWERS)
def test_llava_graph_on_the_file_reproduces_bunny_features(request, tmp_path, tower_kind):
    model = make_model(request, tower_kind, "llama3-8b")
    reader = export(model, tmp_path, torch.float32)
    pixels = random_pixels(2, seed=3)
    with torch.no_grad():
        bunny = model.get_model().mm_projector(model.get_vision_tower()(pixels))  # [2, 16, 48]
        ours = llava_graph(reader, pixels)
    assert ours.shape == bunny.shape
    # Only the projector's GELU differs: ggml's tanh approximation against Bunny's exact erf.
    torch.testing.assert_close(ours, bunny, rtol=0, atol=2e-3)


# -- refusals and atomic writes --------------------------------------------------------------------
def test_unsupported_projector_is_refused_before_writing(request, tmp_path):
    model = make_model(request, "siglip", projector="linear")
    with pytest.raises(ValueError, match="'linear'"):
        write_mmproj(model, tmp_path / "mmproj.gguf")
    assert os.listdir(tmp_path) == []


def test_unsupported_dtype_is_refused(request, tmp_path):
    model = make_model(request, "clip")
    with pytest.raises(ValueError, match="torch.int8"):
        write_mmproj(model, tmp_path / "mmproj.gguf", dtype=torch.int8)
    assert os.listdir(tmp_path) == []


def test_s2_tower_is_refused(request, tmp_path):
    model = make_model(request, "siglip", use_s2=True, s2_scales="16,32", mm_hidden_size=32)
    with pytest.raises(ValueError, match="S2 multi-scale SigLIP.*no equivalent"):
        write_mmproj(model, tmp_path / "mmproj.gguf")
    assert os.listdir(tmp_path) == []


def test_eva_clip_tower_is_refused(eva_tower, tmp_path):
    model = build_model("phi-2", eva_tower)
    with pytest.raises(ValueError, match="EVA02_CLIP_tiny.*EVA-CLIP.*no equivalent"):
        write_mmproj(model, tmp_path / "mmproj.gguf")
    assert os.listdir(tmp_path) == []


def test_warns_where_llama_cpp_sees_other_pixels(request, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bunny.export.gguf_mmproj"):
        export(make_model(request, "siglip"), tmp_path)
    assert "(122, 116, 104) where Bunny pads with (127, 127, 127)" in caplog.text  # SigLIP's mean is 0.5
    assert "#25814" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bunny.export.gguf_mmproj"):
        export(make_model(request, "clip"), tmp_path)
    assert "#25814" in caplog.text and "pads non-square" not in caplog.text  # CLIP's mean * 255 is llama.cpp's colour


def test_failed_write_leaves_no_file_and_keeps_an_earlier_one(request, tmp_path, monkeypatch):
    model = make_model(request, "siglip")
    target = tmp_path / "mmproj.gguf"

    def fail(self, *args, **kwargs):
        raise OSError("disk full")  # after the header and metadata are on disk

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="disk full"):
        write_mmproj(model, target)
    assert os.listdir(tmp_path) == []

    monkeypatch.undo()
    write_mmproj(model, target)
    before = target.read_bytes()
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError):
        write_mmproj(model, target, dtype=torch.float32)
    assert os.listdir(tmp_path) == ["mmproj.gguf"] and target.read_bytes() == before
