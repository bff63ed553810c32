"""Stand-ins for the downloaded weights a Bunny run starts from, built from the demo's own data.

No model hub is reachable on a fresh machine, so the demo makes its own:
- a byte-level BPE tokenizer trained with `tokenizers` on the data set's text (GPT-2 style, as
  phi-2's: no BOS, `<|endoftext|>` as eos/unk);
- a SigLIP vision tower (`SiglipVisionModel` + its image processor; 96 px, 6 x 6 patches of 16),
  pretrained on the training pictures' layouts so that each patch of the features Bunny reads (the
  second-to-last layer) names the shape covering it: its kind, colour and third (`patch_targets`,
  from masks drawn with the pictures' own geometry, `patch_coverage`), and how many shapes the
  picture holds; those features centred (`centre_penultimate_features`);
- a phi-2-architecture LLM (`PhiForCausalLM`), pretrained with the causal LM loss on the answers of
  the data set's conversations and captions, each picture written as one made-up word per image
  token (`patch_words`: "redcircleleft" where a patch shows that shape, "emptytwo" where it shows
  none in a picture of two shapes), first in a short form without the template, then rendered in
  the `bunny` and `plain` templates (`llm_curriculum`).

Why these choices: a picture reaches the LLM as 36 tokens that each carry what one patch shows, so
the LLM learns, on text of that same form, to answer by finding the tokens of the shape a question
names (and the count that every empty patch carries), the skill it needs for the projected patches;
a shape written as three words ("a red circle") would need a binding across tokens that a 4-layer
model learns far too slowly for the demo. The short form first and a larger initialisation
(`LLMSpec.initializer_range`) let that lookup form in a few hundred steps; on the full template
alone it stalls at naming any shape of the picture.

Each is saved as an ordinary local model directory that `from_pretrained` reads, so the rest of the
pipeline runs exactly as it would on `microsoft/phi-2` and `google/siglip-so400m-patch14-384`.
Every builder is seeded and returns its per-step losses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from bunny.constants import DEFAULT_IMAGE_TOKEN
from bunny.data.preprocess import Segment, encode_with_offsets, render_segments, segment_labels, training_template
from bunny.demo.synthetic import COLOURS, POSITIONS, SHAPES, Item, Picture, draw_shape, position_of
from bunny.util.images import process_images
from bunny.util.tokens import pad_token_ids

EOS = "<|endoftext|>"
MEAN = 0.5  # the tower processor's mean and std


@dataclass(frozen=True)
class TowerSpec:
    image_size: int = 96
    patch_size: int = 16  # 6 x 6 image tokens
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
    initializer_range: float = 0.06  # transformers' 0.02 leaves attention too flat to find the named shape


def train_tokenizer(texts: Sequence[str], output_dir: str, vocab_size: int = 768, words: Sequence[str] = ()) -> Any:
    """A GPT-2-style byte-level BPE tokenizer over `texts`, saved to `output_dir`, in which each of
    `words` (after a space) is a single token."""
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
    # Frequent enough that BPE merges each word whole, however little text there is.
    bpe.train_from_iterator([*texts, *[" ".join([word] * 100) for word in words]], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    split = [word for word in words if len(tokenizer.tokenize(" " + word)) != 1]
    if split:
        raise ValueError(f"vocab_size={vocab_size} is too small to keep these words whole: {split[:5]}")
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


SUPERSAMPLE = 4  # masks are drawn at this multiple of the tower's resolution, then averaged per patch


def patch_coverage(picture: Picture, spec: TowerSpec) -> torch.Tensor:
    """The share of each patch that each shape of `picture` covers, once Bunny has padded the picture
    to a centred square (image_aspect_ratio "pad") and the processor has resized it: `[shapes, P]`."""
    width, height = picture.size
    side = max(width, height)
    resolution = spec.image_size * SUPERSAMPLE
    scale = resolution / side
    offset = ((side - width) // 2 * scale, (side - height) // 2 * scale)  # as expand2square pastes it
    coverage = []
    for shape in picture.shapes:
        mask = Image.new("L", (resolution, resolution), 0)
        draw_shape(ImageDraw.Draw(mask), shape, 255, scale, offset)
        pixels = torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8).view(1, 1, resolution, resolution)
        coverage.append(F.avg_pool2d(pixels.float() / 255, spec.patch_size * SUPERSAMPLE).flatten())
    return torch.stack(coverage)


def patch_targets(picture: Picture, spec: TowerSpec) -> torch.Tensor:
    """What each patch of the processed picture learns to name: the shape covering most of it (if at
    least 8% of it), as its kind, colour and third (0 = background, else 1 + index in SHAPES,
    COLOURS, POSITIONS), and the picture's number of shapes minus one. `[P, 4]`. A shape that so
    names no patch (a small one beside a larger one) takes the patch it covers most."""
    coverage = patch_coverage(picture, spec)  # [n, P]
    share, which = coverage.max(dim=0)  # [P]: the largest share of each patch, and whose
    shown = share >= 0.08
    for k, best in enumerate(coverage.argmax(dim=1).tolist()):
        if not (shown & (which == k)).any():
            which[best], shown[best] = k, True
    width = picture.size[0]
    names = torch.tensor([
        [SHAPES.index(p.shape) + 1, list(COLOURS).index(p.colour) + 1, POSITIONS.index(position_of(p, width)) + 1]
        for p in picture.shapes
    ])  # [n, 3]
    targets = torch.zeros(len(share), 4, dtype=torch.long)
    targets[:, :3] = torch.where(shown[:, None], names[which], 0)
    targets[:, 3] = len(picture.shapes) - 1
    return targets


PATCH_CLASSES = (len(SHAPES) + 1, len(COLOURS) + 1, len(POSITIONS) + 1, 3)  # kind, colour, column, count


def pretrain_tower(
    images: Sequence[Image.Image],
    targets: torch.Tensor,
    output_dir: str,
    spec: TowerSpec = TowerSpec(),
    steps: int = 4000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    held_out: float = 0.05,
) -> TowerTraining:
    """Train a SigLIP vision tower to name, at each patch of its second-to-last layer, the shape
    there (`targets[i]`: `patch_targets` of picture i); save it with its processor.

    One linear classifier per target reads every patch (dropped afterwards), the way a downloaded
    tower comes pretrained on labelled pictures. The tower's last layer, which Bunny does not use,
    is left as initialised. The last `held_out` share of the pictures is kept out of training to
    measure the classifiers' accuracy.
    """
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip import SiglipImageProcessorPil

    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, image_size=spec.image_size, patch_size=spec.patch_size,
    )
    tower = SiglipVisionModel(config)
    heads = torch.nn.ModuleList(torch.nn.Linear(spec.hidden_size, n) for n in PATCH_CLASSES)
    # Bunny pads a picture to a square in the processor's mean colour: mid grey, unlike any background.
    processor = SiglipImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size}, image_mean=[MEAN] * 3, image_std=[MEAN] * 3
    )
    # Pictures are padded to a square the way Bunny feeds them (image_aspect_ratio "pad").
    pixels = process_images(images, processor, SimpleNamespace(image_aspect_ratio="pad"))  # [N, 3, S, S]
    if targets.shape != (len(images), (spec.image_size // spec.patch_size) ** 2, len(PATCH_CLASSES)):
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not fit {len(images)} pictures of {spec}")

    def loss(batch: list[int]) -> torch.Tensor:
        features = tower(pixel_values=pixels[batch], output_hidden_states=True).hidden_states[-2]  # [B, P, C]
        wanted = targets[batch]  # [B, P, 4]
        shown = wanted[..., 0] > 0  # the patches that show a shape: a minority, and what the questions are about
        total = torch.zeros(())
        for i, head in enumerate(heads):
            logits = head(features)
            total = total + F.cross_entropy(logits.flatten(0, 1), wanted[..., i].flatten())
            if i < 3 and shown.any():  # kind, colour and third once more over the patches that show a shape
                total = total + F.cross_entropy(logits[shown], wanted[..., i][shown])
        return total

    model = torch.nn.ModuleList([tower, heads])
    trained = len(images) - int(held_out * len(images))
    losses = _train(model, loss, _batches(trained, batch_size, steps, seed), lr, "vision tower (shapes per patch)")
    accuracy = patch_accuracy(tower, heads, pixels[trained:], targets[trained:])

    centre_penultimate_features(tower, pixels[:512])
    tower.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return TowerTraining(losses, accuracy)


@dataclass(frozen=True)
class TowerTraining:
    losses: list[float]  # of every step
    accuracy: dict[str, float]  # of each classifier on the held-out pictures (`patch_accuracy`)


@torch.no_grad()
def patch_accuracy(tower: Any, heads: Any, pixels: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The share of patches each classifier names right: kind, colour and third over the patches that
    show a shape, count over all; {} without pictures."""
    if not len(pixels):
        return {}
    tower.eval()
    features = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    shown = targets[..., 0] > 0
    accuracy = {}
    for i, (name, head) in enumerate(zip(("kind", "colour", "third", "count"), heads)):
        right = head(features).argmax(-1) == targets[..., i]
        accuracy[name] = round((right if name == "count" else right[shown]).float().mean().item(), 4)
    return accuracy


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


