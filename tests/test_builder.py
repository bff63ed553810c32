"""`load_pretrained_model` in every mode: full, LoRA + base, projector-only + base, tuned tower,
legacy `.bin` files (read with weights_only), 8/4-bit, dtype keywords, and its errors."""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PhiConfig, PhiForCausalLM

from bunny.data.tokenizer import load_training_tokenizer
from bunny.model.builder import load_pretrained_model
from bunny.model.checkpoint_files import MissingWeightsError
from tiny import FIXTURES, bunny_config, build_model, random_pixels, random_prompt

VOCAB = 1000  # the fixture tokenizers' size, so loading resizes nothing


def copy_tokenizer(directory):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FIXTURES / "tokenizers" / "tok-phi" / name, directory / name)


@pytest.fixture()
def base_llm(tmp_path):
    """An upstream phi-2 style LLM directory (its lm_head has a bias, which Bunny drops)."""
    torch.manual_seed(0)
    config = PhiConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        partial_rotary_factor=0.4, initializer_range=0.2, bos_token_id=994, eos_token_id=994,
    )
    directory = tmp_path / "base-phi"
    PhiForCausalLM(config).save_pretrained(directory)
    copy_tokenizer(directory)
    return directory


def bunny_on_base(base_llm, siglip_tower, **overrides):
    model = build_model("phi-2", siglip_tower, vocab_size=VOCAB, bos_token_id=994, eos_token_id=994, **overrides)
    base = PhiForCausalLM.from_pretrained(base_llm)
    state = {k: v for k, v in base.state_dict().items() if k != "lm_head.bias"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("model.mm_projector") or k.startswith("model.vision_tower") for k in missing)
    return model.eval()


def test_full_checkpoint_and_dtype_keywords(siglip_tower, tmp_path):
    model = build_model("phi-2", siglip_tower, vocab_size=VOCAB)
    directory = tmp_path / "bunny-full"
    model.save_pretrained(directory)
    copy_tokenizer(directory)
    tokenizer, loaded, processor, context_len = load_pretrained_model(str(directory), None, None, "phi-2", device="cpu")
    assert loaded.dtype == torch.float32 and context_len == 256
    assert processor is loaded.get_vision_tower().image_processor
    ids, pixels = random_prompt(9, 1, 0)[None], random_pixels(1, 0)
    torch.testing.assert_close(loaded(ids, images=pixels).logits, model(ids, images=pixels).logits)
    for keyword in ("torch_dtype", "dtype"):
        _, half, _, _ = load_pretrained_model(str(directory), None, None, "phi-2", device="cpu", **{keyword: torch.bfloat16})
        assert half.dtype == torch.bfloat16 and half.get_vision_tower().dtype == torch.bfloat16
        half.generate(ids, images=pixels.to(torch.bfloat16), max_new_tokens=2)


def test_lora_directory_recognised_by_adapter_files(base_llm, siglip_tower, tmp_path):
    model = bunny_on_base(base_llm, siglip_tower)
    torch.manual_seed(1)
    lora = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"], init_lora_weights=False)
    )
    ids, pixels = random_prompt(9, 1, 0)[None], random_pixels(1, 0)
    with torch.no_grad():
        expected = lora(input_ids=ids, images=pixels).logits
    directory = tmp_path / "bunny-phi-2-sft"  # no "lora" in the name: found by adapter_config.json
    lora.save_pretrained(directory)
    model.config.save_pretrained(directory)
    non_lora = {f"base_model.model.{k}": v for k, v in model.state_dict().items() if "mm_projector" in k}
    torch.save(non_lora, directory / "non_lora_trainables.bin")

    tokenizer, merged, _, _ = load_pretrained_model(str(directory), str(base_llm), None, "phi-2", device="cpu")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(merged(ids, images=pixels).logits, expected, atol=1e-4, rtol=1e-4)
    assert len(tokenizer) == VOCAB

    with pytest.raises(ValueError, match="is a LoRA checkpoint .* pass its base LLM"):
        load_pretrained_model(str(directory), None, None, "phi-2", device="cpu")


