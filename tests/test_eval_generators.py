"""The answer generators (`python -m bunny.eval.model_vqa*`) end to end on a tiny checkpoint: the prompts
they build for each variant, the pictures they pass, and the answer files they write."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image

from bunny.eval import answering, model_vqa, model_vqa_mmbench, model_vqa_science
from bunny.eval.common import read_jsonl
from tiny import FIXTURES

CHECKPOINT = "checkpoints/bunny-phi-2-siglip-full"
MODEL = ["--model-path", CHECKPOINT, "--model-type", "phi-2", "--device", "cpu", "--temperature", "0"]
ANSWER_FIELDS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


@pytest.fixture()
def asked(monkeypatch, in_fixture_root):
    """The chat prompts the generators send to the model, in order (the model still answers them)."""
    prompts: list[str] = []
    real = answering.chat_prompt

    def spy(conv_mode, question, image=True):
        prompt = real(conv_mode, question, image)
        prompts.append(prompt)
        return prompt

    monkeypatch.setattr(answering, "chat_prompt", spy)
    return prompts


@pytest.fixture()
def pixels(monkeypatch):
    """The pixel tensors made for the model, one entry per call of `answering.pixel_values` (a static
    batch's pictures, or one picture the continuous-batching engine prefills)."""
    seen: list = []
    real = answering.pixel_values

    def spy(images, loaded, pad):
        values = real(images, loaded, pad)
        seen.append(values.clone())
        return values

    monkeypatch.setattr(answering, "pixel_values", spy)
    return seen


def user_turn(prompt: str) -> str:
    """The user's message inside the bunny template's prompt."""
    return prompt.split("USER: ", 1)[1].rsplit(" ASSISTANT:", 1)[0]


def png_bytes(size=(20, 12), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_model_vqa_trims_and_converts_pictures(tmp_path, asked):
    image = tmp_path / "palette.png"
    Image.new("P", (24, 16)).save(image)  # not RGB: the original passed it on as it was
    questions = tmp_path / "q.jsonl"
    rows = [{"question_id": 0, "image": "palette.png", "text": "Describe it.", "category": "conv"},
            {"question_id": 1, "image": "palette.png", "text": "And now?", "category": "conv"}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = tmp_path / "out" / "a.jsonl"
    records = model_vqa.main([*MODEL, "--question-file", str(questions), "--image-folder", str(tmp_path),
                              "--answers-file", str(answers), "--max_new_tokens", "5", "--batch-size", "2"])
    assert read_jsonl(str(answers)) == records
    assert [set(r) for r in records] == [ANSWER_FIELDS] * 2
    assert [r["prompt"] for r in records] == ["Describe it.", "And now?"]
    assert [user_turn(p) for p in asked] == ["<image>\nDescribe it.", "<image>\nAnd now?"]
    assert len({r["answer_id"] for r in records}) == 2


def test_fewer_questions_than_chunks_gives_an_empty_chunk(tmp_path, in_fixture_root):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 0, "image": "images/test_image.png", "text": "Hi"}) + "\n")
    answers = tmp_path / "a.jsonl"
    records = model_vqa.main([*MODEL, "--question-file", str(questions), "--image-folder", str(FIXTURES),
                              "--answers-file", str(answers), "--num-chunks", "3", "--chunk-idx", "2"])
    assert records == [] and answers.read_text() == ""


def mmbench_tsv(path, rows):
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


@pytest.fixture()
def mmbench_file(tmp_path):
    image = base64.b64encode(png_bytes()).decode()
    rows = [
        {"index": 7, "question": "What colour?", "hint": "A red card.", "A": "red", "B": "blue", "C": "green",
         "D": None, "image": image, "category": "colour", "l2-category": "x", "source": "s", "comment": None},
        {"index": 9, "question": "How many?", "hint": None, "A": "1", "B": "2", "C": None, "D": None,
         "image": "7", "category": "count", "l2-category": "x", "source": "s", "comment": None},
    ]
    path = tmp_path / "MMBench_DEV_EN_legacy.tsv"
    mmbench_tsv(path, rows)
    return path


