"""Bunny models: a native transformers `*ForCausalLM` plus a vision tower and a projector.

`BunnyMixin` is the only model code: it attaches `vision_tower` and `mm_projector` to the native
decoder (so state-dict keys read `model.mm_projector.*`, `model.vision_tower.vision_tower.*` as in
released checkpoints), splices images into the embeddings (`bunny.model.merge`), and makes
`generate` accept `images=`. The six config/model class pairs below only name the native classes
and the `model_type` strings the original wrote into checkpoints.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    StableLmConfig,
    StableLmForCausalLM,
)
from transformers.activations import GELUTanh, NewGELUActivation

from bunny.constants import IMAGE_TOKEN_INDEX
from bunny.model.checkpoint_files import MissingWeightsError, read_checkpoint_tensors
from bunny.model.kv_cache import BLOCK, BlockGrowingCache
from bunny.model.merge import MergedInputs, merge_image_features
from bunny.model.projector import build_vision_projector, projected_token_count
from bunny.model.vision_tower import build_vision_tower
from bunny.util.images import process_images

logger = logging.getLogger(__name__)

# Tower weights in a checkpoint are stored under this prefix.
VISION_TOWER_PREFIX = "model.vision_tower."


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


class BunnyConfigMixin:
    """Writes the pre-5.x rope fields next to `rope_parameters`, so that Bunny installs on
    transformers 4.x (which ignore `rope_parameters`) read our checkpoints with the right rope."""

    _legacy_partial_rotary_factor = False

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        rope = output.get("rope_parameters")
        if isinstance(rope, dict):
            if "rope_theta" in rope:
                output["rope_theta"] = rope["rope_theta"]
            if self._legacy_partial_rotary_factor and "partial_rotary_factor" in rope:
                output["partial_rotary_factor"] = rope["partial_rotary_factor"]
            rope_type = rope.get("rope_type", "default")
            if rope_type == "default":
                output["rope_scaling"] = None
            else:
                scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
                output["rope_scaling"] = {**scaling, "type": rope_type}
        return output


class BunnyPhiConfig(BunnyConfigMixin, PhiConfig):
    model_type = "bunny-phi"
    _legacy_partial_rotary_factor = True


class BunnyPhi3Config(BunnyConfigMixin, Phi3Config):
    model_type = "bunny-phi3"


class BunnyStableLMConfig(BunnyConfigMixin, StableLmConfig):
    """StableLM-2; also reads the `stablelm_epoch` field names (`rope_pct`, `norm_eps`) that Bunny
    checkpoints carry, and writes them back."""

    model_type = "bunny-stablelm"
    _legacy_partial_rotary_factor = True

    def __post_init__(self, **kwargs: Any) -> None:
        if (rope_pct := kwargs.pop("rope_pct", None)) is not None:
            kwargs.setdefault("partial_rotary_factor", rope_pct)
        if (norm_eps := kwargs.pop("norm_eps", None)) is not None:
            self.layer_norm_eps = norm_eps
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["norm_eps"] = self.layer_norm_eps
        if "partial_rotary_factor" in output:
            output["rope_pct"] = output["partial_rotary_factor"]
        return output


class BunnyQwen2Config(BunnyConfigMixin, Qwen2Config):
    model_type = "bunny-qwen2"


class BunnyMiniCPMConfig(BunnyConfigMixin, GraniteConfig):
    """MiniCPM on transformers' Granite, which has the same arithmetic under other names:
    embeddings x `scale_emb`, residual branches x `scale_depth / sqrt(layers)`, logits /
    `(hidden_size / dim_model_base)`, attention scaled by 1/sqrt(head_dim). The MiniCPM fields are
    the source of truth and are written back to config.json."""

    model_type = "bunny-minicpm"
    # MiniCPM's own config (and so every Bunny MiniCPM checkpoint written with transformers 4.x)
    # ties the head to the embeddings by default, and 4.x omits a value equal to the default from
    # config.json; Granite's default (untied) would leave lm_head at random.
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        self.scale_emb = kwargs.pop("scale_emb", 1)
        self.dim_model_base = kwargs.pop("dim_model_base", 1)
        self.scale_depth = kwargs.pop("scale_depth", 1)
        self.embedding_multiplier = self.scale_emb
        self.residual_multiplier = self.scale_depth / math.sqrt(self.num_hidden_layers)
        self.logits_scaling = self.hidden_size / self.dim_model_base
        self.attention_multiplier = (self.hidden_size // self.num_attention_heads) ** -0.5
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.update(scale_emb=self.scale_emb, dim_model_base=self.dim_model_base, scale_depth=self.scale_depth)
        return output


class BunnyLlamaConfig(BunnyConfigMixin, LlamaConfig):
    model_type = "bunny-llama"


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _cached_length(cache: Any) -> int:
    return cache.get_seq_length() if cache is not None else 0


def _use_fused_gelu(model: nn.Module) -> None:
    """gelu_new (phi) is the tanh GELU written as 5 tensor ops; `F.gelu(approximate="tanh")` is the
    same function in one kernel (<= 1 ulp apart in float32; one rounding instead of five in bfloat16)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())