def test_lora_with_unfrozen_tower(base_llm, siglip_tower, tmp_path):
    model = bunny_on_base(base_llm, siglip_tower, unfreeze_vision_tower=True)
    with torch.no_grad():
        for p in model.get_vision_tower().parameters():
            p.add_(0.3)
    trainables = {
        f"base_model.model.{k}": v.clone() for k, v in model.state_dict().items() if "mm_projector" in k or "vision_tower" in k
    }
    llm_linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")]
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=llm_linears))
    directory = tmp_path / "bunny-lora-vt"
    lora.save_pretrained(directory)
    model.config.save_pretrained(directory)
    torch.save(trainables, directory / "non_lora_trainables.bin")
    _, merged, _, _ = load_pretrained_model(str(directory), str(base_llm), None, "phi-2", device="cpu")
    tuned = {k[len("base_model.model.model.vision_tower."):]: v for k, v in trainables.items() if "vision_tower" in k}
    assert tuned.keys() == merged.get_vision_tower().state_dict().keys()
    for name, value in merged.get_vision_tower().state_dict().items():
        assert torch.equal(value, tuned[name]), name


def test_projector_only_checkpoint(base_llm, siglip_tower, tmp_path):
    model = bunny_on_base(base_llm, siglip_tower, tune_mm_mlp_adapter=True)
    directory = tmp_path / "bunny-pretrain-phi-2"
    model.config.save_pretrained(directory)
    torch.save({k: v for k, v in model.state_dict().items() if "mm_projector" in k}, directory / "mm_projector.bin")
    _, loaded, _, _ = load_pretrained_model(str(directory), str(base_llm), None, "phi-2", device="cpu")
    ids, pixels = random_prompt(9, 1, 0)[None], random_pixels(1, 0)
    torch.testing.assert_close(loaded(ids, images=pixels).logits, model(ids, images=pixels).logits)


def test_base_with_neither_adapter_nor_projector_is_an_error(base_llm, siglip_tower, tmp_path):
    directory = tmp_path / "bunny-something"
    bunny_config("phi-2", siglip_tower, vocab_size=VOCAB).save_pretrained(directory)
    with pytest.raises(FileNotFoundError, match="neither LoRA adapter files .* nor a projector"):
        load_pretrained_model(str(directory), str(base_llm), None, "phi-2", device="cpu")