@pytest.mark.parametrize(
    "lang, instruction",
    [("en", "Answer with the option's letter from the given choices directly."), ("cn", "请直接回答选项字母。")],
)
def test_mmbench_prompts_hints_and_languages(tmp_path, asked, mmbench_file, lang, instruction):
    answers = tmp_path / "a.jsonl"
    records = model_vqa_mmbench.main([*MODEL, "--question-file", str(mmbench_file), "--answers-file", str(answers),
                                      "--single-pred-prompt", "--lang", lang, "--batch-size", "2"])
    first = "A red card.\nWhat colour?\nA. red\nB. blue\nC. green"
    second = "How many?\nA. 1\nB. 2"  # options stop at the first missing one; no hint line
    assert [r["prompt"] for r in records] == [first, second]
    assert [user_turn(p) for p in asked] == [f"<image>\n{first}\n{instruction}", f"<image>\n{second}\n{instruction}"]
    assert [r["question_id"] for r in records] == [7, 9]  # ints, as the TSV's index
    assert [(r["round_id"], r["options"], r["option_char"]) for r in records] == [
        (0, ["red", "blue", "green"], ["A", "B", "C"]), (0, ["1", "2"], ["A", "B"])]
    assert read_jsonl(str(answers)) == records
    assert all(set(r) == ANSWER_FIELDS | {"round_id", "options", "option_char"} for r in records)


def test_mmbench_all_rounds_rotate_the_options(tmp_path, asked, mmbench_file):
    answers = tmp_path / "a.jsonl"
    records = model_vqa_mmbench.main([*MODEL, "--question-file", str(mmbench_file), "--answers-file", str(answers),
                                      "--all-rounds", "--num-chunks", "2", "--chunk-idx", "0"])
    assert [r["round_id"] for r in records] == [0, 1, 2]
    assert [r["options"] for r in records] == [["red", "blue", "green"], ["blue", "green", "red"], ["green", "red", "blue"]]
    assert [r["option_char"] for r in records] == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"]]
    assert records[1]["prompt"] == "A red card.\nWhat colour?\nA. blue\nB. green\nC. red"  # letters stay A, B, C
    assert [user_turn(p) for p in asked] == ["<image>\n" + r["prompt"] for r in records]  # no instruction asked
    assert len({r["answer_id"] for r in records}) == 3


def test_mmbench_missing_column_is_an_error(tmp_path, in_fixture_root):
    path = tmp_path / "bad.tsv"
    mmbench_tsv(path, [{"index": 1, "question": "q"}])
    with pytest.raises(SystemExit, match=r"bad.tsv: no column image"):
        model_vqa_mmbench.main([*MODEL, "--question-file", str(path), "--answers-file", str(tmp_path / "a.jsonl")])


def test_science_pictures_are_not_padded_and_text_questions_have_none(tmp_path, asked, pixels, in_fixture_root):
    (tmp_path / "4").mkdir()
    Image.new("RGB", (40, 10), (0, 0, 255)).save(tmp_path / "4" / "image.png")  # wide: padding would show
    entries = [
        {"id": "4", "image": "4/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: A blue bar.\nWhat colour is it?\nA. red\nB. blue"},
            {"from": "gpt", "value": "B"}]},
        {"id": "5", "conversations": [
            {"from": "human", "value": "Which is a mammal?\nA. cat\nB. trout"}, {"from": "gpt", "value": "A"}]},
    ]
    questions = tmp_path / "bunny_test_CQM-A.json"
    questions.write_text(json.dumps(entries))
    answers = tmp_path / "a.jsonl"
    records = model_vqa_science.main([*MODEL, "--question-file", str(questions), "--image-folder", str(tmp_path),
                                      "--answers-file", str(answers), "--single-pred-prompt", "--batch-size", "4"])
    suffix = "\nAnswer with the option's letter from the given choices directly."
    assert [r["prompt"] for r in records] == [
        "<image>\nContext: A blue bar.\nWhat colour is it?\nA. red\nB. blue" + suffix, "Which is a mammal?\nA. cat\nB. trout" + suffix]
    assert [user_turn(p) for p in asked] == [r["prompt"] for r in records]
    assert [r["question_id"] for r in records] == ["4", "5"]
    # the one picture went through the processor alone: a stretched blue bar, no grey border
    assert len(pixels) == 1
    from bunny.model.builder import load_pretrained_model

    processor = load_pretrained_model(CHECKPOINT, None, "bunny-phi-2", "phi-2", device="cpu")[2]
    unpadded = processor.preprocess(Image.open(tmp_path / "4" / "image.png"), return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels[0], unpadded)


def test_generators_name_a_missing_question_file(tmp_path, in_fixture_root):
    for main in (model_vqa.main, model_vqa_science.main, model_vqa_mmbench.main):
        with pytest.raises(SystemExit, match="absent"):
            main([*MODEL, "--question-file", str(tmp_path / "absent"), "--answers-file", str(tmp_path / "a.jsonl")])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """A checkpoint that ends every answer at once (MMMU and CMMMU have many questions)."""
    from benchmark_files import quick_checkpoint

    return str(quick_checkpoint(tmp_path_factory.mktemp("quick") / "bunny-phi-2"))


