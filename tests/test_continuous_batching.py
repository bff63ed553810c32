"""The worker's generation loop on tiny models of every backbone: requests that arrive while others
are decoding join them between two steps, rows leave when they finish, and every request gets the
greedy tokens `model.generate` gives it alone.

Arrivals are made deterministic by submitting the late request from the running request's event
sink, which the loop calls synchronously: the late request is waiting before the next step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from bunny.model import MODEL_TYPES
from bunny.model.kv_cache import BlockGrowingCache
from bunny.inference.engine import BatchGenerator, Chunk, Done, GenerationRequest, _Row
from bunny.util.mm_utils import process_images
from tiny import FIXTURES, build_model, bunny_config, random_prompt


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "tok-phi")


def picture(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (20 + seed, 12 + 2 * seed, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def tiny_model(model_type: str, tower: str, **overrides):
    model = build_model(model_type, tower, **overrides)
    model.generation_config.eos_token_id = None  # random weights: let every row run its full length
    return model


def request(prompt_length: int, images: int, seed: int, max_new_tokens: int, **settings) -> GenerationRequest:
    ids = random_prompt(prompt_length, images, seed)
    return GenerationRequest(ids, [picture(seed + i) for i in range(images)], max_new_tokens, **settings)


def alone(model, req: GenerationRequest, **settings) -> list[int]:
    """The new tokens `model.generate` gives `req` by itself."""
    images = None
    if req.images:
        images = process_images(req.images, model.get_vision_tower().image_processor, model.config)
    with torch.inference_mode():
        out = model.generate(
            req.input_ids[None], images=images, attention_mask=torch.ones_like(req.input_ids[None]),
            max_new_tokens=req.max_new_tokens, use_cache=True, **{"do_sample": False, **settings},
        )
    return out[0, len(req.input_ids) :].tolist()


class Recorder:
    """A sink that keeps a request's events and can submit another request on its first chunk."""

    def __init__(self, req: GenerationRequest, engine: BatchGenerator, then: GenerationRequest | None = None):
        self.events: list = []
        self.engine, self.then = engine, then
        req.sink = self

    def __call__(self, event) -> None:
        self.events.append(event)
        if self.then is not None and isinstance(event, Chunk):
            self.engine.submit(self.then)
            self.then = None


def run(engine: BatchGenerator, first: GenerationRequest) -> None:
    """Submit `first` and run the loop until no request is left."""
    engine.submit(first)
    engine.run_forever(stop=lambda: not engine._waiting)


def engine_for(model, tokenizer, **kwargs) -> BatchGenerator:
    return BatchGenerator(model, tokenizer, model.get_vision_tower().image_processor, background=False, **kwargs)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_a_request_arriving_mid_answer_joins_the_running_rows_and_each_gets_its_tokens_alone(
    model_type, siglip_tower, tokenizer
):
    model = tiny_model(model_type, siglip_tower)
    engine = engine_for(model, tokenizer)
    # A short text-only prompt running; a longer one with two images joins (the running row is
    # padded on the left), then a third, shorter again, joins the two.
    first = request(6, 0, seed=1, max_new_tokens=14)
    second = request(9, 2, seed=2, max_new_tokens=6)
    third = request(4, 1, seed=3, max_new_tokens=8)
    watched = [Recorder(first, engine, then=second), Recorder(second, engine, then=third), Recorder(third, engine)]
    run(engine, first)
    assert list(engine.prefill_sizes) == [1, 1, 1]
    assert engine.peak_rows == 3
    for req, recorder in zip((first, second, third), watched):
        done = recorder.events[-1]
        assert isinstance(done, Done) and done.finish_reason == "length"
        assert done.completion_tokens == req.max_new_tokens
        assert done.text == tokenizer.decode(alone(model, req), skip_special_tokens=True)


def test_rows_leave_when_they_finish_and_the_padding_they_needed_goes_with_them(siglip_tower, tokenizer):
    model = tiny_model("phi-2", siglip_tower)
    engine = engine_for(model, tokenizer)
    widths = []
    step = engine._decode_step

    def watched_step(batch):
        widths.append((len(batch.rows), batch.mask.shape[1], batch.cache.get_seq_length()))
        return step(batch)

    engine._decode_step = watched_step
    long_prompt = request(30, 1, seed=4, max_new_tokens=3)  # the widest row leaves first
    short_prompt = request(3, 0, seed=5, max_new_tokens=10)
    for req in (long_prompt, short_prompt):
        Recorder(req, engine)
        engine.submit(req)
    engine.run_forever(stop=lambda: not engine._waiting)
    image_tokens = model.get_vision_tower().num_patches
    assert widths[0] == (2, 29 + image_tokens, 29 + image_tokens)
    rows, mask_width, cache_width = widths[-1]
    # one row left, holding only its own 3 prompt positions and the tokens it generated since
    assert rows == 1 and mask_width == cache_width == 3 + 9 - 1
    assert short_prompt.sink.events[-1].text == tokenizer.decode(alone(model, short_prompt), skip_special_tokens=True)


