"""`--batch-size` never changes an answer: every answer generator gives the same answer texts at batch
sizes 1 and 8, on a tiny checkpoint whose greedy answers end after different numbers of tokens,
with questions of different lengths. Batch size 1 answers through `generate`, one question at a
time; batch size 8 streams the questions through the continuous-batching engine (rows joining and
leaving a running batch), which the tests check did run several rows at once.

Also: how `answer_prompts` ends (early close, a picture that can't be read, a failing engine), that
beam search keeps static batches, and that `bench/eval.py` prints its JSON result.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoTokenizer

from benchmark_files import _parquet, make_cmmmu, make_mmmu, varied_checkpoint, write_lines
from bunny.conversation import conv_templates
from bunny.eval import answering
from bunny.eval.answering import LoadedModel, Prompt, Settings, answer_prompts
from tiny import FIXTURES

WORDS = "what which how many where is are there the a of in on left right colour shape red circle picture count".split()
QUESTION_WORDS = (1, 3, 6, 10, 15, 21, 28, 36, 2, 12)  # questions of different lengths
COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 30), (10, 10, 10), (250, 250, 250))


def question(index: int) -> str:
    words = QUESTION_WORDS[index % len(QUESTION_WORDS)]
    return " ".join(WORDS[(index * 7 + k) % len(WORDS)] for k in range(words)) + "?"


def picture(index: int) -> Image.Image:
    """A picture of its own colour and size (square and not, so padding shows)."""
    return Image.new("RGB", (12 + 5 * index, 16 + 3 * (index % 4)), COLOURS[index % len(COLOURS)])


def png_base64(index: int) -> str:
    buffer = io.BytesIO()
    picture(index).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> str:
    return str(varied_checkpoint(tmp_path_factory.mktemp("varied") / "bunny-phi-2"))


@pytest.fixture(scope="module")
def tokenizer(varied):
    return AutoTokenizer.from_pretrained(varied)


@pytest.fixture()
def engines(monkeypatch):
    """The continuous-batching engines `answer_prompts` makes, in order."""
    made = []

    class Recorded(answering.BatchGenerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(answering, "BatchGenerator", Recorded)
    return made


def assert_same_at_batch_sizes(answer, engines, tokenizer) -> list[str]:
    """`answer(batch_size)` -> answer texts, at batch sizes 1 and 8: identical, of different lengths,
    the first without the engine, the second through it with several rows decoding together."""
    one = answer(1)
    assert engines == []
    eight = answer(8)
    assert eight == one
    assert max(engine.peak_rows for engine in engines) > 1
    lengths = {len(tokenizer(text).input_ids) for text in one}
    assert len(lengths) >= 3, f"the answers should end at different lengths: {one}"
    return one


def model_flags(checkpoint: str) -> list[str]:
    return ["--model-path", checkpoint, "--model-type", "phi-2", "--device", "cpu"]


def standard_questions(tmp_path: Path, count: int = 10) -> Path:
    for index in range(count):
        picture(index).save(tmp_path / f"{index}.png")
    rows = [{"question_id": index, "image": f"{index}.png", "text": question(index), "category": "c"}
            for index in range(count)]
    return write_lines(tmp_path / "questions.jsonl", rows)


@pytest.mark.parametrize("generator", ["model_vqa_loader", "model_vqa"])
def test_standard_generators(tmp_path, in_fixture_root, varied, tokenizer, engines, generator):
    import importlib

    main = importlib.import_module(f"bunny.eval.{generator}").main
    questions = standard_questions(tmp_path)

    def answer(batch_size: int) -> list[str]:
        records = main([*model_flags(varied), "--temperature", "0", "--question-file", str(questions),
                        "--image-folder", str(tmp_path), "--answers-file", str(tmp_path / f"b{batch_size}" / "a.jsonl"),
                        "--max_new_tokens", "32", "--batch-size", str(batch_size)])
        return [record["text"] for record in records]

    assert_same_at_batch_sizes(answer, engines, tokenizer)


def test_mmbench_generator(tmp_path, in_fixture_root, varied, tokenizer, engines):
    import pandas as pd

    from bunny.eval import model_vqa_mmbench

    rows = [{"index": index, "question": question(index), "hint": question(index + 3) if index % 2 else None,
             "A": "red", "B": "a green circle on the left", "C": "blue" if index % 3 else None, "D": None,
             "image": png_base64(index), "category": "c", "l2-category": "x", "source": "s", "comment": None}
            for index in range(6)]  # fmt: skip
    tsv = tmp_path / "MMBench_DEV_EN_legacy.tsv"
    pd.DataFrame(rows).to_csv(tsv, sep="\t", index=False)

    def answer(batch_size: int) -> list[str]:
        records = model_vqa_mmbench.main([*model_flags(varied), "--temperature", "0", "--question-file", str(tsv),
                                          "--answers-file", str(tmp_path / f"b{batch_size}" / "a.jsonl"),
                                          "--all-rounds", "--batch-size", str(batch_size)])
        return [record["text"] for record in records]

    assert len(assert_same_at_batch_sizes(answer, engines, tokenizer)) > len(rows)  # the rotated rounds too


def test_science_generator_with_and_without_pictures(tmp_path, in_fixture_root, varied, tokenizer, engines):
    from bunny.eval import model_vqa_science

    entries = []
    for index in range(10):
        text = f"{question(index)}\nA. red\nB. blue"
        entry = {"id": str(index), "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "A"}]}
        if index % 2:  # every other question has a picture, not padded to a square
            picture(index).save(tmp_path / f"{index}.png")
            entry["image"] = f"{index}.png"
            entry["conversations"][0]["value"] = "<image>\n" + text
        entries.append(entry)
    questions = tmp_path / "bunny_test_CQM-A.json"
    questions.write_text(json.dumps(entries))

    def answer(batch_size: int) -> list[str]:
        records = model_vqa_science.main([*model_flags(varied), "--temperature", "0", "--question-file", str(questions),
                                          "--image-folder", str(tmp_path), "--single-pred-prompt",
                                          "--answers-file", str(tmp_path / f"b{batch_size}" / "a.jsonl"),
                                          "--batch-size", str(batch_size)])
        return [record["text"] for record in records]

    texts = assert_same_at_batch_sizes(answer, engines, tokenizer)
    # answers to questions with and without pictures both vary
    assert len(set(texts[0::2])) > 1 and len(set(texts[1::2])) > 1


def test_mmmu_generator(tmp_path, in_fixture_root, varied, tokenizer, engines):
    from bunny.eval import model_vqa_mmmu
    from bunny.eval.mmmu import data

    make_mmmu(tmp_path)
    image = {"bytes": base64.b64decode(png_base64(3)), "path": "x.png"}
    _parquet(tmp_path / "mmmu/MMMU/Art/validation-00000-of-00001.parquet", [
        {"id": f"validation_Art_{index}", "question": f"<image 1> {question(index)}", "answer": "A",
         "options": "['red', 'green', 'blue']", "image_1": image, "question_type": "multiple-choice"}
        for index in range(6)
    ])  # fmt: skip
    data.write_config(str(tmp_path / "config.yaml"))

    def answer(batch_size: int) -> list[str]:
        output = tmp_path / f"b{batch_size}" / "bunny.json"
        model_vqa_mmmu.main([*model_flags(varied), "--data-path", str(tmp_path / "mmmu/MMMU"),
                             "--config-path", str(tmp_path / "config.yaml"), "--output-path", str(output),
                             "--batch-size", str(batch_size)])
        raw = [json.loads(line) for line in Path(model_vqa_mmmu.responses_path(str(output))).read_text().splitlines()]
        return [row["response"] for row in raw if row["generated"]]

    assert_same_at_batch_sizes(answer, engines, tokenizer)


def test_cmmmu_generator(tmp_path, in_fixture_root, varied, tokenizer, engines):
    from bunny.eval import model_vqa_cmmmu
    from bunny.eval.cmmmu import data

    make_cmmmu(tmp_path)
    data.write_config(str(tmp_path / "prompt.yaml"))

    def answer(batch_size: int) -> list[str]:
        output = tmp_path / f"b{batch_size}" / "bunny.jsonl"
        lines = model_vqa_cmmmu.main([*model_flags(varied), "--data-path", str(tmp_path / "cmmmu/CMMMU"),
                                      "--config-path", str(tmp_path / "prompt.yaml"), "--output-path", str(output),
                                      "--batch-size", str(batch_size)])
        return [line["response"] for line in lines]

    assert_same_at_batch_sizes(answer, engines, tokenizer)


# -- answer_prompts itself -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(varied) -> LoadedModel:
    from bunny.model.builder import load_pretrained_model

    with contextlib.chdir(FIXTURES):
        tokenizer, model, processor, _ = load_pretrained_model(varied, None, "bunny-phi-2", "phi-2", device="cpu")
    return LoadedModel(tokenizer, model, processor)


def mixed_prompts(count: int) -> list[Prompt]:
    """Pictures padded and not, and text alone, interleaved."""
    return [
        Prompt(question(index), None if index % 3 == 0 else (lambda index=index: picture(index)), pad=index % 2 == 0)
        for index in range(count)
    ]


@pytest.fixture()
def near_template(monkeypatch) -> str:
    """The bunny template with a stop string that the tiny model's answers contain as text (its real
    stop strings are special tokens, skipped when answers are decoded)."""
    template = conv_templates["bunny"].copy()
    template.sep2 = " near"
    monkeypatch.setitem(conv_templates, "test-near", template)
    return "test-near"


@pytest.mark.parametrize(
    "conv_mode, trim_stop", [("bunny", True), ("bunny", False), ("minicpm", True), ("test-near", True)]
)
def test_engine_answers_equal_generate_for_every_kind_of_prompt(loaded, engines, near_template, conv_mode, trim_stop):
    prompts = mixed_prompts(12)
    settings = Settings(conv_mode=conv_mode, max_new_tokens=24, trim_stop=trim_stop)
    one = list(answer_prompts(prompts, loaded, settings, batch_size=1, progress=False))
    for batch_size in (3, 8):
        assert list(answer_prompts(prompts, loaded, settings, batch_size=batch_size, progress=False)) == one
    assert [engine.max_batch_size for engine in engines] == [3, 8]
    assert len(set(one)) > 3
    if trim_stop:
        assert not any(conv_templates[conv_mode].stop_str in answer for answer in one)


def running_engine_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "eval-batch-generator"]


def test_closing_the_answers_early_stops_the_engine(loaded):
    answers = answer_prompts(mixed_prompts(30), loaded, Settings("bunny", 24), batch_size=4, progress=False)
    first = next(answers)
    assert isinstance(first, str) and len(running_engine_threads()) == 1
    answers.close()
    assert running_engine_threads() == []


def test_a_picture_that_cannot_be_read_raises_its_own_error_at_any_batch_size(loaded):
    def unreadable():
        raise ValueError("question 'q5': image file not found: missing.png")

    prompts = mixed_prompts(8)
    prompts[5] = Prompt("What is it?", unreadable)
    for batch_size in (1, 8):
        with pytest.raises(ValueError, match="question 'q5': image file not found"):
            list(answer_prompts(prompts, loaded, Settings("bunny", 8), batch_size=batch_size, progress=False))
    assert running_engine_threads() == []


def test_a_failing_engine_is_an_error_not_a_hang(loaded, monkeypatch):
    def broken(self, stop):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(answering.BatchGenerator, "run_forever", broken)
    with pytest.raises(RuntimeError, match="stopped before answering question 1"):
        list(answer_prompts(mixed_prompts(4), loaded, Settings("bunny", 8), batch_size=2, progress=False))


def test_sampling_streams_through_the_engine_and_beam_search_keeps_static_batches(loaded, engines):
    sampled = list(answer_prompts(mixed_prompts(6), loaded, Settings("bunny", 6, temperature=0.7), 4, progress=False))
    assert len(sampled) == 6 and [engine.max_batch_size for engine in engines] == [4]
    beams = list(answer_prompts(mixed_prompts(4), loaded, Settings("bunny", 6, num_beams=2), 4, progress=False))
    assert len(beams) == 4 and len(engines) == 1


# -- bench/eval.py ----------------------------------------------------------------------------------


def test_the_eval_benchmark_prints_only_its_json_result():
    """As tests/test_bench.py does for the other benchmarks: the tiny workload runs and stdout is one
    JSON object (no timing is asserted)."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "eval.py"
    done = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert set(result["questions_per_s"]) == {
        "batch1", "batch8_continuous", "batch8_static", "first_token_only", "batch8_first_token_only"}
    assert set(result["answers_differing_from_batch1"]) == {"batch8_continuous", "batch8_static"}
    assert result["answer_tokens"]["max"] <= result["settings"]["max_new_tokens"]
