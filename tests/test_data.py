"""Training data: ids/labels/images/collation against the original's recorded outputs, plus the
errors the original did not give (tokenizer/template mismatch, empty labels, bad files)."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest
import torch

from bunny.constants import IGNORE_INDEX
from bunny.conversation import get_conv_template
from bunny.data.dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset
from bunny.data.preprocess import (
    DataFormatError,
    TokenizationMismatchError,
    move_image_to_front,
    render_segments,
    tokenize_sample,
)
from bunny.data.tokenizer import load_training_tokenizer
from bunny.model.vision_tower.siglip import SiglipVisionTower
from bunny.util.mm_utils import ImageLoadError
from tiny import FIXTURES

PREPROCESS = FIXTURES / "goldens" / "preprocess"
PROFILES = ["phi-2", "llama3-8b"]


def golden(name: str) -> dict:
    return json.loads((PREPROCESS / name).read_text())


def tokenizer_for(profile: str, max_length: int = 2048):
    tokenizer_dir = golden(f"dataset_{profile}_mml2048.json")["meta"]["tokenizer_dir"]
    return load_training_tokenizer(str(FIXTURES / tokenizer_dir), profile, max_length)


@pytest.fixture(scope="module")
def siglip_processor():
    tower = SiglipVisionTower(str(FIXTURES / "siglip-tiny"))
    tower.load_model()
    return tower.image_processor


def dataset_for(profile: str, processor, max_length: int = 2048, data_path=None, **kwargs) -> LazySupervisedDataset:
    meta = golden(f"dataset_{profile}_mml2048.json")["meta"]
    return LazySupervisedDataset(
        str(data_path or FIXTURES / meta["data_file"]),
        tokenizer_for(profile, max_length),
        get_conv_template(meta["template"]),
        image_folder=str(FIXTURES / meta["image_folder"]),
        image_processor=processor,
        image_aspect_ratio=meta["image_aspect_ratio"],
        **kwargs,
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_tokenizer_setup_matches_training(profile):
    expected = golden(f"dataset_{profile}_mml2048.json")["meta"]["tokenizer_after_setup"]
    tokenizer = tokenizer_for(profile)
    for field in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side", "model_max_length"):
        assert getattr(tokenizer, field) == expected[field], field


@pytest.mark.parametrize("profile", PROFILES)
def test_dataset_goldens(profile, siglip_processor):
    recorded = golden(f"dataset_{profile}_mml2048.json")
    dataset = dataset_for(profile, siglip_processor)
    assert dataset.lengths == recorded["meta"]["lengths"]
    assert dataset.modality_lengths == recorded["meta"]["modality_lengths"]
    for i, expected in enumerate(recorded["samples"]):
        item = dataset[i]
        tokenized = dataset.tokenize(i)
        assert tokenized.prompt == expected["prompt"]
        assert item["input_ids"].tolist() == expected["input_ids"]
        assert item["labels"].tolist() == expected["labels"]
        assert tokenized.num_supervised == expected["num_supervised_tokens"]
        image = item["image"]
        assert list(image.shape) == expected["image_tensor"]["shape"]
        assert image.sum().item() == pytest.approx(expected["image_tensor"]["sum"], abs=1e-3)
        assert image.abs().sum().item() == pytest.approx(expected["image_tensor"]["abs_sum"], abs=1e-3)
        assert image.flatten()[:8].tolist() == pytest.approx(expected["image_tensor"]["first8"], abs=1e-6)


@pytest.mark.parametrize("profile", PROFILES)
def test_collator_golden(profile, siglip_processor):
    recorded = golden(f"collator_{profile}_mml2048_batch_A.json")
    dataset = dataset_for(profile, siglip_processor)
    ids = [s["id"] for s in dataset.samples]
    batch = DataCollatorForSupervisedDataset(dataset.tokenizer)([dataset[ids.index(i)] for i in recorded["meta"]["sample_ids"]])
    expected = recorded["batch"]
    assert batch["input_ids"].tolist() == expected["input_ids"]
    assert batch["labels"].tolist() == expected["labels"]
    assert batch["attention_mask"].tolist() == expected["attention_mask"]
    assert list(batch["images"].shape) == expected["images"]["shape"]
    assert batch["images"].sum().item() == pytest.approx(expected["images"]["sum"], abs=1e-3)
    # pad == eos here: the real end tokens stay attended, only padding is masked.
    eos = dataset.tokenizer.eos_token_id
    assert dataset.tokenizer.pad_token_id == eos
    real_eos = (batch["input_ids"] == eos) & batch["attention_mask"]
    assert real_eos.sum() > 0


def test_collator_truncates_and_lists_mixed_images():
    class Tok:
        model_max_length = 4
        pad_token_id = 0

    instances = [
        {"input_ids": torch.tensor([5, 6, 7, 8, 9, 10]), "labels": torch.tensor([-100, 6, 7, 8, 9, 10]), "image": torch.zeros(3, 4, 4)},
        {"input_ids": torch.tensor([5, 0]), "labels": torch.tensor([-100, 0]), "image": torch.zeros(3, 8, 8)},
    ]
    batch = DataCollatorForSupervisedDataset(Tok())(instances)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, 8], [-100, 0, -100, -100]]
    # A real token equal to the pad id stays attended; padding does not.
    assert batch["attention_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert isinstance(batch["images"], list) and len(batch["images"]) == 2


def test_segments_render_the_template_prompt():
    turns = [
        {"from": "human", "value": "<image>\nQ1"},
        {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "Q2"},
        {"from": "gpt", "value": "A2"},
    ]
    for name in ("bunny", "phi3", "minicpm", "llama"):
        conv = get_conv_template(name)
        for turn in turns:
            conv.append_message(conv.roles[0] if turn["from"] == "human" else conv.roles[1], turn["value"])
        segments = render_segments(turns, get_conv_template(name), "s")
        assert "".join(s.text for s in segments) == conv.get_prompt()
        assert [s.text for s in segments if s.supervised] == [f" A1{conv.sep2}", f" A2{conv.sep2}"]


def test_image_marker_moves_to_the_front():
    turns = move_image_to_front([{"from": "human", "value": "Look <image> here"}, {"from": "gpt", "value": "ok"}])
    assert turns[0]["value"] == "<image>\nLook  here"


def test_pretraining_sample_keeps_only_the_caption(siglip_processor):
    tokenizer = tokenizer_for("phi-2")
    turns = [{"from": "human", "value": "<image>\nDescribe this."}, {"from": "gpt", "value": "A red square."}]
    sample = tokenize_sample(turns, tokenizer, get_conv_template("plain"), has_image=True)
    assert sample.prompt == "<image>A red square.\n"
    caption = tokenizer("A red square.\n").input_ids
    assert sample.input_ids == [-200] + caption
    assert sample.labels == [IGNORE_INDEX] + caption
    llama = tokenizer_for("llama3-8b")
    sample = tokenize_sample(turns, llama, get_conv_template("plain"), has_image=True)
    assert sample.labels[:2] == [IGNORE_INDEX, IGNORE_INDEX] and sample.input_ids[:2] == [llama.bos_token_id, -200]


MULTI_TURN = [
    {"from": "human", "value": "Hello, can you help me?"},
    {"from": "gpt", "value": "Yes."},
    {"from": "human", "value": "And dogs?"},
    {"from": "gpt", "value": "There are no dogs."},
]


@pytest.mark.parametrize("profile,template", [("llama3-8b", "bunny"), ("phi-2", "llama")])
def test_template_mismatch_is_an_error_naming_sample_and_template(profile, template):
    tokenizer = tokenizer_for(profile)
    with pytest.raises(TokenizationMismatchError, match=rf"sample 7.*template '{template}'.*BOS.*--version"):
        tokenize_sample(MULTI_TURN, tokenizer, get_conv_template(template), has_image=False, where="sample 7")
    # The original's behaviour on request: the sample is kept, fully masked, and reported.
    masked = tokenize_sample(MULTI_TURN, tokenizer, get_conv_template(template), has_image=False, mismatch="mask")
    assert masked.num_supervised == 0 and masked.fully_masked == "tokenization mismatch"
    assert masked.input_ids == tokenizer(masked.prompt).input_ids


def test_truncated_text_sample_without_supervision():
    tokenizer = tokenizer_for("phi-2", max_length=40)
    with pytest.raises(TokenizationMismatchError, match="no supervised token.*model_max_length 40"):
        tokenize_sample(MULTI_TURN, tokenizer, get_conv_template("bunny"), has_image=False, where="s")
    sample = tokenize_sample(MULTI_TURN, tokenizer, get_conv_template("bunny"), has_image=False, mismatch="mask")
    assert len(sample.input_ids) == 40 and sample.num_supervised == 0 and sample.fully_masked


def test_image_sample_pushed_past_max_length_by_the_splice():
    tokenizer = tokenizer_for("phi-2", max_length=60)
    turns = move_image_to_front([{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A dog."}])
    sample = tokenize_sample(turns, tokenizer, get_conv_template("bunny"), has_image=True, image_tokens=1)
    assert sample.num_supervised > 0
    with pytest.raises(TokenizationMismatchError, match="after splicing"):
        tokenize_sample(turns, tokenizer, get_conv_template("bunny"), has_image=True, image_tokens=64)


def test_bad_data_files(tmp_path, siglip_processor):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"conversations": [\n  {"from": "human", "value": "hi"}\n  {"from": "gpt"}]}]')
    with pytest.raises(DataFormatError, match=r"broken.json: not valid JSON at line 3"):
        dataset_for("phi-2", siglip_processor, data_path=broken)
    bad_role = tmp_path / "role.json"
    bad_role.write_text(json.dumps([{"id": "x1", "conversations": [{"from": "system", "value": "hi"}]}]))
    with pytest.raises(DataFormatError, match=r"sample 0 \(id 'x1'\), turn 0: 'from' is 'system'"):
        dataset_for("phi-2", siglip_processor, data_path=bad_role)
    not_alternating = tmp_path / "alt.json"
    not_alternating.write_text(json.dumps([{"id": "x2", "conversations": [{"from": "human", "value": "a"}] * 2}]))
    with pytest.raises(DataFormatError, match="x2.*turn 1.*alternate"):
        dataset_for("phi-2", siglip_processor, data_path=not_alternating)[0]


def test_missing_and_corrupt_images_name_file_and_sample(tmp_path, siglip_processor):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FIXTURES / "images" / "test_image.png", images / "ok.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG not really")
    samples = [
        {"id": name, "image": name, "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}
        for name in ("ok.png", "missing.png", "corrupt.png")
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(samples))
    dataset = LazySupervisedDataset(
        str(data), tokenizer_for("phi-2"), get_conv_template("bunny"), image_folder=str(images),
        image_processor=siglip_processor, image_aspect_ratio="pad",
    )
    assert dataset[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ImageLoadError, match=r"sample 1 \(id 'missing.png'\).*missing.png"):
        dataset[1]
    with pytest.raises(ImageLoadError, match=r"sample 2 \(id 'corrupt.png'\).*corrupt.png"):
        dataset[2]


LONG_TURNS = [
    {"from": "human", "value": "What is the colour of the big box in the picture? " * 2},
    {"from": "gpt", "value": "It is red, and the box is big. " * 4},
    {"from": "human", "value": "And the small one?"},
    {"from": "gpt", "value": "Blue."},
]


@pytest.mark.parametrize("profile,template", [("llama3-8b", "bunny"), ("phi-2", "llama")])
@pytest.mark.parametrize("has_image", [False, True])
def test_a_mismatch_is_caught_in_samples_longer_than_model_max_length(profile, template, has_image):
    # The original checked its round lengths only while they stayed below model_max_length, so a long
    # sample kept labels shifted off their tokens; the check now runs on the whole sample.
    tokenizer = tokenizer_for(profile, max_length=60)
    turns = [dict(turn) for turn in LONG_TURNS]
    if has_image:
        turns[0]["value"] = "<image>\n" + turns[0]["value"]
    assert len(tokenizer(get_conv_template(template).copy().get_prompt()).input_ids) < 60
    with pytest.raises(TokenizationMismatchError, match=f"template '{template}'"):
        tokenize_sample(turns, tokenizer, get_conv_template(template), has_image=has_image, where="s")
    masked = tokenize_sample(turns, tokenizer, get_conv_template(template), has_image=has_image, mismatch="mask")
    assert masked.fully_masked == "tokenization mismatch" and masked.num_supervised == 0
    if not has_image:  # text-only samples are still truncated, images are spliced first
        assert len(masked.input_ids) == 60 and masked.input_ids == tokenizer(masked.prompt).input_ids[:60]


def test_a_long_matching_sample_is_truncated_with_its_labels():
    whole = tokenize_sample(LONG_TURNS, tokenizer_for("phi-2"), get_conv_template("bunny"), has_image=False)
    limit = next(i for i, label in enumerate(whole.labels) if label != IGNORE_INDEX) + 5  # within the first reply
    cut = tokenize_sample(LONG_TURNS, tokenizer_for("phi-2", max_length=limit), get_conv_template("bunny"), has_image=False)
    assert len(whole.input_ids) > limit and cut.fully_masked is None
    assert (cut.input_ids, cut.labels) == (whole.input_ids[:limit], whole.labels[:limit]) and cut.num_supervised == 5


@pytest.mark.parametrize(
    "turns,has_image,cause",
    [
        ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "And?"}],
         False, r"the last turn \(turn 2\) is a question from 'human' with no reply"),
        ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}], False, r"turn 1: the reply \(gpt\) is empty"),
        ([{"from": "human", "value": "  "}, {"from": "gpt", "value": "Yes."}], False, r"turn 0: the question \(human\) is empty"),
        ([{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A dog."}], True,
         "it has an image but no <image> marker in its turns, so the image is unused"),
    ],
    ids=["unanswered", "empty-reply", "empty-question", "image-without-marker"],
)
def test_samples_the_original_trained_on_silently_say_what_is_wrong(turns, has_image, cause):
    tokenizer = tokenizer_for("phi-2")
    with pytest.raises(DataFormatError, match=rf"sample 3: {cause}"):
        tokenize_sample(turns, tokenizer, get_conv_template("bunny"), has_image=has_image, where="sample 3")
    # on request, trained on as the original did; a sample it masked whole says why
    sample = tokenize_sample(turns, tokenizer, get_conv_template("bunny"), has_image=has_image, mismatch="mask")
    if sample.fully_masked is not None:
        assert re.search(cause, sample.fully_masked)


def test_an_image_marked_in_two_turns_is_refused_when_the_file_is_read(tmp_path, siglip_processor):
    data = tmp_path / "data.json"
    turns = [{"from": "human", "value": "<image>\nA?"}, {"from": "gpt", "value": "B."}] * 2
    data.write_text(json.dumps([{"id": "two", "image": "x.png", "conversations": turns}]))
    with pytest.raises(DataFormatError, match=r"sample 0 \(id 'two'\): turns \[0, 2\] each mention <image>"):
        dataset_for("phi-2", siglip_processor, data_path=data)


def test_a_directory_given_as_the_image_says_so(tmp_path, siglip_processor):
    (tmp_path / "images" / "cat.png").mkdir(parents=True)
    data = tmp_path / "data.json"
    sample = {"id": "d", "image": "cat.png", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}
    data.write_text(json.dumps([sample]))
    dataset = LazySupervisedDataset(
        str(data), tokenizer_for("phi-2"), get_conv_template("bunny"), image_folder=str(tmp_path / "images"),
        image_processor=siglip_processor, image_aspect_ratio="pad",
    )
    with pytest.raises(ImageLoadError, match=r"sample 0 \(id 'd'\).*is a directory, not an image file"):
        dataset[0]


@pytest.mark.parametrize("projector_type,rejected", [("ldp", 0), ("mlp2x_gelu", 1)])
def test_inspect_counts_the_positions_the_projector_gives_an_image(projector_type, rejected, tmp_path):
    # siglip-tiny has 4x4 patches: ldp makes 2x2 = 4 positions of them, mlp2x_gelu keeps 16
    from bunny.data import inspect

    turns = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A red square."}]
    tokenizer = tokenizer_for("phi-2")
    sample = tokenize_sample(move_image_to_front(turns), tokenizer, get_conv_template("bunny"), has_image=True)
    first = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)  # the image counted as 1
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "s", "image": "test_image.png", "conversations": turns}]))
    args = inspect.parse_args([
        "--data_path", str(data), "--model_name_or_path", str(FIXTURES / "tokenizers" / "tok-phi"),
        "--version", "bunny", "--model_max_length", str(first + 4), "--model_type", "phi-2",
        "--image_folder", str(FIXTURES / "images"), "--vision_tower", str(FIXTURES / "siglip-tiny"),
        "--image_aspect_ratio", "pad", "--mm_projector_type", projector_type, "--json",
    ])
    assert inspect.inspect(args, io.StringIO()) == rejected
