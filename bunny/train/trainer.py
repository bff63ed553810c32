"""`BunnyTrainer`: transformers' Trainer plus Bunny's sampler, parameter groups and save layouts.

What it changes, and why:
- the modality-grouped sampler (`--group_by_modality_length`), seeded per epoch so that a resumed
  run replays the same data order;
- a separate learning rate for the projector and an unfrozen tower (`--mm_projector_lr`);
- with `master_weights`, an optimiser over float32 copies of bfloat16 weights (`--bf16 True` on the
  CPU, see master_weights.py);
- pretraining checkpoints keep the original's `config.json` + `mm_projector.bin` and also the
  optimiser, scheduler and RNG state, so pretraining resumes like every other stage (the
  original's could not);
- every LoRA `checkpoint-N` also holds `config.json` and `non_lora_trainables.bin`, so it loads
  with `load_pretrained_model` and resumes with its projector (the original's held adapters only);
- samples trained without a single supervised label are counted and reported at the end.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_optimizer import is_optimizer_factory
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from bunny.constants import IGNORE_INDEX
from bunny.data.samplers import LengthGroupedSampler
from bunny.model.checkpoint_files import load_projector_weights, load_state_file
from bunny.train.master_weights import with_master_weights
from bunny.train.trainable import is_projector, non_lora_trainables, projector_state, save_bin

logger = logging.getLogger(__name__)

PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"


def is_peft_model(model: Any) -> bool:
    return hasattr(model, "peft_config")


class BunnyTrainer(Trainer):
    def __init__(self, *args: Any, tune_mm_mlp_adapter: bool = False, master_weights: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tune_mm_mlp_adapter = tune_mm_mlp_adapter
        # bfloat16 weights stepped through float32 copies (bunny/train/master_weights.py)
        self.master_weights = master_weights
        # Kept on the device: reading it back every step would stall the GPU.
        self.unsupervised_samples: torch.Tensor | int = 0

    # -- data ------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            lengths=dataset.modality_lengths,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            group_by_modality=True,
        )

    def compute_loss(self, model, inputs, *args: Any, **kwargs: Any):
        labels = inputs.get("labels")
        if labels is not None and model.training:
            self.unsupervised_samples = self.unsupervised_samples + ((labels != IGNORE_INDEX).sum(dim=1) == 0).sum()
        return super().compute_loss(model, inputs, *args, **kwargs)

    def train(self, *args: Any, **kwargs: Any):
        output = super().train(*args, **kwargs)
        count = torch.as_tensor(self.unsupervised_samples, device=self.args.device)
        count = int(self.accelerator.reduce(count, reduction="sum")) if self.args.world_size > 1 else int(count)
        if count and self.args.should_log:
            logger.warning(
                "%d training sample(s) had no supervised token (tokenization mismatch masked, or truncated "
                "by --model_max_length) and contributed no loss", count,
            )
        return output

    # -- optimiser -------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is not None or (self.args.mm_projector_lr is None and not self.master_weights):
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        split = self.args.mm_projector_lr is not None

        def group(projector: bool, decayed: bool) -> dict[str, Any]:
            # An unfrozen tower learns at the projector's rate, as in the original.
            params = [
                p for n, p in named
                if (split and (is_projector(n) or "vision_tower" in n)) == projector and (n in decay) == decayed
            ]
            result: dict[str, Any] = {"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0}
            if projector:
                result["lr"] = self.args.mm_projector_lr
            return result

        groups = [g for g in (group(False, True), group(False, False), group(True, True), group(True, False)) if g["params"]]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if self.master_weights:
            if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
                raise ValueError(
                    f"--optim {self.args.optim} builds its own parameter groups, so it cannot step float32 master "
                    "weights, which --bf16 True uses on the CPU; choose a torch optimiser (adamw_torch_fused, "
                    "adamw_torch, sgd, ...) or train in float32"
                )
            self.optimizer = with_master_weights(optimizer_cls, groups, **optimizer_kwargs)
        else:
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        if optimizer_cls.__name__ == "Adam8bit":
            import bitsandbytes

            manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
            for module in opt_model.modules():
                if isinstance(module, torch.nn.Embedding):
                    manager.register_module_override(module, "weight", {"optim_bits": 32})
        return self.optimizer

    # -- saving ----------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if is_peft_model(self.model):
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            self.save_lora_extras(folder)

    def save_lora_extras(self, output_dir: str) -> None:
        """`config.json` and `non_lora_trainables.bin` beside the adapter (all ranks join the gather)."""
        state = non_lora_trainables(self.model)
        if self.args.should_save:
            self.model.config.save_pretrained(output_dir)
            save_bin(state, os.path.join(output_dir, NON_LORA_FILE))

    def save_projector(self, output_dir: str) -> None:
        """`config.json` + `mm_projector.bin` (pretraining's artifacts; all ranks join the gather)."""
        state = projector_state(self.model)
        if self.args.should_save:
            self.model.config.save_pretrained(output_dir)
            save_bin(state, os.path.join(output_dir, PROJECTOR_FILE))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.tune_mm_mlp_adapter:
            # Pretraining writes the projector only, checkpoints included.
            self.save_projector(output_dir or self.args.output_dir)
            return
        super()._save(output_dir, state_dict)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.tune_mm_mlp_adapter:
            # The parent would gather the whole model first (under DeepSpeed); the projector is all we need.
            self.save_projector(output_dir or self.args.output_dir)
            return
        super().save_model(output_dir, _internal_call)

    # -- resuming --------------------------------------------------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        projector_file = os.path.join(resume_from_checkpoint, PROJECTOR_FILE)
        if self.tune_mm_mlp_adapter and os.path.exists(projector_file):
            base = self.model.get_base_model() if is_peft_model(self.model) else self.model
            load_projector_weights(base.get_model().mm_projector, projector_file)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        non_lora_file = os.path.join(resume_from_checkpoint, NON_LORA_FILE)
        if is_peft_model(self.model) and os.path.exists(non_lora_file):
            state = load_state_file(non_lora_file)
            missing = [k for k in state if k not in dict(self.model.named_parameters())]
            if missing:
                raise ValueError(f"{non_lora_file} has weights this model does not have: {missing[:5]}")
            self.model.load_state_dict(state, strict=False)