def test_legacy_bin_checkpoint_loads_with_weights_only(siglip_tower, tmp_path):
    model = build_model("llama3-8b", siglip_tower, vocab_size=VOCAB)
    directory = tmp_path / "bunny-llama-bin"
    model.config.save_pretrained(directory)
    copy_tokenizer(directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    tokenizer, loaded, _, _ = load_pretrained_model(str(directory), None, None, "llama3-8b", device="cpu")
    ids, pixels = random_prompt(9, 1, 0)[None], random_pixels(1, 0)
    torch.testing.assert_close(loaded(ids, images=pixels).logits, model(ids, images=pixels).logits)
    # llama-3: eos forced to <|end_of_text|> by token, and used as the generation pad.
    assert tokenizer.eos_token == "<|end_of_text|>" and loaded.generation_config.pad_token_id == 996


class _Exploit:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pickled_code_in_a_bin_file_is_refused(base_llm, siglip_tower, tmp_path):
    model = bunny_on_base(base_llm, siglip_tower, tune_mm_mlp_adapter=True)
    directory = tmp_path / "bunny-pretrain-evil"
    model.config.save_pretrained(directory)
    with open(directory / "mm_projector.bin", "wb") as f:
        pickle.dump({"model.mm_projector.0.weight": _Exploit()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_pretrained_model(str(directory), str(base_llm), None, "phi-2", device="cpu")


def test_unfreeze_checkpoint_without_tower_weights_is_an_error(siglip_tower, tmp_path):
    model = build_model("phi-2", siglip_tower, vocab_size=VOCAB, unfreeze_vision_tower=True)
    directory = tmp_path / "bunny-vt"
    model.config.save_pretrained(directory)
    copy_tokenizer(directory)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if "vision_tower" not in k}, directory / "model.safetensors")
    with pytest.raises(ValueError, match="holds no vision tower weights"):
        load_pretrained_model(str(directory), None, None, "phi-2", device="cpu")


def test_unknown_model_type_names_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown Model Type 'mistral'.*llama3-8b"):
        load_pretrained_model("/nowhere", None, None, "mistral", device="cpu")


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_loading(bits, siglip_tower, tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    model = build_model("llama3-8b", siglip_tower, vocab_size=VOCAB, hidden_size=128, intermediate_size=256)
    directory = tmp_path / "bunny-q"
    model.save_pretrained(directory)
    copy_tokenizer(directory)
    _, quantised, _, _ = load_pretrained_model(
        str(directory), None, None, "llama3-8b", load_8bit=bits == 8, load_4bit=bits == 4, device="cpu"
    )
    layer = quantised.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit)
    assert type(quantised.get_model().mm_projector[0]) is torch.nn.Linear
    ids, pixels = random_prompt(9, 1, 0)[None], random_pixels(1, 0)
    with torch.no_grad():
        logits = quantised(ids, images=pixels).logits.float()
        reference = model(ids, images=pixels).logits
    assert torch.isfinite(logits).all()
    assert torch.corrcoef(torch.stack([logits.flatten(), reference.flatten()]))[0, 1] > 0.9
    assert quantised.generate(ids, images=pixels, max_new_tokens=3, do_sample=False).shape == (1, 12)


# -- weights left at random, wrong model types, log noise --------------------------------------------
# tie_word_embeddings defaults of the config classes the original's checkpoints were written with
# (transformers 4.40 and the original's vendored MiniCPM): 4.x leaves a value equal to both its
# PretrainedConfig default (true) and the class default out of config.json, so a tied MiniCPM
# checkpoint says nothing about tying and stores no lm_head.
TIED_BY_DEFAULT_IN_4X = {
    "phi-1.5": False, "phi-2": False, "phi-3": False, "stablelm-2": False, "qwen1.5-1.8b": False,
    "minicpm": True, "llama3-8b": False,
}


def save_as_4x_saves_a_tied_model(model, directory):
    """A tied model as transformers 4.x wrote it: no lm_head.weight, no tie_word_embeddings."""
    model.save_pretrained(directory)
    copy_tokenizer(directory)
    config = json.loads((directory / "config.json").read_text())
    config.pop("tie_word_embeddings", None)
    (directory / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" and "vision_tower" not in k}
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("model_type", list(TIED_BY_DEFAULT_IN_4X))
def test_a_config_silent_on_tying_reads_as_the_original_read_it(model_type, siglip_tower, tmp_path):
    model = build_model(model_type, siglip_tower, vocab_size=VOCAB, tie_word_embeddings=True)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    directory = tmp_path / f"bunny-{model_type}"
    save_as_4x_saves_a_tied_model(model, directory)
    ids, pixels = random_prompt(9, 1, 0)[None], random_pixels(1, 0)
    if TIED_BY_DEFAULT_IN_4X[model_type]:
        _, loaded, _, _ = load_pretrained_model(str(directory), None, None, model_type, device="cpu")
        assert loaded.config.tie_word_embeddings
        torch.testing.assert_close(loaded(ids, images=pixels).logits, model(ids, images=pixels).logits)
    else:  # read as untied, as 4.x did: the head is missing, and that is an error, not a random head
        with pytest.raises(MissingWeightsError, match=r"lm_head\.weight.*tie_word_embeddings is false"):
            load_pretrained_model(str(directory), None, None, model_type, device="cpu")


def test_a_checkpoint_missing_a_weight_is_an_error_not_a_random_init(siglip_tower, tmp_path):
    model = build_model("qwen1.5-1.8b", siglip_tower, vocab_size=VOCAB)
    directory = tmp_path / "bunny-qwen-truncated"
    model.save_pretrained(directory)
    copy_tokenizer(directory)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "model.layers.1.mlp.down_proj.weight"}
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match=r"lacks 1 weight.*model\.layers\.1\.mlp\.down_proj\.weight"):
        load_pretrained_model(str(directory), None, None, "qwen1.5-1.8b", device="cpu")
    with pytest.raises(MissingWeightsError):  # the Auto classes users call after `import bunny.model` too
        AutoModelForCausalLM.from_pretrained(directory)