def test_mmmu_prompts_random_answers_and_prediction_file(tmp_path, asked, quick):
    from benchmark_files import _parquet, make_mmmu, png_bytes
    from bunny.eval import model_vqa_mmmu
    from bunny.eval.mmmu import data

    make_mmmu(tmp_path)
    image = {"bytes": png_bytes(), "path": "x.png"}
    _parquet(tmp_path / "mmmu/MMMU/Art/validation-00000-of-00001.parquet", [
        {"id": "validation_Art_1", "question": "Which?", "options": "[\"<img='a.png'>\", \"<img='b.png'>\"]",
         "answer": "A", "image_1": image, "question_type": "multiple-choice"},
        {"id": "validation_Art_2", "question": "<image 1> Colour?", "options": "['red', 'green', 'blue']",
         "answer": "C", "image_1": image, "question_type": "multiple-choice"},
    ])
    data.write_config(str(tmp_path / "config.yaml"))
    output = tmp_path / "answers_upload" / "validation" / "bunny.json"
    result = model_vqa_mmmu.main(["--model-path", quick, "--model-type", "phi-2", "--device", "cpu", "--batch-size", "8",
                                  "--data-path", str(tmp_path / "mmmu/MMMU"), "--config-path", str(tmp_path / "config.yaml"),
                                  "--output-path", str(output)])
    assert json.loads(output.read_text()) == result and len(result) == 32
    asked_by_question = {user_turn(p).split("\n")[1]: user_turn(p) for p in asked}
    assert "validation_Art_1" in result and len(asked) == 31  # the two-picture question is not asked
    assert asked_by_question["<image 1> Colour?"] == (
        "<image>\n<image 1> Colour?\n(A) red\n(B) green\n(C) blue\n\nAnswer with the option's letter from the given choices directly.")
    assert asked_by_question["<image 1> How many?"] == "<image>\n<image 1> How many?\nAnswer the question using a single word or phrase."
    assert result["validation_Accounting_2"] == ""  # an open answer is kept as generated
    assert result["validation_Art_1"] in ("A", "B") and result["validation_Art_2"] in ("A", "B", "C")
    # the random letters are Python's, seeded with --seed 42 and drawn in question order
    again = model_vqa_mmmu.main(["--model-path", quick, "--model-type", "phi-2", "--device", "cpu",
                                 "--data-path", str(tmp_path / "mmmu/MMMU"), "--config-path", str(tmp_path / "config.yaml"),
                                 "--output-path", str(tmp_path / "again.json")])
    assert again == result


def test_cmmmu_prompts_for_the_three_types_and_the_answer_file(tmp_path, asked, quick):
    from benchmark_files import _parquet, make_cmmmu, png_bytes
    from bunny.eval import model_vqa_cmmmu
    from bunny.eval.cmmmu import data

    make_cmmmu(tmp_path)
    image = {"bytes": png_bytes(), "path": "x.png"}
    rows = pd_rows(tmp_path / "cmmmu/CMMMU/business/val-00000-of-00001.parquet")
    rows.append(dict(rows[0], id=199, image_2=image, option3="蓝"))
    _parquet(tmp_path / "cmmmu/CMMMU/business/val-00000-of-00001.parquet", rows)
    data.write_config(str(tmp_path / "prompt.yaml"))
    output = tmp_path / "val" / "bunny.jsonl"
    lines = model_vqa_cmmmu.main(["--model-path", quick, "--model-type", "phi-2", "--device", "cpu", "--batch-size", "4",
                                  "--data-path", str(tmp_path / "cmmmu/CMMMU"), "--config-path", str(tmp_path / "prompt.yaml"),
                                  "--output-path", str(output)])
    assert read_jsonl(str(output)) == lines and all(set(line) == {"id", "type", "response"} for line in lines)
    assert len(lines) == 9 and len(asked) == 8  # the question with a second picture is answered at random
    assert next(line for line in lines if line["id"] == 199)["response"] in ("A", "B", "C")
    choice, true_false, fill_in = data.TASK_INSTRUCTIONS
    turns = [user_turn(p) for p in asked]
    assert f"<image>\n{choice.strip()}\n\n问题：<img=\"a.png\"> 什么颜色？\n选项：\n(A) 红\n(B) 绿\n\n正确答案：\n" in turns  # the option list ends in a newline
    assert f"<image>\n{true_false.strip()}\n\n问题：<img=\"a.png\"> 是绿色的。\n正确答案：\n" in turns
    assert f"<image>\n{fill_in.strip()}\n\n问题：<img=\"a.png\"> 有几个？\n正确答案：\n" in turns
    assert {line["type"] for line in lines} == {"选择", "判断", "填空"}


def pd_rows(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