EMPTY_WORDS = ("emptyone", "emptytwo", "emptythree")  # letters only: the byte-level pre-tokenizer splits digits off


def shape_word(item: Item) -> str:
    return f"{item.colour}{item.shape}{item.position}"


def patch_words(targets: torch.Tensor) -> str:
    """A picture as the stand-in LLM reads it in its pretraining text: one made-up word per image
    token, in the tower's patch order: the shape a patch shows (`shape_word`: "redcircleleft"), or,
    for a patch without one, how many shapes the picture holds ("emptytwo"). `targets`: `[P, 4]`
    (`patch_targets`)."""
    colours = list(COLOURS)
    words = []
    for kind, colour, column, count in targets.tolist():
        if kind:
            words.append(shape_word(Item(SHAPES[kind - 1], colours[colour - 1], POSITIONS[column - 1])))
        else:
            words.append(EMPTY_WORDS[count])
    return " ".join(words)


# Every word `patch_words` can write.
PATCH_WORDS = (*(shape_word(Item(s, c, p)) for c in COLOURS for s in SHAPES for p in POSITIONS), *EMPTY_WORDS)


# A pretraining text: the segments of the training preprocessor, supervised where the loss looks.
Text = list[Segment]


def render_conversation(
    conversations: Sequence[dict[str, str]], picture: str = "", template: str = "bunny"
) -> Text:
    """A training conversation as Bunny's preprocessing renders it in `template` (`render_segments`),
    with `picture` (text) on a line of its own where the image goes; the answers are supervised."""
    segments = render_segments(list(conversations), training_template(template), "stand-in text")
    line = picture + "\n" if picture else ""
    return [
        Segment(s.text.replace(DEFAULT_IMAGE_TOKEN + "\n", line).replace(DEFAULT_IMAGE_TOKEN, line), s.supervised)
        for s in segments
    ]


