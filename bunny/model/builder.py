"""`load_pretrained_model`: every way a Bunny checkpoint is loaded for inference.

Modes, decided by what `model_path` holds:
- full checkpoint (full finetune output or merged LoRA): `model_path` alone;
- LoRA output (`adapter_config.json` + `non_lora_trainables.bin`) on top of `model_base`;
- projector only (`mm_projector.bin` from pretraining) on top of `model_base`.
`unfreeze_vision_tower` checkpoints also carry tuned tower weights, which replace the ones read
from `mm_vision_tower`; 8/4-bit loading goes through bitsandbytes.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, BitsAndBytesConfig

from bunny.model.backbones import Backbone, check_checkpoint_type, get_backbone
from bunny.model.checkpoint_files import MissingWeightsError, load_projector_weights, load_state_file, tensor_names
from bunny.model.language_model import VISION_TOWER_PREFIX
from bunny.util.tokens import get_model_name_from_path

logger = logging.getLogger(__name__)

LORA_ADAPTER_FILES = ("adapter_config.json",)


def local_or_hub_file(path: str, filename: str) -> str | None:
    """`path/filename` for a local directory, else the file fetched from the hub repo `path` (None if absent)."""
    local = os.path.join(path, filename)
    if os.path.isdir(path):
        return local if os.path.exists(local) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    try:
        return hf_hub_download(repo_id=path, filename=filename)
    except EntryNotFoundError:
        return None


def is_lora_checkpoint(model_path: str, model_name: str) -> bool:
    """A LoRA output is recognised by its adapter files; for hub ids that can't be listed, by the name."""
    if os.path.isdir(model_path):
        return any(os.path.exists(os.path.join(model_path, f)) for f in LORA_ADAPTER_FILES)
    return "lora" in model_name.lower()