def test_a_lora_output_without_its_projector_is_an_error(base_llm, siglip_tower, tmp_path):
    # e.g. a run with --freeze_mm_mlp_adapter: non_lora_trainables.bin then lacks the projector,
    # which the original silently left at random
    model = bunny_on_base(base_llm, siglip_tower)
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    directory = tmp_path / "bunny-lora-frozen-projector"
    lora.save_pretrained(directory)
    model.config.save_pretrained(directory)
    torch.save({}, directory / "non_lora_trainables.bin")
    with pytest.raises(MissingWeightsError, match=r"non_lora_trainables\.bin.*model\.mm_projector\.0\.weight"):
        load_pretrained_model(str(directory), str(base_llm), None, "phi-2", device="cpu")


def test_a_wrong_model_type_is_refused_naming_the_checkpoints_own(siglip_tower, base_llm, tmp_path):
    model = build_model("qwen1.5-1.8b", siglip_tower, vocab_size=VOCAB)
    directory = tmp_path / "bunny-qwen"
    model.save_pretrained(directory)
    copy_tokenizer(directory)
    with pytest.raises(ValueError, match=r"'bunny-qwen2' checkpoint.*--model-type phi-2.*pass --model-type qwen1\.5-1\.8b"):
        load_pretrained_model(str(directory), None, None, "phi-2", device="cpu")
    # a base LLM of another kind under a projector-only checkpoint of the right kind
    projector_only = tmp_path / "bunny-pretrain-qwen"
    model.config.save_pretrained(projector_only)
    torch.save({k: v for k, v in model.state_dict().items() if "mm_projector" in k}, projector_only / "mm_projector.bin")
    with pytest.raises(ValueError, match=r"base-phi holds a 'phi' checkpoint.*pass --model-type phi-1\.5 or phi-2"):
        load_pretrained_model(str(projector_only), str(base_llm), None, "qwen1.5-1.8b", device="cpu")


@contextlib.contextmanager
def transformers_warnings():
    """The messages transformers logs meanwhile, at warning level and above."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_loading_on_a_remote_code_base_llm_logs_no_config_noise(siglip_tower, tmp_path):
    # MiniCPM's own checkpoints are remote code (model_type "minicpm", unknown to transformers), so
    # AutoTokenizer fell back to a bare config and warned of a model "of type ``" on every load
    llm = build_model("minicpm", None, vocab_size=VOCAB, tie_word_embeddings=True)
    base = tmp_path / "MiniCPM-2B"
    llm.save_pretrained(base)
    copy_tokenizer(base)
    config = json.loads((base / "config.json").read_text())
    config.update(model_type="minicpm", architectures=["MiniCPMForCausalLM"],
                  auto_map={"AutoConfig": "configuration_minicpm.MiniCPMConfig"})
    (base / "config.json").write_text(json.dumps(config))
    bunny = build_model("minicpm", siglip_tower, vocab_size=VOCAB, tie_word_embeddings=True)
    projector_only = tmp_path / "bunny-pretrain-minicpm"
    bunny.config.save_pretrained(projector_only)
    torch.save({k: v for k, v in bunny.state_dict().items() if "mm_projector" in k}, projector_only / "mm_projector.bin")
    with transformers_warnings() as logged:
        tokenizer, loaded, _, _ = load_pretrained_model(str(projector_only), str(base), None, "minicpm", device="cpu")
        tokenizer.decode([5, 6, 7])
    assert not [m for m in logged if "to instantiate a model of type" in m or "clean_up_tokenization_spaces" in m]
    assert torch.equal(loaded.lm_head.weight, llm.lm_head.weight)


def test_the_training_tokenizer_decodes_without_the_cleanup_notice(tmp_path):
    directory = tmp_path / "tok"
    directory.mkdir()
    copy_tokenizer(directory)
    with transformers_warnings() as logged:
        tokenizer = load_training_tokenizer(str(directory), "qwen1.5-1.8b", 64)
        tokenizer.decode([5, 6, 7])
    assert not [m for m in logged if "clean_up_tokenization_spaces" in m]
