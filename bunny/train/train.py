"""Train a Bunny model: projector pretraining, full or LoRA finetuning, continued finetuning.

Run as (the original's scripts and flags work unchanged):
    deepspeed bunny/train/train.py --deepspeed script/deepspeed/zero3.json --model_type phi-2 ...
    torchrun --nproc_per_node 2 bunny/train/train.py ...
    python bunny/train/train.py --model_name_or_path LLM --model_type phi-2 --version bunny \\
        --vision_tower TOWER --data_path data.json --image_folder images --output_dir out ...

Steps: load the tokenizer and the LLM (quantised for QLoRA), wrap it with LoRA if asked, attach the
vision tower and projector, decide what trains, train (resuming from the newest `checkpoint-*`
in `--output_dir` if there is one), and save what the stage produces (see bunny/train/trainer.py).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch
from torch import nn
from transformers import set_seed

from bunny.data.dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset
from bunny.data.preprocess import training_template
from bunny.data.tokenizer import load_training_tokenizer
from bunny.model.backbones import Backbone, get_backbone
from bunny.model.builder import NOT_QUANTISED, read_config
from bunny.model.checkpoint_files import load_projector_weights
from bunny.train.args import DataArguments, ModelArguments, TrainingArguments, parse_args
from bunny.train.trainable import describe_trainable, lora_target_modules, projector_state, save_bin
from bunny.train.trainer import BunnyTrainer, is_peft_model

logger = logging.getLogger("bunny.train")


def compute_dtype(args: TrainingArguments) -> torch.dtype:
    return torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32


def uses_master_weights(args: TrainingArguments) -> bool:
    """`--bf16 True` on the CPU without DeepSpeed: a bfloat16 model stepped through float32 master
    weights, as DeepSpeed does, instead of float32 weights under autocast (master_weights.py)."""
    return args.bf16 and not args.deepspeed and args.bits == 16 and args.device.type == "cpu"


# -- model ---------------------------------------------------------------------------------------
def load_language_model(model_args: ModelArguments, args: TrainingArguments, backbone: Backbone, tokenizer: Any) -> nn.Module:
    """The LLM (or a merged Bunny model) as the Bunny class of its type, quantised when `--bits` says so."""
    kwargs: dict[str, Any] = {"cache_dir": args.cache_dir, "dtype": torch.float32}
    if args.bits in (4, 8):
        from transformers import BitsAndBytesConfig

        kwargs["device_map"] = {"": args.device}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=args.bits == 4,
            load_in_8bit=args.bits == 8,
            llm_int8_skip_modules=NOT_QUANTISED,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=compute_dtype(args),
            bnb_4bit_use_double_quant=args.double_quant,
            bnb_4bit_quant_type=args.quant_type,
        )
    overrides = {}
    if backbone.special_ids_from_tokenizer:
        overrides = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = read_config(model_args.model_name_or_path, model_args.model_type, cache_dir=args.cache_dir, **overrides)
    model = backbone.model_class.from_pretrained(model_args.model_name_or_path, config=config, **kwargs)
    model.config.use_cache = False
    return model


def wrap_with_lora(model: nn.Module, args: TrainingArguments) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        target_modules=lora_target_modules(model),
        lora_dropout=args.lora_dropout,
        bias=args.lora_bias,
        task_type="CAUSAL_LM",
    )
    if args.bits == 16 and (args.bf16 or args.fp16):
        model.to(compute_dtype(args))
    logger.info("adding LoRA adapters to %s", config.target_modules)
    return get_peft_model(model, config)


def initialize_vision_modules(model: nn.Module, model_args: ModelArguments, args: TrainingArguments) -> None:
    """Attach (or, for a Bunny model, reuse) the vision tower and projector; record them in the config."""
    config = model.config
    config.mm_vision_tower = model_args.vision_tower
    if model_args.vision_tower_type:
        config.mm_vision_tower_type = model_args.vision_tower_type
    config.use_s2 = model_args.use_s2
    if model_args.use_s2:
        config.s2_scales = model_args.s2_scales
    config.use_mm_proj = True
    if model.get_vision_tower() is None:  # a plain LLM: Bunny's modules as the flags say
        config.mm_projector_type = model_args.mm_projector_type
        model.attach_vision_modules(load_tower=True)
    else:  # a Bunny model trained on: its own tower and projector
        model.get_vision_tower().load_model()
        config.mm_hidden_size = model.get_vision_tower().hidden_size
    tower = model.get_vision_tower()
    embed = model.get_input_embeddings().weight
    model.get_model().mm_projector.to(device=embed.device).requires_grad_(True)
    if model_args.pretrain_mm_mlp_adapter:
        load_projector_weights(model.get_model().mm_projector, model_args.pretrain_mm_mlp_adapter)
    # A trained tower keeps float32 weights for its optimiser; a frozen one runs in the compute dtype.
    tower_dtype = torch.float32 if model_args.unfreeze_vision_tower else compute_dtype(args)
    tower.to(device=embed.device, dtype=tower_dtype)


def configure_trainable(model: nn.Module, model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> None:
    """Which parameters train in this stage, recorded in the config the way the original did."""
    config = model.config
    config.image_aspect_ratio = data_args.image_aspect_ratio
    config.tokenizer_padding_side = "right"
    config.tokenizer_model_max_length = args.model_max_length
    projector = model.get_model().mm_projector
    config.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
        projector.requires_grad_(True)
    config.freeze_mm_mlp_adapter = args.freeze_mm_mlp_adapter
    if args.freeze_mm_mlp_adapter:
        projector.requires_grad_(False)
    if args.bits in (4, 8):
        projector.to(dtype=compute_dtype(args))
    config.mm_projector_lr = args.mm_projector_lr
    config.unfreeze_vision_tower = model_args.unfreeze_vision_tower
    model.get_vision_tower().requires_grad_(model_args.unfreeze_vision_tower)


def fix_quantised_dtypes(model: nn.Module, args: TrainingArguments) -> None:
    """QLoRA: adapters in the compute dtype, norms in float32, float32 head/embeddings to bf16."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and args.bf16:
            module.to(torch.bfloat16)
        if "norm" in name:
            module.to(torch.float32)
        if ("lm_head" in name or "embed_tokens" in name) and hasattr(module, "weight"):
            if args.bf16 and module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def build_model(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments, tokenizer: Any) -> nn.Module:
    backbone = get_backbone(model_args.model_type)
    model = load_language_model(model_args, args, backbone, tokenizer)
    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
        model.lm_head.requires_grad_(False)  # the original left the head trainable
    if args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model.config.dtype = torch.float32 if args.fp16 else compute_dtype(args)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    if args.gradient_checkpointing:
        model.enable_input_require_grads()
    if args.lora_enable:
        model = wrap_with_lora(model, args)
    bunny = model.get_base_model() if is_peft_model(model) else model
    initialize_vision_modules(bunny, model_args, args)
    configure_trainable(bunny, model_args, data_args, args)
    if args.bits in (4, 8) and args.lora_enable:
        fix_quantised_dtypes(model, args)
    return model


