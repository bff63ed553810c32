"""Load a Bunny checkpoint and write it in an export format, atomically (see `python -m bunny.export`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any

import torch

from bunny.export.hf_llava import (
    add_image_token,
    build_processor,
    chat_template,
    check_exportable,
    check_portable_tokenizer,
    llava_config,
    llava_weights,
)
from bunny.export.text import native_config, text_weights
from bunny.model.backbones import get_backbone
from bunny.util.utils import UMASK, atomic_directory

FORMATS = ("hf-llava", "gguf")
MARKER = "export_info.json"  # provenance; also how an earlier export is recognised for --overwrite
MAX_SHARD_SIZE = "5GB"


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    model_path: str
    model_type: str
    output_dir: str
    model_base: str | None = None
    format: str = "hf-llava"
    dtype: str = "auto"  # float32 | float16 | bfloat16 | auto (the checkpoint's own)
    conv_mode: str | None = None  # default: the model type's template
    device: str = "cpu"


def checkpoint_dtype(model_path: str, model_type: str) -> torch.dtype:
    """The dtype a checkpoint's config says its weights have (`dtype`/`torch_dtype`), else float32."""
    from bunny.model.builder import read_config

    dtype = getattr(read_config(model_path, model_type), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def export(request: ExportRequest, overwrite: bool = False) -> str:
    """Load the checkpoint, write the export to `request.output_dir`; returns the directory's path."""
    from bunny.model.builder import load_pretrained_model, read_config
    from bunny.util.utils import torch_init_skipped

    if request.format not in FORMATS:
        raise ValueError(f"unknown export format {request.format!r}; choose one of {', '.join(FORMATS)}")
    if request.format == "gguf" and importlib.util.find_spec("gguf") is None:
        raise ValueError("--format gguf writes the mmproj file with the gguf package: pip install 'bunny[export]'")
    target = "a transformers Llava model" if request.format == "hf-llava" else "llama.cpp's CLIP (mmproj) format"
    check_exportable(read_config(request.model_path, request.model_type), target)  # before any weight is read
    dtype = checkpoint_dtype(request.model_path, request.model_type) if request.dtype == "auto" else getattr(torch, request.dtype)
    template = request.conv_mode or get_backbone(request.model_type).template
    chat_template(template)  # an unusable template fails here, before the load
    with torch_init_skipped():
        tokenizer, model, _, _ = load_pretrained_model(
            request.model_path, request.model_base, None, request.model_type,
            device=request.device, device_map={"": request.device}, dtype=dtype,
        )
    check_portable_tokenizer(tokenizer)
    with atomic_directory(request.output_dir, MARKER, overwrite) as directory:
        os.chmod(directory, 0o777 & ~UMASK)  # a model directory others may read, as `mkdir` would make it
        if request.format == "hf-llava":
            details = write_hf_llava(model, tokenizer, template, directory)
        else:
            tokenizer_source = request.model_base if request.model_base is not None else request.model_path
            details = write_gguf(model, tokenizer, template, directory, tokenizer_source)
        info = {**dataclasses.asdict(request), "dtype": str(dtype).removeprefix("torch."), "template": template, **details}
        info.update(versions())
        with open(os.path.join(directory, MARKER), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
    return os.path.abspath(request.output_dir)


def versions() -> dict[str, str]:
    import transformers

    from bunny import __version__

    return {"bunny_version": __version__, "transformers_version": transformers.__version__, "torch_version": torch.__version__}


def generation_config(model: Any, tokenizer: Any, template: str, suppress: list[int] | None = None) -> Any:
    """The model's generation config ending replies where Bunny does: the model type's eos, and the
    template's stop string where it is one token; `suppress` ids are never generated."""
    from bunny.conversation import get_conv_template

    config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    stops = [tokenizer.eos_token_id]
    stop_id = tokenizer.convert_tokens_to_ids(get_conv_template(template).stop_str)
    if isinstance(stop_id, int) and stop_id != tokenizer.unk_token_id and stop_id not in stops:
        stops.append(stop_id)
    config.eos_token_id = stops[0] if len(stops) == 1 else stops
    config.pad_token_id = model.generation_config.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    if suppress:
        config.suppress_tokens = list(suppress)
    return config


def _save_weights(weights: dict[str, torch.Tensor], directory: str, dtype: torch.dtype) -> None:
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(
        {name: tensor.detach().to(device="cpu", dtype=dtype) for name, tensor in weights.items()},
        directory, max_shard_size=MAX_SHARD_SIZE,
    )


def write_hf_llava(model: Any, tokenizer: Any, template: str, directory: str) -> dict[str, Any]:
    """A transformers Llava directory: config, safetensors (hub layout), processor, tokenizer with
    `<image>` and the chat template, generation config."""
    image_id = add_image_token(tokenizer)
    processor = build_processor(model, tokenizer, template)
    config = llava_config(model, image_id)
    _save_weights(llava_weights(model, image_id + 1), directory, model.dtype)
    config.save_pretrained(directory)
    processor.save_pretrained(directory)
    # preprocessor_config.json too: what transformers 4.x (and engines pinned to it) read the image
    # processor from; transformers 5 reads processor_config.json
    processor.image_processor.save_pretrained(directory)
    generation_config(model, tokenizer, template, suppress=[image_id]).save_pretrained(directory)
    return {"image_token_id": image_id, "image_seq_length": config.image_seq_length}


# Tokenizer files llama.cpp's converter reads that `save_pretrained` of a fast tokenizer may not
# write: phi-3's and other SentencePiece vocabularies (its Phi3 and Llama paths require it).
SENTENCEPIECE_FILES = ("tokenizer.model",)


def write_gguf(model: Any, tokenizer: Any, template: str, directory: str, tokenizer_source: str | None = None) -> dict[str, Any]:
    """The LLM as a native transformers checkpoint (for llama.cpp's `convert_hf_to_gguf.py`) and the
    tower + projector as `mmproj-model-<f16|f32>.gguf`. `tokenizer_source` is the checkpoint the
    tokenizer came from: a SentencePiece model there is copied along."""
    import shutil

    from bunny.model.builder import local_or_hub_file

    from bunny.export.gguf_mmproj import write_mmproj

    vocab_size = model.get_input_embeddings().weight.shape[0]
    config = native_config(model, vocab_size)
    _save_weights(text_weights(model, vocab_size), directory, model.dtype)
    config.save_pretrained(directory)
    tokenizer.chat_template = chat_template(template)
    tokenizer.save_pretrained(directory)
    for name in SENTENCEPIECE_FILES:
        found = local_or_hub_file(tokenizer_source, name) if tokenizer_source else None
        if found and not os.path.exists(os.path.join(directory, name)):
            shutil.copyfile(found, os.path.join(directory, name))
    generation_config(model, tokenizer, template).save_pretrained(directory)
    mmproj_dtype = torch.float32 if model.dtype == torch.float32 else torch.float16
    mmproj = f"mmproj-model-{'f32' if mmproj_dtype == torch.float32 else 'f16'}.gguf"
    write_mmproj(model, os.path.join(directory, mmproj), dtype=mmproj_dtype)
    return {"mmproj": mmproj, "llm_architecture": config.architectures[0]}
