"""Command-line arguments of `bunny/train/train.py`: the original's flags, with their meanings.

Every stock `transformers.TrainingArguments` flag is accepted too. Flags of the original scripts
that transformers 5 no longer takes as they are written are translated before parsing:
`--evaluation_strategy` becomes `--eval_strategy`, `--warmup_ratio R` becomes `--warmup_steps R`
(a float below 1 is a ratio there), and `--tf32 True` is dropped with a warning where CUDA is
absent (transformers rejects it there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import transformers

from bunny.data.preprocess import MISMATCH_MODES
from bunny.model.backbones import MODEL_TYPES
from bunny.model.projector import PROJECTOR_TYPES_HELP

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "base LLM, or a merged Bunny model to finetune further"})
    model_type: str | None = field(default=None, metadata={"help": f"LLM type: one of {', '.join(MODEL_TYPES)}"})
    version: str | None = field(default=None, metadata={"help": "conversation template: plain, bunny, phi3, minicpm, llama (unknown: default)"})
    freeze_backbone: bool = field(default=False, metadata={"help": "freeze the LLM (decoder and lm_head)"})
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "pretraining: train only the projector, save only mm_projector.bin"})
    vision_tower: str | None = field(default=None, metadata={"help": "vision encoder: hub id, local directory or EVA-CLIP .pt file"})
    vision_tower_type: str | None = field(default=None, metadata={"help": "siglip, clip or eva_clip when the tower's name does not say"})
    unfreeze_vision_tower: bool = field(default=False, metadata={"help": "train the vision tower too"})
    use_s2: bool = field(default=False, metadata={"help": "multi-scale S2 SigLIP features"})
    s2_scales: str = field(default="384,768,1152", metadata={"help": "S2 image sizes, smallest first (saved to the config)"})
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={"help": "mm_projector.bin from pretraining to start the projector from"})
    mm_projector_type: str = field(default="mlp2x_gelu", metadata={"help": PROJECTOR_TYPES_HELP})

    def __post_init__(self) -> None:
        if self.model_name_or_path is None:
            raise ValueError("--model_name_or_path is required")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"Unknown Model Type {self.model_type!r}; --model_type must be one of {', '.join(MODEL_TYPES)}")
        if not self.vision_tower:
            raise ValueError("--vision_tower is required")


@dataclass
class DataArguments:
    data_path: str | None = field(default=None, metadata={"help": "training JSON (LLaVA conversation format)"})
    lazy_preprocess: bool = field(default=False, metadata={"help": "accepted for compatibility; samples are always prepared lazily"})
    is_multimodal: bool = field(default=True, metadata={"help": "normalise <image> markers and give text-only samples a zero image"})
    image_folder: str | None = field(default=None, metadata={"help": "root of the samples' image paths"})
    image_aspect_ratio: str | None = field(default=None, metadata={"help": "pad: pad to square with the mean colour; else the processor's resize"})
    tokenization_mismatch: str = field(
        default="error",
        metadata={"help": "error: stop on a sample whose labels the template cannot build; mask: train on with it fully masked, as the original did"},
    )

    def __post_init__(self) -> None:
        if self.data_path is None:
            raise ValueError("--data_path is required")
        if self.tokenization_mismatch not in MISMATCH_MODES:
            raise ValueError(f"--tokenization_mismatch must be one of {MISMATCH_MODES}")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None, metadata={"help": "cache directory for from_pretrained"})
    # The original's default was adamw_torch: the same AdamW, one kernel per tensor (~4x slower step on a CPU).
    optim: str = field(default="adamw_torch_fused", metadata={"help": "optimizer (as transformers' --optim); default fused AdamW"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep the images column"})
    freeze_mm_mlp_adapter: bool = field(default=False, metadata={"help": "keep the projector frozen"})
    mpt_attn_impl: str | None = field(default="triton", metadata={"help": "accepted for compatibility; unused"})
    model_max_length: int = field(default=512, metadata={"help": "maximum sequence length (tokens, and positions after the image splice)"})
    double_quant: bool = field(default=True, metadata={"help": "4-bit double quantisation"})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit quantisation type: fp4 or nf4"})
    bits: int = field(default=16, metadata={"help": "4 or 8: load the LLM quantised (QLoRA); 16: not quantised"})
    lora_enable: bool = field(default=False, metadata={"help": "train LoRA adapters instead of the full LLM"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_weight_path: str = field(default="", metadata={"help": "accepted for compatibility; unused"})
    lora_bias: str = field(default="none", metadata={"help": "LoRA bias: none, all or lora_only"})
    mm_projector_lr: float | None = field(default=None, metadata={"help": "learning rate of the projector (and an unfrozen tower)"})
    group_by_modality_length: bool = field(default=False, metadata={"help": "batches of one modality (image or text-only) at a time"})

    def __post_init__(self) -> None:
        if self.bits not in (4, 8, 16):
            raise ValueError(f"--bits must be 4, 8 or 16, got {self.bits}")
        if self.quant_type not in ("fp4", "nf4"):
            raise ValueError(f"--quant_type must be fp4 or nf4, got {self.quant_type!r}")
        if self.lora_bias not in ("none", "all", "lora_only"):
            raise ValueError(f"--lora_bias must be none, all or lora_only, got {self.lora_bias!r}")
        super().__post_init__()


RENAMED_FLAGS = {"--evaluation_strategy": "--eval_strategy", "--warmup_ratio": "--warmup_steps"}


def translate_legacy_flags(argv: list[str]) -> list[str]:
    """Rewrite the original scripts' flags that transformers 5 renamed or rejects on this machine."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in RENAMED_FLAGS:
            out.append(RENAMED_FLAGS[name] + eq + value)
        elif name == "--tf32" and not torch.cuda.is_available():
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i += 1
            logger.warning("--tf32 ignored: it needs a CUDA GPU")
        else:
            out.append(arg)
        i += 1
    return out


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    import sys

    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    argv = translate_legacy_flags(list(sys.argv[1:] if argv is None else argv))
    return parser.parse_args_into_dataclasses(argv)
