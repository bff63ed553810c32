"""The layout's rules (docs/architecture.md): which package may import which, and one owner of how
many positions an image takes."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer

from bunny.conversation import get_conv_template
from bunny.data.preprocess import move_image_to_front, supervised_within, tokenize_sample
from bunny.inference.prompts import image_prompt
from bunny.serve import model_worker
from bunny.util.images import process_images
from bunny.util.tokens import tokenizer_image_token
from tiny import FIXTURES, build_model

REPO = Path(__file__).resolve().parent.parent

# Lower layers never import higher ones.
LAYERS = {
    "bunny.constants": 0, "bunny.util": 0,
    "bunny.conversation": 1, "bunny.model": 1,
    "bunny.data": 2, "bunny.inference": 2,
    "bunny.train": 3, "bunny.eval": 3, "bunny.serve": 3, "bunny.export": 3,
    "bunny.demo": 4, "script": 4, "bench": 4,
}
# The original's import path `bunny.util.mm_utils.KeywordsStoppingCriteria`, resolved on first use.
ALLOWED_UPWARDS = {("bunny.util.mm_utils", "bunny.inference.stops")}
# Serving is HTTP and a web page on top of inference: nothing else needs it.
MAY_IMPORT_SERVE = ("bunny.serve", "bench.serve")


def layer_of(module: str) -> int | None:
    if module == "bunny":  # the package's __init__: a docstring
        return 0
    for prefix, layer in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def modules() -> dict[str, Path]:
    found = {}
    for folder in ("bunny", "script", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every `bunny...` module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from bunny.serve import cli`
    return {name for name in names if name == "bunny" or name.startswith("bunny.")}


def test_every_package_imports_only_its_own_layer_or_lower_and_only_serving_imports_serve():
    problems = []
    for module, path in modules().items():
        own = layer_of(module)
        assert own is not None, f"{module} is in no layer of docs/architecture.md"
        for imported in imports_of(path):
            layer = layer_of(imported)
            allowed = any(module == a and imported.startswith(b) for a, b in ALLOWED_UPWARDS)
            if layer is not None and layer > own and not allowed:
                problems.append(f"{module} (layer {own}) imports {imported} (layer {layer})")
            if imported.startswith("bunny.serve") and not module.startswith(MAY_IMPORT_SERVE):
                problems.append(f"{module} imports {imported}: only serving may")
    assert not problems, "\n".join(problems)


def test_the_rule_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "late.py"
    path.write_text("def main():\n    from bunny.serve.cli import main as cli\n    import bunny.train.train\n")
    assert imports_of(path) == {"bunny.serve.cli", "bunny.serve.cli.main", "bunny.train.train"}


def test_an_ldp_image_takes_the_same_positions_in_the_splice_the_worker_and_the_data_pipeline(siglip_tower):
    # ldp turns the tiny tower's 4x4 patches into 2x2: 4 positions per image, not the 16 patches
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "tok-phi")
    model = build_model("phi-2", siglip_tower, projector="ldp", vocab_size=1000)
    count = model.image_token_count
    assert count == 4 and model.get_vision_tower().num_patches == 16
    picture = Image.open(FIXTURES / "images" / "test_image.png").convert("RGB")
    processor = model.get_vision_tower().image_processor
    pixels = process_images([picture], processor, model.config)

    # the splice (what the model really sees)
    prompt = image_prompt("bunny", "What is shown in this picture?")
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    spliced = model.prepare_multimodal_inputs(ids, pixels, padding_side="left", text_only_slots=False)
    assert spliced.inputs_embeds.shape[1] == ids.shape[1] - 1 + count

    # the worker's context check and usage figures
    worker = model_worker.ModelWorker(tokenizer, model, processor, 2048, "m", "phi-2", generate_in_background=False)
    _, prompt_tokens = worker.make_request(prompt, [picture], 8)
    assert prompt_tokens == spliced.inputs_embeds.shape[1]

    # the data pipeline: supervised tokens left within model_max_length after the splice
    turns = move_image_to_front([{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red square on a gradient."}])
    sample = tokenize_sample(turns, tokenizer, get_conv_template("bunny"), has_image=True, image_tokens=count)
    labels = torch.tensor(sample.labels)[None]
    first = next(i for i, label in enumerate(sample.labels) if label != -100)  # the image counted as one position
    limit = first - 1 + count + 3  # the reply's first 3 tokens fit after the splice
    model.config.tokenizer_model_max_length = limit  # the splice truncates as training does
    trained = model.prepare_multimodal_inputs(torch.tensor(sample.input_ids)[None], pixels, labels=labels)
    assert trained.inputs_embeds.shape[1] == limit < len(sample.input_ids) - 1 + count
    assert supervised_within(sample.labels, sample.input_ids, limit, count) == int((trained.labels != -100).sum()) == 3
