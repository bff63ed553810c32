"""The training data set (LLaVA-format JSON) and the collator that batches it.

A data file is a JSON list of samples `{"id", "image"?, "conversations": [{"from", "value"}, ...]}`.
Samples are checked when the file is read, so a malformed file fails before training starts;
images are opened and tokenised lazily, one sample at a time.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from bunny.constants import IGNORE_INDEX
from bunny.conversation import Conversation
from bunny.data.preprocess import DataFormatError, check_conversations, move_image_to_front, tokenize_sample
from bunny.util.images import ImageLoadError, load_image, process_images

logger = logging.getLogger(__name__)


def load_training_data(data_path: str) -> list[dict[str, Any]]:
    """Read and check a training JSON file; errors name the file and the line/sample at fault."""
    try:
        with open(data_path, encoding="utf-8") as f:
            samples = json.load(f)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{data_path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{data_path}: not UTF-8 text (byte {err.start})") from None
    if not isinstance(samples, list):
        raise DataFormatError(f"{data_path}: expected a JSON list of samples, got {type(samples).__name__}")
    for i, sample in enumerate(samples):
        check_conversations(sample, f"{data_path}: sample {i}" + _id_suffix(sample))
    return samples


def _id_suffix(sample: Any) -> str:
    return f" (id {sample['id']!r})" if isinstance(sample, dict) and "id" in sample else ""


def _word_count(sample: dict[str, Any]) -> int:
    return sum(len(turn["value"].split()) for turn in sample["conversations"])


class LazySupervisedDataset(Dataset):
    """Samples of a training JSON file as `{"input_ids", "labels", "image"}` tensors.

    `image_tokens` (the tower's features per image) lets a sample whose supervised tokens fall past
    `model_max_length` after the splice be caught here rather than train at loss 0.
    """

    def __init__(
        self,
        data_path: str,
        tokenizer: Any,
        template: Conversation,
        image_folder: str | None = None,
        image_processor: Any = None,
        image_aspect_ratio: str | None = None,
        is_multimodal: bool = True,
        tokenization_mismatch: str = "error",
        image_tokens: int | None = None,
    ) -> None:
        self.data_path = data_path
        self.samples = load_training_data(data_path)
        self.tokenizer = tokenizer
        self.template = template
        self.image_folder = image_folder
        self.image_processor = image_processor
        self.image_aspect_ratio = image_aspect_ratio
        self.is_multimodal = is_multimodal
        self.tokenization_mismatch = tokenization_mismatch
        self.image_tokens = image_tokens

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        """Words per sample, +128 for an image (kept for compatibility; nothing reads it)."""
        return [_word_count(s) + (128 if "image" in s else 0) for s in self.samples]

    @property
    def modality_lengths(self) -> list[int]:
        """Words per sample, negative for text-only samples (the modality-grouped sampler's input)."""
        return [_word_count(s) if "image" in s else -_word_count(s) for s in self.samples]

    def where(self, i: int) -> str:
        return f"{self.data_path}: sample {i}" + _id_suffix(self.samples[i])

    def load_image(self, i: int) -> torch.Tensor:
        """The sample's image as the tower's pixel values `[3, H, W]` (`image_aspect_ratio` as at inference)."""
        path = os.path.join(self.image_folder or "", self.samples[i]["image"])
        try:
            image = load_image(path)
        except ImageLoadError as err:
            raise ImageLoadError(f"{self.where(i)}: {err}") from None
        if self.image_processor is None:
            raise ValueError(f"{self.where(i)} has an image but the data set was given no image processor")
        return process_images([image], self.image_processor, self)[0]

    def zero_image(self) -> torch.Tensor:
        """The image slot of a text-only sample in a multimodal batch."""
        crop = self.image_processor.crop_size
        return torch.zeros(3, crop["height"], crop["width"])

    def tokenize(self, i: int):
        sample = self.samples[i]
        has_image = "image" in sample
        turns = sample["conversations"]
        if has_image and self.is_multimodal:
            turns = move_image_to_front(turns)
        return tokenize_sample(
            turns,
            self.tokenizer,
            self.template,
            has_image=has_image,
            mismatch=self.tokenization_mismatch,
            where=self.where(i),
            image_tokens=self.image_tokens,
        )

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self.samples[i]
        image = self.load_image(i) if "image" in sample else None
        tokenized = self.tokenize(i)
        item = {
            "input_ids": torch.tensor(tokenized.input_ids, dtype=torch.long),
            "labels": torch.tensor(tokenized.labels, dtype=torch.long),
        }
        if image is not None:
            item["image"] = image
        elif self.is_multimodal and self.image_processor is not None:
            item["image"] = self.zero_image()
        return item


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads a list of samples into a batch, cut to `tokenizer.model_max_length` columns.

    The attention mask marks every real token, end tokens included, also when pad == eos (the
    original hid real eos ids behind a temporary value to get the same mask).
    """

    tokenizer: Any

    def __call__(self, instances: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
        max_length = self.tokenizer.model_max_length
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; training sets pad = unk (or eos for llama3-8b)")
        lengths = [min(len(x["input_ids"]), max_length) for x in instances]
        width = max(lengths)
        input_ids = torch.full((len(instances), width), pad_id, dtype=torch.long)
        labels = torch.full((len(instances), width), IGNORE_INDEX, dtype=torch.long)
        for row, (x, n) in enumerate(zip(instances, lengths)):
            input_ids[row, :n] = x["input_ids"][:n]
            labels[row, :n] = x["labels"][:n]
        attention_mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # [B, T]
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if "image" in instances[0]:
            images = [x.get("image") for x in instances]
            if all(x is not None and x.shape == images[0].shape for x in images):
                batch["images"] = torch.stack(images)
            else:
                batch["images"] = images
        return batch