def test_each_row_keeps_its_own_settings_in_a_shared_batch(siglip_tower, tokenizer):
    model = tiny_model("llama3-8b", siglip_tower)
    penalised = request(8, 1, seed=6, max_new_tokens=12, repetition_penalty=1.3)
    sampled = request(5, 1, seed=7, max_new_tokens=12, temperature=0.8, top_p=0.9)
    plain = request(7, 0, seed=8, max_new_tokens=12)
    engine = engine_for(model, tokenizer)
    for req in (penalised, sampled, plain):
        Recorder(req, engine)
        engine.submit(req)
    engine.run_forever(stop=lambda: not engine._waiting)
    assert list(engine.prefill_sizes) == [3]
    assert penalised.sink.events[-1].text == tokenizer.decode(
        alone(model, penalised, repetition_penalty=1.3), skip_special_tokens=True
    )
    assert plain.sink.events[-1].text == tokenizer.decode(alone(model, plain), skip_special_tokens=True)
    assert sampled.sink.events[-1].completion_tokens == 12


def test_sampling_draws_as_generate_does(siglip_tower, tokenizer):
    model = tiny_model("qwen1.5-1.8b", siglip_tower)
    req = request(8, 1, seed=9, max_new_tokens=16, temperature=0.9, top_p=0.8, repetition_penalty=1.2)
    engine = engine_for(model, tokenizer)
    Recorder(req, engine)
    torch.manual_seed(1234)
    run(engine, req)
    torch.manual_seed(1234)
    expected = alone(model, req, do_sample=True, temperature=0.9, top_p=0.8, repetition_penalty=1.2)
    assert req.sink.events[-1].text == tokenizer.decode(expected, skip_special_tokens=True)


def test_a_model_with_sliding_window_layers_finishes_a_batch_before_the_next_starts(siglip_tower, tokenizer):
    model = tiny_model("phi-3", siglip_tower, sliding_window=64)
    assert not all(type(layer).__name__ == "BlockGrowingLayer" for layer in BlockGrowingCache(config=model.config).layers)
    engine = engine_for(model, tokenizer)
    first = request(6, 1, seed=10, max_new_tokens=10)
    late = request(4, 0, seed=11, max_new_tokens=5)
    Recorder(first, engine, then=late)
    Recorder(late, engine)
    run(engine, first)
    assert list(engine.prefill_sizes) == [1, 1] and engine.peak_rows == 1
    for req in (first, late):
        assert req.sink.events[-1].text == tokenizer.decode(alone(model, req), skip_special_tokens=True)


def test_regroup_right_aligns_the_rows_it_keeps():
    config = bunny_config("phi-2", None, num_hidden_layers=1)
    cache, a = BlockGrowingCache(config=config), BlockGrowingCache(config=config)
    keys = torch.arange(2 * 1 * 4 * 1, dtype=torch.float32).view(2, 1, 4, 1)
    cache.update(keys, -keys, 0)
    a.update(torch.full((1, 1, 2, 1), 9.0), torch.full((1, 1, 2, 1), -9.0), 0)
    joined = BlockGrowingCache.regroup([(cache, torch.tensor([1]), 1), (a, torch.tensor([0]), 0)])
    assert joined.get_seq_length() == 3
    layer = joined.layers[0]
    assert layer.keys[:, 0, :, 0].tolist() == [[5.0, 6.0, 7.0], [0.0, 9.0, 9.0]]
    assert layer.values[:, 0, :, 0].tolist() == [[-5.0, -6.0, -7.0], [0.0, -9.0, -9.0]]
    # the regrouped layer goes on growing in place
    layer.update(torch.ones(2, 1, 1, 1), torch.ones(2, 1, 1, 1))
    assert layer.keys.shape == (2, 1, 4, 1) and layer.keys[:, 0, -1, 0].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("tail", ["\u00c3", " <"])  # the byte-level token of 0xC3 alone; the start of "<|end|>"
def test_a_reply_ended_by_the_end_of_sequence_keeps_the_end_streaming_held_back(tokenizer, tail):
    """While a reply streams, an incomplete last character and an end that could still grow into a stop
    string are held back; the reply that ends there has them, as `generate`'s has."""
    tail_ids = [tokenizer.convert_tokens_to_ids(tail)] if len(tail) == 1 else tokenizer(tail).input_ids
    ids = tokenizer("a red").input_ids + tail_ids + [tokenizer.eos_token_id]
    events = []
    req = GenerationRequest(torch.tensor([5]), [], max_new_tokens=32, stop=("<|end|>",), sink=events.append)
    row = _Row(req, generation_config=None)
    for token in ids:
        row.advance(token, tokenizer, {tokenizer.eos_token_id})
    expected = tokenizer.decode(ids, skip_special_tokens=True)
    assert expected.endswith(("\ufffd", "<")) and events[-1] == Done(expected, "stop", len(ids))