class BunnyMixin:
    """Multimodal behaviour shared by every Bunny model; placed before the native class in the MRO."""

    # The tower is built lazily and loaded from `mm_vision_tower`; the copy in the checkpoint is
    # only used when `unfreeze_vision_tower` / `continuous_training` say so (see load_vision_tower).
    # A base LLM's lm_head.bias (phi) is dropped: Bunny heads have none.
    _keys_to_ignore_on_load_unexpected = [r"^model\.vision_tower\.", r"^lm_head\.bias$"]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if getattr(self.lm_head, "bias", None) is not None:
            # Bunny's lm_head never has a bias (phi's upstream head does; it is dropped).
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._continuous_training = bool(getattr(config, "continuous_training", False))
        if hasattr(config, "continuous_training"):
            config.continuous_training = False  # applies once; a re-saved config says false
        if getattr(config, "mm_vision_tower", None):
            self.attach_vision_modules()
        _use_fused_gelu(self)
        self.post_init()

    def attach_vision_modules(self, load_tower: bool = False) -> None:
        """Build the vision tower and the projector the config names: the one place a Bunny model
        gets them (loading a checkpoint, and training a new model from a plain LLM).

        The tower is built empty, to be loaded later (`load_vision_tower`), unless `load_tower`:
        then its weights are read first and its width recorded as `mm_hidden_size`, which the
        projector takes, as training does for a new model.
        """
        tower = build_vision_tower(self.config, delay_load=not load_tower)
        if load_tower:
            self.config.mm_hidden_size = tower.hidden_size
        self.model.vision_tower = tower
        self.model.mm_projector = build_vision_projector(self.config)

    # -- parts -----------------------------------------------------------------------------------
    def get_model(self) -> nn.Module:
        return self.model

    def get_vision_tower(self) -> nn.Module | None:
        return getattr(self.model, "vision_tower", None)

    @property
    def image_token_count(self) -> int:
        """Positions one image takes in the spliced sequence (the projector's output length)."""
        tower = self.get_vision_tower()
        if tower is None:
            return 0
        return projected_token_count(getattr(self.config, "mm_projector_type", "linear"), tower.num_patches)

    def process_images(self, images: list, model_cfg: Any = None) -> torch.Tensor | list:
        """PIL images -> pixel values for this model's tower (as in the original quickstart)."""
        return process_images(images, self.get_vision_tower().image_processor, model_cfg or self.config)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str,
        *args: Any,
        load_vision_tower: bool = True,
        loaded_later: Sequence[str] = (),
        **kwargs: Any,
    ):
        """`from_pretrained`, then the vision tower from `mm_vision_tower` (and the checkpoint's own
        tower weights when `unfreeze_vision_tower` or `continuous_training` is set).

        A weight the checkpoint lacks would be left at its random initialisation: that is a
        `MissingWeightsError`, except for the modules named in `loaded_later` (state-dict key
        prefixes, e.g. the projector of a LoRA output, which the caller loads from another file).
        """
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        missing = sorted(k for k in info["missing_keys"] if not k.startswith(tuple(loaded_later)))
        if missing:
            raise MissingWeightsError(pretrained_model_name_or_path, model.config, missing)
        if load_vision_tower and model.get_vision_tower() is not None:
            model.load_vision_tower(pretrained_model_name_or_path if model.tower_weights_in_checkpoint else None)
        return (model, info) if wants_info else model

    @property
    def tower_weights_in_checkpoint(self) -> bool:
        """Whether the tower's weights come from the checkpoint rather than `mm_vision_tower`: it was
        trained (`unfreeze_vision_tower`), or the user marked a merged model for `continuous_training`."""
        return self._continuous_training or bool(getattr(self.config, "unfreeze_vision_tower", False))

    def load_vision_tower(self, checkpoint: str | None = None, strict: bool = False) -> None:
        """Load the tower from `mm_vision_tower`, put it on the LLM's device and dtype, then apply
        the tower weights stored in `checkpoint` (a directory or hub id) if it has any (all of them
        required when `strict`)."""
        tower = self.get_vision_tower()
        embed = self.get_input_embeddings().weight
        if not tower.is_loaded:
            try:
                tower.load_model()
            except OSError as err:
                raise OSError(
                    f"could not load the vision tower {tower.vision_tower_name!r} named by mm_vision_tower in the "
                    f"model config: {err}. Point mm_vision_tower at a local copy of the tower."
                ) from err
        tower.to(device=embed.device, dtype=self.dtype)
        if checkpoint is None:
            return
        state = read_checkpoint_tensors(checkpoint, VISION_TOWER_PREFIX)
        if not state:
            if strict:
                raise ValueError(f"{checkpoint} holds no vision tower weights ({VISION_TOWER_PREFIX}*)")
            return
        tower.load_state_dict({k[len(VISION_TOWER_PREFIX) :]: v for k, v in state.items()}, strict=True)

    # -- images ----------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Pixels -> projected features. `[M, 3, H, W]` gives `[M, N, D]`, one chunk per image. A list
        (or 5-D tensor) gives one chunk per element, all images of an element concatenated."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            return self._project(images)
        if isinstance(images, torch.Tensor) and images.ndim != 5:
            raise ValueError(f"images must be [M, 3, H, W], [B, n, 3, H, W] or a list, got shape {tuple(images.shape)}")
        groups = [image if image.ndim == 4 else image.unsqueeze(0) for image in images]
        if all(g.shape[1:] == groups[0].shape[1:] for g in groups):
            per_group = self._project(torch.cat(groups)).split([g.shape[0] for g in groups])
        else:
            per_group = [self._project(g) for g in groups]
        return [f.flatten(0, 1) for f in per_group]

    def _project(self, pixels: torch.Tensor) -> torch.Tensor:
        """`[M, 3, H, W]` -> `[M, image_token_count, D]`: tower, then projector."""
        model = self.get_model()
        features = model.mm_projector(model.vision_tower(pixels).to(self.get_input_embeddings().weight.dtype))
        if features.shape[1] != self.image_token_count:  # what the worker and training count must be true
            raise ValueError(
                f"images of {tuple(pixels.shape[-2:])} px gave {features.shape[1]} features each, but this model "
                f"counts {self.image_token_count} per image; preprocess images with the tower's processor "
                f"({self.get_vision_tower().image_processor.crop_size})"
            )
        return features

    def prepare_multimodal_inputs(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | list[torch.Tensor] | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        padding_side: str | None = None,
        text_only_slots: bool = True,
    ) -> MergedInputs:
        """Encode `images` (None for text only) and splice them into the embeddings of `input_ids`
        (see bunny.model.merge)."""
        if images is not None and self.get_vision_tower() is None:
            raise ValueError("images were given to a model without a vision tower (no mm_vision_tower in its config)")
        return merge_image_features(
            input_ids,
            self.encode_images(images) if images is not None else [],
            self.get_input_embeddings(),
            attention_mask=attention_mask,
            labels=labels,
            max_length=getattr(self.config, "tokenizer_model_max_length", None),
            padding_side=padding_side or getattr(self.config, "tokenizer_padding_side", None) or "right",
            text_only_slots=text_only_slots,
        )

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        images: torch.Tensor | list[torch.Tensor] | None = None,
        **kwargs: Any,
    ):
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        past = _cached_length(cache)
        if images is not None and inputs_embeds is None and past == 0:
            merged = self.prepare_multimodal_inputs(input_ids, images, attention_mask, labels)
            input_ids, inputs_embeds, labels = None, merged.inputs_embeds, merged.labels
            position_ids = merged.position_ids
            if attention_mask is not None or merged.has_padding:
                attention_mask = merged.attention_mask.to(attention_mask.dtype if attention_mask is not None else torch.long)
        elif input_ids is not None and past == 0 and bool((input_ids == IMAGE_TOKEN_INDEX).any()):
            raise ValueError("input_ids contain <image> placeholders (-200) but no images were passed")
        elif past and attention_mask is not None and attention_mask.ndim == 2 and input_ids is not None:
            # A decode step driven by hand with a mask in token space, shorter than the cache
            # (which holds the image features): extend it as the original did.
            target = past + input_ids.shape[1]
            if attention_mask.shape[1] < target:
                extra = attention_mask.new_ones(attention_mask.shape[0], target - attention_mask.shape[1])
                attention_mask = torch.cat([attention_mask, extra], dim=1)
                position_ids = attention_mask.long().cumsum(1)[:, -input_ids.shape[1] :] - 1
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            **kwargs,
        )

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """`generate` with `images=`. Returns the prompt ids (0 where an image was) + the new tokens.

        A batch may be padded on either side (pass its attention mask): the prompts are spliced and
        re-padded on the left, so every row gets the tokens it would get alone.
        """
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        self._choose_cache(kwargs)
        if images is None:
            if input_ids is not None and bool((input_ids == IMAGE_TOKEN_INDEX).any()):
                raise ValueError("input_ids contain <image> placeholders (-200) but no images were passed")
            return super().generate(input_ids, attention_mask=attention_mask, **kwargs)
        if input_ids is None:
            raise ValueError("generate with images needs input_ids")
        # At inference every image needs its placeholder: an extra image would be silently unused.
        merged = self.prepare_multimodal_inputs(
            input_ids, images, attention_mask, padding_side="left", text_only_slots=False
        )
        # HF's generate counts lengths and feeds logits processors and stopping criteria in token
        # space; the spliced prompt goes in through `prompt_embeds` (prepare_inputs_for_generation).
        visible_ids = input_ids.masked_fill(input_ids == IMAGE_TOKEN_INDEX, 0)
        generation_config = kwargs.get("generation_config") or self.generation_config
        if kwargs.get("cache_implementation", generation_config.cache_implementation) == "static":
            # HF sizes a static cache from the token-space prompt, which lacks the image rows. The
            # size is rounded up to a block so that compiled decoding is not recompiled for every
            # prompt length.
            max_new = kwargs.get("max_new_tokens") or generation_config.max_new_tokens
            if max_new is None:
                max_new = (kwargs.get("max_length") or generation_config.max_length) - input_ids.shape[1]
            floor = kwargs.get("max_cache_len") or generation_config.max_cache_len or 0
            needed = -(-(merged.inputs_embeds.shape[1] + max_new) // BLOCK) * BLOCK
            kwargs["max_cache_len"] = max(floor, needed)
        return super().generate(
            visible_ids,
            attention_mask=merged.attention_mask.long(),
            position_ids=merged.position_ids,
            prompt_embeds=merged.inputs_embeds,
            **kwargs,
        )

    def _choose_cache(self, kwargs: dict[str, Any]) -> None:
        """Decode into a `BlockGrowingCache` unless the caller chose a cache or none."""
        generation_config = kwargs.get("generation_config") or self.generation_config
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
            return
        if kwargs.get("cache_implementation", generation_config.cache_implementation) is not None:
            return
        if not kwargs.get("use_cache", generation_config.use_cache):
            return
        kwargs["cache"] = BlockGrowingCache(config=self.config)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        prompt_embeds: torch.Tensor | None = None,
        cache: Any = None,
        position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, cache=cache, position_ids=position_ids, attention_mask=attention_mask, **kwargs
        )
        model_inputs.pop("images", None)
        if prompt_embeds is not None and _cached_length(cache) == 0:
            # Nothing cached yet (the prefill, or every step without a KV cache): feed the spliced
            # prompt followed by the tokens generated so far. position_ids [B, L'+n] cover both.
            num_new = position_ids.shape[-1] - prompt_embeds.shape[1]
            embeds = prompt_embeds
            if num_new > 0:
                new_embeds = self.get_input_embeddings()(input_ids[:, -num_new:]).to(prompt_embeds.dtype)
                embeds = torch.cat([prompt_embeds, new_embeds], dim=1)
            model_inputs["input_ids"] = None
            model_inputs["inputs_embeds"] = embeds
            model_inputs["position_ids"] = position_ids
            if attention_mask is not None:
                # A compilable cache makes HF build a 4-D mask sized from the token-space ids; the
                # spliced prompt needs its own, which the model builds from the 2-D mask.
                model_inputs["attention_mask"] = attention_mask
        return model_inputs


