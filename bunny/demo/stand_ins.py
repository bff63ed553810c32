"""Stand-ins for the downloaded weights a Bunny run starts from, built from the demo's own data.

No model hub is reachable on a fresh machine, so the demo makes its own:
- a byte-level BPE tokenizer trained with `tokenizers` on the data set's text (GPT-2 style, as
  phi-2's: no BOS, `<|endoftext|>` as eos/unk);
- a SigLIP vision tower (`SiglipVisionModel` + its image processor), pretrained to recognise the
  shapes of a picture (each shape's colour and column), its penultimate-layer features centred
  (`centre_penultimate_features`);
- a phi-2-architecture LLM (`PhiForCausalLM`), pretrained with the causal LM loss on the data set's
  conversations rendered in the `bunny` template, each picture replaced by its caption.

Each is saved as an ordinary local model directory that `from_pretrained` reads, so the rest of the
pipeline runs exactly as it would on `microsoft/phi-2` and `google/siglip-so400m-patch14-384`.
Every builder is seeded and returns its per-step losses.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from bunny.conversation import get_conv_template
from bunny.data.synthetic import COLOURS, POSITIONS, SHAPES, Scene
from bunny.util.mm_utils import pad_token_ids, process_images

EOS = "<|endoftext|>"
BACKGROUND_MEAN = 0.94  # bunny.data.synthetic draws on (233..245) grey


@dataclass(frozen=True)
class TowerSpec:
    image_size: int = 96
    patch_size: int = 16  # 36 image tokens
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4


@dataclass(frozen=True)
class LLMSpec:
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_layers: int = 4
    num_heads: int = 4
    max_position_embeddings: int = 512


def train_tokenizer(texts: Sequence[str], output_dir: str, vocab_size: int = 640) -> Any:
    """A GPT-2-style byte-level BPE tokenizer over `texts`, saved to `output_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    tokenizer.save_pretrained(output_dir)
    return tokenizer


def _batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """`steps` batches of indices into `n` items: shuffled epochs, seeded."""
    rng = random.Random(seed)
    order: list[int] = []
    batches = []
    for _ in range(steps):
        while len(order) < batch_size:
            epoch = list(range(n))
            rng.shuffle(epoch)
            order += epoch
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches


def _train(model: torch.nn.Module, loss: Any, batches: list[list[int]], lr: float, description: str) -> list[float]:
    """AdamW with warm-up and cosine decay over `batches`; returns the loss of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, len(batches) // 10), len(batches))
    losses = []
    model.train()
    for batch in tqdm(batches, desc=description, unit="step"):
        value = loss(batch)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(value.item())
    return losses


def scene_targets(scene: Scene) -> list[int]:
    """What the tower learns to name: for each kind of shape, its colour and its column (0 = absent)."""
    items = {item.shape: item for item in scene}
    colours = [list(COLOURS).index(items[s].colour) + 1 if s in items else 0 for s in SHAPES]
    positions = [POSITIONS.index(items[s].position) + 1 if s in items else 0 for s in SHAPES]
    return colours + positions


def pretrain_tower(
    images: Sequence[Image.Image],
    scenes: Sequence[Scene],
    output_dir: str,
    spec: TowerSpec = TowerSpec(),
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """Train a SigLIP vision tower to recognise the shapes of each picture; save it with its processor.

    The tower learns, from its pooled output, each shape's colour and column (`scene_targets`; one
    classifier per question, dropped afterwards), the way a downloaded tower comes pretrained on
    labelled pictures.
    """
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip import SiglipImageProcessorPil

    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, image_size=spec.image_size, patch_size=spec.patch_size,
    )
    tower = SiglipVisionModel(config)
    classes = [len(COLOURS) + 1] * len(SHAPES) + [len(POSITIONS) + 1] * len(SHAPES)
    heads = torch.nn.ModuleList(torch.nn.Linear(spec.hidden_size, n) for n in classes)
    # The mean is the pictures' background colour: background and the padding Bunny adds around a
    # picture (in the mean colour) both normalise to about zero, so the shapes stand out.
    processor = SiglipImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size}, image_mean=[BACKGROUND_MEAN] * 3, image_std=[0.5] * 3
    )
    # Pictures are padded to a square the way Bunny feeds them (image_aspect_ratio "pad").
    pixels = process_images(images, processor, SimpleNamespace(image_aspect_ratio="pad"))  # [N, 3, S, S]
    targets = torch.tensor([scene_targets(scene) for scene in scenes])  # [N, 6]

    def loss(batch: list[int]) -> torch.Tensor:
        pooled = tower(pixel_values=pixels[batch]).pooler_output  # [B, C]
        return sum(F.cross_entropy(head(pooled), targets[batch, i]) for i, head in enumerate(heads))

    model = torch.nn.ModuleList([tower, heads])
    losses = _train(model, loss, _batches(len(images), batch_size, steps, seed), lr, "vision tower (recognition)")

    centre_penultimate_features(tower, pixels[:512])
    tower.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return losses


@torch.no_grad()
def centre_penultimate_features(tower: Any, pixels: torch.Tensor) -> None:
    """Subtract the mean of the features Bunny reads (the second-to-last layer's output) through the
    bias that writes that layer's output last.

    The residual stream of a briefly trained SigLIP carries a large constant vector (norm ~60
    against ~8 for everything that differs between pictures and positions); a projector would need
    thousands of steps to cancel it. Centring leaves every feature difference, and the layers Bunny
    uses, as they were; only the unused last layer sees shifted inputs.
    """
    tower.eval()
    features = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # [N, P, C]
    tower.encoder.layers[-2].mlp.fc2.bias -= features.mean(dim=(0, 1))


def render_conversation(conversations: Sequence[dict[str, str]], picture: str = "", template: str = "bunny") -> str:
    """A training conversation as text, with `picture` (e.g. the picture's caption) where the image goes.

    Pretraining the LLM on conversations about a described picture teaches it to answer from what
    precedes the question, the skill it later needs to answer from the projected image features.
    """
    conv = get_conv_template(template)
    for turn in conversations:
        role = conv.roles[0] if turn["from"] == "human" else conv.roles[1]
        text = turn["value"].replace("<image>\n", picture + "\n" if picture else "").replace("<image>", picture)
        conv.append_message(role, text)
    return conv.get_prompt()


def pretrain_llm(
    texts: Sequence[str],
    tokenizer: Any,
    output_dir: str,
    spec: LLMSpec = LLMSpec(),
    steps: int = 150,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """Train a phi-architecture LLM on `texts` with the causal LM loss; save it with the tokenizer."""
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(seed)
    config = PhiConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings, partial_rotary_factor=0.5,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    model = PhiForCausalLM(config)
    encoded = [tokenizer(text + EOS)["input_ids"][: spec.max_position_embeddings] for text in texts]

    def loss(batch: list[int]) -> torch.Tensor:
        # [B, T] right-padded, padding left out of the loss
        input_ids, attention_mask = pad_token_ids([encoded[i] for i in batch], tokenizer.eos_token_id, side="right")
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    losses = _train(model, loss, _batches(len(encoded), batch_size, steps, seed), lr, "language model (causal LM loss)")

    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return losses


def save_losses(path: str, losses: dict[str, list[float]]) -> None:
    with open(path, "w") as f:
        json.dump(losses, f)