# -- saving --------------------------------------------------------------------------------------
def latest_checkpoint(output_dir: str) -> str | None:
    found = [p for p in glob.glob(os.path.join(output_dir, "checkpoint-*")) if re.search(r"checkpoint-\d+$", p)]
    return max(found, key=lambda p: int(p.rsplit("-", 1)[1])) if found else None


def save_outputs(trainer: BunnyTrainer, model_args: ModelArguments, args: TrainingArguments) -> None:
    """What each stage leaves in `--output_dir` (train.md §4), written as the original wrote it."""
    output_dir = args.output_dir
    model = trainer.model
    if model_args.tune_mm_mlp_adapter:
        folder = os.path.basename(os.path.normpath(output_dir))
        if folder.startswith("checkpoint-"):
            # A run whose output directory is itself a checkpoint: projectors are collected per step.
            parent = os.path.dirname(os.path.normpath(output_dir))
            state = projector_state(model)
            if args.should_save:
                save_bin(state, os.path.join(parent, "mm_projector", f"{folder}.bin"))
        else:
            trainer.save_projector(output_dir)
        return
    trainer.save_model(output_dir)
    if is_peft_model(model):
        trainer.save_lora_extras(output_dir)


def init_deepspeed_on_cpu(args: TrainingArguments) -> None:
    """With `--use_cpu`, transformers sets up torch.distributed (gloo) but not DeepSpeed's own
    communicator, so ZeRO-3 would build its partitions for a world of one."""
    if args.deepspeed and args.use_cpu and args.world_size > 1:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def train(argv: list[str] | None = None) -> BunnyTrainer:
    model_args, data_args, args = parse_args(argv)
    init_deepspeed_on_cpu(args)
    # Before any weights are made: the projector and LoRA initialisations follow --seed (the Trainer
    # seeds only once the model exists, so they used to differ from run to run).
    set_seed(args.seed)
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    tokenizer = load_training_tokenizer(model_args.model_name_or_path, model_args.model_type, args.model_max_length, args.cache_dir)
    model = build_model(model_args, data_args, args, tokenizer)
    master_weights = uses_master_weights(args)
    if master_weights:
        logger.info("training in bfloat16 with float32 master weights in the optimiser")
        model.to(torch.bfloat16)
    bunny = model.get_base_model() if is_peft_model(model) else model
    logger.info("%s", describe_trainable(model))
    tower = bunny.get_vision_tower()

    dataset = LazySupervisedDataset(
        data_args.data_path,
        tokenizer,
        training_template(model_args.version),
        image_folder=data_args.image_folder,
        image_processor=tower.image_processor,
        image_aspect_ratio=data_args.image_aspect_ratio,
        is_multimodal=data_args.is_multimodal,
        tokenization_mismatch=data_args.tokenization_mismatch,
        image_tokens=bunny.image_token_count,
    )
    trainer = BunnyTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=dataset,
        data_collator=DataCollatorForSupervisedDataset(tokenizer),
        tune_mm_mlp_adapter=model_args.tune_mm_mlp_adapter,
        master_weights=master_weights,
    )
    resume = latest_checkpoint(args.output_dir)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    bunny.config.use_cache = True
    save_outputs(trainer, model_args, args)
    return trainer


def main() -> None:
    train()
    # Leave the process group explicitly: left to interpreter exit, the CPU (gloo/shm) teardown of a
    # two-process ZeRO-3 run sometimes aborts a rank after training has finished.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