class BunnyPhiForCausalLM(BunnyMixin, PhiForCausalLM):
    config_class = BunnyPhiConfig


class BunnyPhi3ForCausalLM(BunnyMixin, Phi3ForCausalLM):
    config_class = BunnyPhi3Config


class BunnyStableLMForCausalLM(BunnyMixin, StableLmForCausalLM):
    config_class = BunnyStableLMConfig


class BunnyQwen2ForCausalLM(BunnyMixin, Qwen2ForCausalLM):
    config_class = BunnyQwen2Config


class BunnyMiniCPMForCausalLM(BunnyMixin, GraniteForCausalLM):
    config_class = BunnyMiniCPMConfig


class BunnyLlamaForCausalLM(BunnyMixin, LlamaForCausalLM):
    config_class = BunnyLlamaConfig


BUNNY_CLASSES: dict[str, tuple[type, type]] = {
    cls.config_class.model_type: (cls.config_class, cls)
    for cls in (
        BunnyPhiForCausalLM,
        BunnyPhi3ForCausalLM,
        BunnyStableLMForCausalLM,
        BunnyQwen2ForCausalLM,
        BunnyMiniCPMForCausalLM,
        BunnyLlamaForCausalLM,
    )
}

for _model_type, (_config_cls, _model_cls) in BUNNY_CLASSES.items():
    AutoConfig.register(_model_type, _config_cls, exist_ok=True)
    AutoModelForCausalLM.register(_config_cls, _model_cls, exist_ok=True)