def short_texts(conversations: Sequence[dict[str, str]], picture: str) -> list[Text]:
    """Each question of a conversation on its own, without the template: the picture, the question
    (without an instruction line) and its answer."""
    texts = []
    for question, answer in zip(conversations[::2], conversations[1::2]):
        line = question["value"].replace(DEFAULT_IMAGE_TOKEN + "\n", "").split("\n")[0]
        texts.append([Segment(f"{picture}\n{line}", False), Segment(f" {answer['value']}{EOS}", True)])
    return texts


def llm_curriculum(
    finetune: Sequence[dict[str, Any]], pretrain: Sequence[dict[str, Any]], words: dict[str, str]
) -> tuple[list[Text], list[Text]]:
    """The stand-in LLM's two pretraining stages from the demo's data (`words`: picture -> its
    `patch_words`):
    short questions and captions first, then the conversations in the `bunny` template and the
    captions in `plain`, as the Bunny stages will show them."""
    short, full = [], []
    for sample in finetune:
        picture = words[sample["image"]] if "image" in sample else ""
        if picture:
            short += short_texts(sample["conversations"], picture)
        full.append(render_conversation(sample["conversations"], picture))
    for sample in pretrain:
        picture = words[sample["image"]]
        short.append([Segment(picture + "\n", False), Segment(sample["conversations"][1]["value"] + EOS, True)])
        full.append(render_conversation(sample["conversations"], picture, "plain"))
    return short, full


def encode(text: Text, tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of a pretraining text and its labels (-100 where the loss does not look)."""
    ids, spans = encode_with_offsets("".join(s.text for s in text), tokenizer, has_image=False, max_length=max_length)
    labels, _ = segment_labels(ids, spans, text)
    return ids, labels


def pretrain_llm(
    stages: Sequence[Sequence[Text]],
    tokenizer: Any,
    output_dir: str,
    spec: LLMSpec = LLMSpec(),
    steps: Sequence[int] = (400, 400),
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train a phi-architecture LLM with the causal LM loss on the learned pieces of each stage's
    texts in turn, `steps[i]` batches of stage i; save it with the tokenizer."""
    from transformers import PhiConfig, PhiForCausalLM

    if len(steps) != len(stages):
        raise ValueError(f"one number of steps per stage: got {len(steps)} for {len(stages)} stages")
    torch.manual_seed(seed)
    config = PhiConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings, partial_rotary_factor=0.5,
        initializer_range=spec.initializer_range, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    model = PhiForCausalLM(config)
    encoded = [encode(text, tokenizer, spec.max_position_embeddings) for stage in stages for text in stage]
    batches = []
    first = 0
    for i, (stage, count) in enumerate(zip(stages, steps)):
        batches += [[first + j for j in batch] for batch in _batches(len(stage), batch_size, count, seed + i)]
        first += len(stage)

    def loss(batch: list[int]) -> torch.Tensor:
        # [B, T] right-padded, padding left out of the loss
        input_ids, attention_mask = pad_token_ids([encoded[i][0] for i in batch], tokenizer.eos_token_id, side="right")
        labels, _ = pad_token_ids([encoded[i][1] for i in batch], -100, side="right")
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    losses = _train(model, loss, batches, lr, "language model (causal LM loss)")

    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return losses