def _normalise_non_lora_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT prefixes (`base_model.model.model.mm_projector...`) -> model keys (`model.mm_projector...`)."""
    state = {(k[len("base_model.") :] if k.startswith("base_model.") else k): v for k, v in state.items()}
    if any(k.startswith("model.model.") for k in state):
        state = {(k[len("model.") :] if k.startswith("model.") else k): v for k, v in state.items()}
    return state


MULTIMODAL_KEYWORDS = ("mm_projector", "vision_tower", "vision_resampler")


def exclude_multimodal_modules(target_modules: list[str] | set[str] | str) -> list[str] | str:
    """PEFT matches a list of names by suffix anywhere in the model, so `q_proj`/`fc1` would also
    hit the vision tower; as a regex, the same names restricted to modules outside tower/projector."""
    if isinstance(target_modules, str):
        return target_modules
    excluded = "|".join(MULTIMODAL_KEYWORDS)
    names = "|".join(re.escape(name) for name in sorted(target_modules))
    return rf"^(?!.*({excluded}))(.*\.)?({names})$"


# Kept in full precision: the small projector and tower cost little and quantising them costs accuracy.
NOT_QUANTISED = ["model.mm_projector", "model.vision_tower", "lm_head"]


def _quantization_kwargs(load_8bit: bool, load_4bit: bool, dtype: torch.dtype) -> dict[str, Any]:
    if load_8bit:
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=NOT_QUANTISED)}
    if load_4bit:
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True,
                bnb_4bit_quant_type="nf4",
                llm_int8_skip_modules=NOT_QUANTISED,
            )
        }
    return {}


PROJECTOR_PREFIX = "model.mm_projector."


def _load_on_base(model_base: str, config: Any, backbone: Backbone, load_kwargs: dict[str, Any]):
    """The Bunny model of `config` with the LLM weights of `model_base`, and the projector keys the
    base lacked (a plain LLM has none; a Bunny model as base has its own), to be loaded by the caller."""
    model, info = backbone.model_class.from_pretrained(
        model_base, config=config, load_vision_tower=False, loaded_later=(PROJECTOR_PREFIX,),
        output_loading_info=True, **load_kwargs,
    )
    return model, {k for k in info["missing_keys"] if k.startswith(PROJECTOR_PREFIX)}


def _load_lora(model_path: str, model_base: str, backbone: Backbone, load_kwargs: dict[str, Any]):
    from peft import PeftModel

    config = AutoConfig.from_pretrained(model_path)
    if hasattr(config, "quantization_config"):
        # A QLoRA run records how its base was quantised for training; loading quantises only on
        # request (load_8bit/load_4bit), and the merge needs full-precision weights.
        del config.quantization_config
    model, projector_missing = _load_on_base(model_base, config, backbone, load_kwargs)
    if model.get_vision_tower() is not None:
        model.load_vision_tower()  # before the trainables, which may hold tuned tower weights
    trainables = local_or_hub_file(model_path, "non_lora_trainables.bin") or local_or_hub_file(
        model_path, "non_lora_trainables.safetensors"
    )
    if trainables is None:
        raise FileNotFoundError(f"LoRA checkpoint {model_path} has no non_lora_trainables.bin (projector weights)")
    state = _normalise_non_lora_keys(load_state_file(trainables))
    own = model.state_dict()
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        raise ValueError(f"{trainables} has weights this model does not have: {unknown[:5]}")
    absent = sorted(projector_missing - set(state))
    if absent:
        raise MissingWeightsError(f"{trainables} (with the base {model_base})", config, absent)
    model.load_state_dict(state, strict=False)
    logger.info("merging LoRA weights from %s", model_path)
    from peft import PeftConfig

    adapter_config = PeftConfig.from_pretrained(model_path)
    adapter_file = local_or_hub_file(model_path, "adapter_model.safetensors") or local_or_hub_file(
        model_path, "adapter_model.bin"
    )
    adapter_keys = tensor_names(adapter_file) if adapter_file else []
    if not any(keyword in key for key in adapter_keys for keyword in MULTIMODAL_KEYWORDS):
        # Names like q_proj/fc1 also occur in the tower, which must not get empty adapters; keep
        # them only where the run adapted the tower too (LoRA applied to a model that had one).
        adapter_config.target_modules = exclude_multimodal_modules(adapter_config.target_modules)
    model = PeftModel.from_pretrained(model, model_path, config=adapter_config)
    return model.merge_and_unload()


def _load_projector_only(model_path: str, model_base: str, backbone: Backbone, load_kwargs: dict[str, Any]):
    config = AutoConfig.from_pretrained(model_path)
    if getattr(config, "unfreeze_vision_tower", False):
        raise ValueError(
            f"{model_path} has unfreeze_vision_tower set but is not a LoRA checkpoint: load it without --model-base"
        )
    projector_file = local_or_hub_file(model_path, "mm_projector.bin") or local_or_hub_file(
        model_path, "mm_projector.safetensors"
    )
    if projector_file is None:
        raise FileNotFoundError(
            f"{model_path} is used with a base model but holds neither LoRA adapter files "
            f"(adapter_config.json) nor a projector (mm_projector.bin); to load a full checkpoint, drop --model-base"
        )
    model, _ = _load_on_base(model_base, config, backbone, load_kwargs)
    load_projector_weights(model.get_model().mm_projector, projector_file)  # every projector weight required
    return model


def _load_full(model_path: str, backbone: Backbone, load_kwargs: dict[str, Any]):
    return backbone.model_class.from_pretrained(model_path, load_vision_tower=False, **load_kwargs)


def context_length(config: Any) -> int:
    for field in ("max_sequence_length", "max_position_embeddings"):
        if (value := getattr(config, field, None)) is not None:
            return int(value)
    return 2048


def read_config(path: str, model_type: str, **overrides: Any) -> Any:
    """The config of the checkpoint at `path` (a Bunny model or the LLM it starts from) as the Bunny
    config class of `model_type`; a checkpoint of another LLM is refused (`check_checkpoint_type`).
    `cache_dir` is used for the download; other keyword arguments override config fields."""
    from transformers import PreTrainedConfig

    config_dict, _ = PreTrainedConfig.get_config_dict(path, cache_dir=overrides.pop("cache_dir", None))
    check_checkpoint_type(path, model_type, config_dict)
    # Read through the Bunny class directly: transformers' own reading warns on every base LLM that
    # its model_type ("phi") is not the class's ("bunny-phi").
    return get_backbone(model_type).config_class.from_dict(config_dict, **overrides)


def load_tokenizer(path: str, backbone: Backbone | None = None, **kwargs: Any) -> Any:
    """The tokenizer of the checkpoint at `path` (`kwargs` go to `AutoTokenizer.from_pretrained`),
    with the tokenizer code `backbone` trusts.

    Its config is read here: left to `AutoTokenizer`, a config whose class transformers can't build
    (a remote-code base LLM such as MiniCPM's) makes it fall back to a bare `PreTrainedConfig`, with
    a warning about a model "of type ``" on every load. The fallback is the same, without the warning.
    """
    from transformers import PreTrainedConfig

    trust_remote_code = bool(backbone and backbone.tokenizer_trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, cache_dir=kwargs.get("cache_dir"))
    except (ValueError, OSError):
        config = PreTrainedConfig()
    tokenizer = AutoTokenizer.from_pretrained(
        path, config=config, use_fast=True, trust_remote_code=trust_remote_code, **kwargs
    )
    disable_bpe_cleanup(tokenizer)
    return tokenizer


def disable_bpe_cleanup(tokenizer: Any) -> None:
    """transformers 5 ignores `clean_up_tokenization_spaces` for BPE and warns at every decode; say so up front."""
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if type(backend).__name__ == "BPE":
        tokenizer.clean_up_tokenization_spaces = False


def setup_tokenizer_for_generation(tokenizer: Any, model: Any, backbone: Backbone) -> None:
    """The special-token fixes the original applied at load time."""
    if backbone.eos_token is not None:
        eos_id = tokenizer.convert_tokens_to_ids(backbone.eos_token)
        if eos_id is None or eos_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {backbone.eos_token!r} token, which this model type uses as eos")
        tokenizer.eos_token = backbone.eos_token
        model.generation_config.pad_token_id = eos_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = model.generation_config.eos_token_id


def _load_kwargs(device: str, device_map: Any, load_8bit: bool, load_4bit: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`from_pretrained`'s arguments: the dtype (`torch_dtype`/`dtype`, float16 on CUDA and float32
    elsewhere by default), where the weights go, quantisation, and what else the caller passed."""
    dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
    if dtype is None:
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return {
        "dtype": dtype,
        "device_map": device_map if device == "cuda" else {"": device},
        **_quantization_kwargs(load_8bit, load_4bit, dtype),
        **kwargs,
    }


def load_pretrained_model(
    model_path: str,
    model_base: str | None,
    model_name: str | None,
    model_type: str,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: Any = "auto",
    device: str = "cuda",
    **kwargs: Any,
):
    """Load a Bunny checkpoint. Returns `(tokenizer, model, image_processor, context_len)`.

    `torch_dtype`/`dtype` default to float16 on CUDA and float32 elsewhere; other keyword
    arguments go to `from_pretrained` (e.g. `attn_implementation`).
    """
    backbone = get_backbone(model_type)
    model_name = model_name or get_model_name_from_path(model_path)
    load_kwargs = _load_kwargs(device, device_map, load_8bit, load_4bit, kwargs)
    lora = is_lora_checkpoint(model_path, model_name)
    if lora and model_base is None:
        if os.path.isdir(model_path):
            raise ValueError(f"{model_path} is a LoRA checkpoint (adapter_config.json); pass its base LLM as model_base")
        logger.warning("%s looks like a LoRA checkpoint but no model_base was given; loading it as a full model", model_path)
        lora = False
    for checkpoint in (model_path, model_base):
        if checkpoint is not None:
            check_checkpoint_type(checkpoint, model_type)
    tokenizer = load_tokenizer(model_base if model_base is not None else model_path, backbone)

    if lora:
        model = _load_lora(model_path, model_base, backbone, load_kwargs)
    elif model_base is not None:
        model = _load_projector_only(model_path, model_base, backbone, load_kwargs)
    else:
        model = _load_full(model_path, backbone, load_kwargs)
    model.resize_token_embeddings(len(tokenizer))

    image_processor = None
    tower = model.get_vision_tower()
    if tower is not None:
        if model.tower_weights_in_checkpoint and not lora:
            # The checkpoint carries the tuned tower; its absence is an error, not a silent fallback.
            model.load_vision_tower(model_path, strict=True)
        else:
            model.load_vision_tower()
        image_processor = tower.image_processor
    setup_tokenizer_for_generation(tokenizer, model, backbone)
    model.eval()
    return tokenizer, model, image_processor, context_length(model.config)


__all__ = ["load_pretrained_model", "is_lora_checkpoint", "context_length", "VISION_TOWER_PREFIX"]
