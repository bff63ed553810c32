"""MMMU and CMMMU: dataset reading and prompts, response parsing, the scorers' numbers and printouts,
and the answer-key preparation. Expected values are worked out by hand in the comments."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("yaml")
from PIL import Image  # noqa: E402

from bunny.eval.common import MissingDataError  # noqa: E402
from bunny.eval.cmmmu import data as cdata  # noqa: E402
from bunny.eval.cmmmu import eval_script  # noqa: E402
from bunny.eval.mmmu import data as mdata  # noqa: E402
from bunny.eval.mmmu import eval_mmmu  # noqa: E402
from bunny.eval.mmmu.eval_mmmu import parse_multi_choice_response, parse_open_response  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHOICES = ["A", "B", "C", "D"]


def seed_not_picking(letter: str, choices: list[str]) -> int:
    """A seed whose first random.choice(choices) is not `letter`."""
    return next(seed for seed in range(100) if random.Random(seed).choice(choices) != letter)


def png_bytes(size: tuple[int, int], mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 255) if mode == "RGBA" else 7).save(buffer, format="PNG")
    return buffer.getvalue()


# --- MMMU multiple-choice parsing ----------------------------------------------------------------------

def test_mc_edge_punctuation_is_stripped_one_mark_after_another():
    seed = seed_not_picking("B", CHOICES)
    # "B.,": strip(",") -> "B.", then strip(".") -> "B": the letter stands alone.
    assert parse_multi_choice_response("B.,", CHOICES, {}) == "B"
    # "B,.": strip(",") does nothing (ends in "."), strip(".") -> "B,"; " B, " has no " B " -> random pick.
    random.seed(seed)
    assert parse_multi_choice_response("B,.", CHOICES, {}) == random.Random(seed).choice(CHOICES)


def test_mc_bracketed_letters_beat_spaced_letters_and_the_last_one_wins():
    # "(B)" is bracketed; " A " is only spaced: brackets are looked for first.
    assert parse_multi_choice_response("I think (B), not A really", CHOICES, {}) == "B"
    # Two bracketed letters: "(C)" occurs after "(A)".
    assert parse_multi_choice_response("(C) is wrong, (A) is right", CHOICES, {}) == "A"
    # Two spaced letters: " D " starts after " B ".
    assert parse_multi_choice_response("B or maybe D", CHOICES, {}) == "D"
    # A letter glued to text is not a candidate: "A." at the end is stripped, "A:" inside is not " A ".
    assert parse_multi_choice_response("The answer is A.", CHOICES, {}) == "A"


def test_mc_option_text_counts_only_for_responses_of_more_than_five_words():
    options = {"A": "Blue one", "B": "red one"}
    # 7 words, "red one" occurs (case-insensitively) -> B.
    assert parse_multi_choice_response("It is clearly the RED ONE here", ["A", "B"], options) == "B"
    # Both texts occur; "blue one" occurs last -> A.
    assert parse_multi_choice_response("not the red one but the blue one", ["A", "B"], options) == "A"
    # 6 words is enough; 5 words are not: option texts are not looked at -> random pick.
    assert parse_multi_choice_response("so it is the red one", ["A", "B"], options) == "B"
    seed = seed_not_picking("B", ["A", "B"])
    random.seed(seed)
    assert parse_multi_choice_response("it is the red one", ["A", "B"], options) == random.Random(seed).choice(["A", "B"])


def test_mc_random_fallback_uses_the_global_generator():
    random.seed(123)
    picks = [parse_multi_choice_response("no idea", CHOICES, {}) for _ in range(5)]
    reference = random.Random(123)
    assert picks == [reference.choice(CHOICES) for _ in range(5)]


# --- MMMU open parsing and matching --------------------------------------------------------------------

def test_open_response_is_lower_cased_before_the_sentence_split():
    # Lower-cased first, so ". T" no longer splits: one sentence whose shortest tail is after the last "is ".
    assert parse_open_response("The answer is 5. The result is 7") == [7.0]
    # Newlines split; each sentence gives its key phrase.
    assert sorted(parse_open_response("x is 3\ny is 4")) == [3.0, 4.0]
    # "=" is an indicator only in the last sentence.
    assert parse_open_response("a = 2\nb = 3") == [3.0]
    # No indicator anywhere: the whole (stripped, lower-cased) response.
    assert set(parse_open_response("Paris")) == {"paris"}


def test_open_response_numbers_with_thousands_commas():
    # Key phrase "1,000 dollars"; numbers "1,000" (comma pattern) and "000" (the plain pattern restarts
    # after the comma) -> 1000.0 and 0.0 next to the lower-cased phrase.
    parsed = parse_open_response("The total is 1,000 dollars")
    assert set(parsed) == {"1,000 dollars", 1000.0, 0.0}
    assert eval_mmmu.eval_open("1000", parsed) is True


def test_open_single_characters_only_match_as_words():
    assert eval_mmmu.normalize_str(" B ") == [" b", "b "]
    assert eval_mmmu.eval_open("C", parse_open_response("c")) is True  # " c" is in " c"
    assert eval_mmmu.eval_open("a", parse_open_response("banana")) is False
    # Numbers compare after rounding to 2 decimals: 1.064 -> 1.06.
    assert eval_mmmu.eval_open("1.06", parse_open_response("It is 1.064")) is True
    assert eval_mmmu.eval_open(["$MgS$", "MgS"], parse_open_response("mgs")) is True
    assert eval_mmmu.eval_multi_choice(["A", "C"], "C") and not eval_mmmu.eval_multi_choice("A", "a")


# --- MMMU scoring --------------------------------------------------------------------------------------

ANSWERS = {
    "validation_Art_1": {"question_type": "multiple-choice", "ground_truth": "A"},
    "validation_Art_2": {"question_type": "multiple-choice", "ground_truth": "B"},
    "validation_Music_1": {"question_type": "multiple-choice", "ground_truth": "C"},
    "validation_Math_1": {"question_type": "short-answer", "ground_truth": "1.06"},
    "validation_Math_2": {"question_type": "short-answer", "ground_truth": ["$MgS$", "MgS"]},
    "validation_Math_3": {"question_type": "multiple-choice", "ground_truth": "D"},
    "validation_History_1": {"question_type": "multiple-choice", "ground_truth": "A"},
}
PREDICTIONS = {
    "validation_Art_1": "A",  # right
    "validation_Art_2": "C",  # wrong
    "validation_Music_1": "C",  # right
    "validation_Math_1": "The answer is 1.06.",  # key phrase "1.06" -> 1.06: right
    "validation_Math_2": "mgs",  # "mgs" contains the gold "mgs": right
}
# Art 1/2 = 0.5 (2), Music 1/1 = 1.0 (1) -> Art and Design (0.5*2 + 1.0*1) / 3 = 0.6667 -> 0.667;
# Math 2/2 = 1.0 (2) -> Science 1.0; Math_3 and History have no prediction and are not scored;
# Overall (0.5*2 + 1.0*1 + 1.0*2) / 5 = 0.8. Empty domains print {'num': 0, 'acc': 0}.
EXPECTED_MMMU = {
    "Overall-Art and Design": {"num": 3, "acc": 0.667},
    "Art": {"num": 2, "acc": 0.5},
    "Music": {"num": 1, "acc": 1.0},
    "Overall-Business": {"num": 0, "acc": 0},
    "Overall-Science": {"num": 2, "acc": 1.0},
    "Math": {"num": 2, "acc": 1.0},
    "Overall-Health and Medicine": {"num": 0, "acc": 0},
    "Overall-Humanities and Social Science": {"num": 0, "acc": 0},
    "Overall-Tech and Engineering": {"num": 0, "acc": 0},
    "Overall": {"num": 5, "acc": 0.8},
}


def write_json(path, value) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)
    return str(path)


def test_eval_mmmu_scores_by_subject_and_domain(tmp_path, capsys):
    output = write_json(tmp_path / "pred.json", PREDICTIONS)
    answers = write_json(tmp_path / "answers.json", ANSWERS)
    result = eval_mmmu.main(["--output-path", output, "--answer_path", answers])
    assert result == EXPECTED_MMMU
    assert list(result) == list(EXPECTED_MMMU)  # printed order: each domain, then its subjects
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 30 + 27 + 1  # 30 "Evaluating", 27 "Skipping" (all but Art, Music, Math), the dict
    assert lines[:4] == ["Evaluating: Accounting", "Skipping Accounting for not found", "Evaluating: Agriculture",
                         "Skipping Agriculture for not found"]
    assert "Evaluating: Art" in lines and "Skipping Art for not found" not in lines
    assert lines[-1] == repr(EXPECTED_MMMU)  # the original prints the Python dict
    assert lines[-1].startswith("{'Overall-Art and Design': {'num': 3, 'acc': 0.667}, 'Art': {'num': 2, 'acc': 0.5}")


def test_eval_mmmu_errors_name_the_cause(tmp_path, capsys):
    answers = write_json(tmp_path / "answers.json", ANSWERS)
    missing = write_json(tmp_path / "p1.json", {"validation_Art_9": "A"})
    with pytest.raises(SystemExit) as exit_info:
        eval_mmmu.main(["--output-path", missing, "--answer_path", answers])
    assert exit_info.value.code == 1 and "'validation_Art_9' has no answer" in capsys.readouterr().err
    unknown = write_json(tmp_path / "p2.json", {"validation_Poetry_1": "A"})
    with pytest.raises(SystemExit):
        eval_mmmu.main(["--output-path", unknown, "--answer_path", answers])
    assert "'Poetry' is not one of the 30 MMMU subjects" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_mmmu.main(["--output-path", str(tmp_path / "absent.json"), "--answer_path", answers])
    assert "absent.json" in capsys.readouterr().err


def test_eval_mmmu_runs_as_a_module(tmp_path):
    output = write_json(tmp_path / "pred.json", PREDICTIONS)
    answers = write_json(tmp_path / "answers.json", ANSWERS)
    run = subprocess.run(
        [sys.executable, "-m", "bunny.eval.mmmu.eval_mmmu", "--output-path", output, "--answer_path", answers],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == repr(EXPECTED_MMMU)


# --- MMMU dataset --------------------------------------------------------------------------------------

MMMU_SCHEMA = pa.schema([
    ("id", pa.string()), ("question", pa.string()), ("options", pa.string()),
    ("image_1", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("image_2", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("answer", pa.string()), ("question_type", pa.string()),
])


def write_mmmu(root, rows_by_subject: dict[str, list[dict]], split: str = "validation") -> str:
    """A clone of the hub dataset: every subject folder with `<split>-00000-of-00001.parquet`."""
    for subject in mdata.SUBJECTS:
        folder = root / subject
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows_by_subject.get(subject, []), schema=MMMU_SCHEMA)
        pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
    return str(root)


def mmmu_row(sample_id, options, answer, question_type="multiple-choice", image=None, question="Q?"):
    return {"id": sample_id, "question": question, "options": options, "answer": answer,
            "question_type": question_type, "image_1": image, "image_2": None}


@pytest.fixture
def mmmu_dataset(tmp_path):
    image = {"bytes": png_bytes((5, 3)), "path": "x.png"}
    rows = {
        "Art": [mmmu_row("validation_Art_1", "['a cat', 'a dog']", "B", image=image,
                         question="What is shown in <image 1>?")],
        "Accounting": [
            mmmu_row("validation_Accounting_1", "[]", "['$MgS$', 'MgS']", "open", image=image),
            mmmu_row("validation_Accounting_2", "[\"<img='a.png'> left\", \"<img='b.png'> right\"]", "A", image=image),
        ],
    }
    return write_mmmu(tmp_path / "MMMU", rows)


def test_mmmu_config_parses_to_the_original_values(tmp_path):
    path = str(tmp_path / "config.yaml")
    mdata.write_config(path)
    config = mdata.load_config(path)
    assert config["task_instructions"] == ""
    assert config["multi_choice_example_format"] == (
        "{}\n{}\nAnswer with the option's letter from the given choices directly."
    )
    assert config["short_ans_example_format"] == "{}\nAnswer the question using a single word or phrase."
    assert config["temperature"] == 0
    (tmp_path / "bad.yaml").write_text("task_instructions: ['a', 'b']\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'task_instructions' has 2 values"):
        mdata.load_config(str(tmp_path / "bad.yaml"))


def test_mmmu_split_rows_and_queries(mmmu_dataset, tmp_path):
    rows = mdata.load_split(mmmu_dataset, "validation")
    assert [row["id"] for row in rows] == ["validation_Accounting_1", "validation_Accounting_2", "validation_Art_1"]
    mdata.write_config(str(tmp_path / "config.yaml"))
    config = mdata.load_config(str(tmp_path / "config.yaml"))
    art = mdata.build_query(rows[2], config)
    assert art.prompt == (
        "What is shown in <image 1>?\n(A) a cat\n(B) a dog\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert (art.sample_id, art.question_type, art.all_choices) == ("validation_Art_1", "multiple-choice", ["A", "B"])
    assert art.index2ans == {"A": "a cat", "B": "a dog"}
    assert art.image().mode == "RGB" and art.image().size == (5, 3)
    open_query = mdata.build_query(rows[0], config)
    assert open_query.prompt == "Q?\nAnswer the question using a single word or phrase."
    assert (open_query.all_choices, open_query.index2ans, open_query.question_type) == ([], {}, "open")
    two_option_images = mdata.build_query(rows[1], config)
    assert two_option_images.image is None and two_option_images.all_choices == ["A", "B"]
    with_instructions = mdata.build_query(rows[0], {**config, "task_instructions": "  Be brief.\n"})
    assert with_instructions.prompt == "Be brief.\n\nQ?\nAnswer the question using a single word or phrase."


def test_mmmu_missing_data_is_named(tmp_path, mmmu_dataset):
    with pytest.raises(MissingDataError, match="huggingface.co/datasets/MMMU/MMMU") as error:
        mdata.load_split(str(tmp_path / "nowhere"), "validation")
    assert error.value.path == str(tmp_path / "nowhere")
    os.remove(os.path.join(mmmu_dataset, "Music", "validation-00000-of-00001.parquet"))
    with pytest.raises(MissingDataError) as error:
        mdata.load_split(mmmu_dataset, "validation")
    assert error.value.path == os.path.join(mmmu_dataset, "Music")
    with open(os.path.join(mmmu_dataset, "Music", "validation-00000-of-00001.parquet"), "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    with pytest.raises(ValueError, match="Git LFS pointer"):
        mdata.load_split(mmmu_dataset, "validation")


def test_mmmu_prepare_writes_the_answer_key_and_config(tmp_path, mmmu_dataset):
    written = mdata.prepare(str(tmp_path))
    assert written == [str(tmp_path / "config.yaml"), str(tmp_path / "answer_dict_val.json")]
    with open(tmp_path / "answer_dict_val.json", encoding="utf-8") as f:
        key = json.load(f)
    assert key == {  # dataset order; "open" -> "short-answer"; a list-literal answer -> a list
        "validation_Accounting_1": {"question_type": "short-answer", "ground_truth": ["$MgS$", "MgS"]},
        "validation_Accounting_2": {"question_type": "multiple-choice", "ground_truth": "A"},
        "validation_Art_1": {"question_type": "multiple-choice", "ground_truth": "B"},
    }
    assert mdata.prepare(str(tmp_path)) == []  # both present: nothing rewritten
    with pytest.raises(MissingDataError, match="huggingface.co/datasets/MMMU/MMMU") as error:
        mdata.prepare(str(tmp_path / "elsewhere"))
    assert error.value.path == str(tmp_path / "elsewhere" / "MMMU")


# --- CMMMU parsing -------------------------------------------------------------------------------------

def test_cmmmu_choice_counts_bare_letters_anywhere():
    rng = random.Random(0)
    options = {"A": "红色", "B": "绿色", "C": "蓝色", "D": "黄色"}
    # No "(X)": A and D each occur once in "DNA" -> both most frequent -> "AD".
    assert eval_script.get_multi_choice_prediction("DNA", CHOICES, options, rng) == "AD"
    # "(B)" twice, "(C)" once -> "B" (bare letters are not counted once markers exist).
    assert eval_script.get_multi_choice_prediction("(B) (C) (B) A", CHOICES, options, rng) == "B"
    # No letter at all: option texts are counted -> 蓝色 -> "C".
    assert eval_script.get_multi_choice_prediction("我认为是蓝色", CHOICES, options, rng) == "C"
    # Nothing found -> a random letter from the generator.
    seeded = random.Random(7)
    assert eval_script.get_multi_choice_prediction("不知道", CHOICES, options, seeded) == random.Random(7).choice(CHOICES)


def test_cmmmu_true_false_votes():
    rng = random.Random(0)
    # Key phrase after 说法: "不正确", which contains 正确 -> counted positive -> 对.
    assert eval_script.get_true_false_prediction("这个说法不正确") == ["不正确"]
    assert eval_script.judge_true_false(["不正确"], rng) == "对"
    assert eval_script.judge_true_false(["错误", "错的", "正确"], rng) == "错"  # 2 negative vs 1 positive
    # Ambiguous phrases are dropped; a tie (0 : 0) is a random pick.
    assert eval_script.judge_true_false(["是否正确"], random.Random(42)) == random.Random(42).choice(["对", "错"])


def test_cmmmu_fill_in_is_not_lower_cased_and_is_filtered():
    # Key phrase after 是: "dna"; not lower-cased, so the gold "DNA" is not inside it.
    assert eval_script.get_fill_blank_prediction("答案是dna", "DNA") == ["dna"]
    assert not eval_script.fill_in_correct(["dna"], eval_script.normalize_str("DNA", "DNA"))
    # 8 ASCII letters > 0 + 2 letters of the answer "5": the phrase is dropped.
    assert eval_script.get_fill_blank_prediction("答案是abcdefgh", "5") == []
    # "所以结果为5": tails after 为 "5", 所以 "结果为5", 结果 "为5" -> shortest "5" -> 5.0.
    assert eval_script.get_fill_blank_prediction("所以结果为5。", "5") == [5.0]


# --- CMMMU scoring -------------------------------------------------------------------------------------

CMMMU_DATA = [
    {"id": 1, "type": "选择", "question": "q", "option1": "红色", "option2": "绿色", "option3": "蓝色",
     "option4": "黄色", "answer": "A", "category": "艺术与设计"},
    {"id": 2, "type": "判断", "question": "q", "answer": "对", "category": "艺术与设计"},
    {"id": 3, "type": "填空", "question": "q", "answer": "DNA", "category": "商业"},
    {"id": 4, "type": "填空", "question": "q", "answer": "5", "category": "商业"},
    {"id": 5, "type": "选择", "question": "q", "option1": "x", "option2": "y", "option3": "z", "option4": "w",
     "answer": "AD", "category": "科学"},
    {"id": 6, "type": "选择", "question": "q", "option1": "x", "option2": "y", "option3": "z", "option4": "w",
     "answer": "B", "category": "科学"},
]
CMMMU_RESPONSES = [
    {"id": 1, "type": "选择", "response": "(A)"},  # A: right
    {"id": "2", "type": "判断", "response": "这个说法不正确"},  # 对 (不正确 counts positive): right; id as a string
    {"id": 3, "type": "填空", "response": "答案是dna"},  # not lower-cased: wrong
    {"id": 4, "type": "填空", "response": "所以结果为5。"},  # 5.0 == 5.0: right
    {"id": 99, "type": "选择", "response": "A"},  # not in the data file: ignored
    {"id": 5, "type": "选择", "response": "DNA"},  # "AD": right
    {"id": 6, "type": "选择", "response": ""},  # empty: wrong, no random pick
]
# Art & Design 2/2 = 1 -> "1"; Business 1/2 and Science 1/2 -> "0.5"; the three empty categories -> 0;
# Overall 4/6 = 0.666667 in %g. Column widths: Subject 28 (the longest name), the count columns
# 13 (header + 2), Acc 8 ("0.666667"; the others padded right so their points line up).
EXPECTED_TABLE = """\
| Subject                      |   Correct Num |   Entries Num |      Acc |
|------------------------------+---------------+---------------+----------|
| Art & Design                 |             2 |             2 | 1        |
| Business                     |             1 |             2 | 0.5      |
| Science                      |             1 |             2 | 0.5      |
| Health & Medicine            |             0 |             0 | 0        |
| Humanities & Social Sciences |             0 |             0 | 0        |
| Technology & Engineering     |             0 |             0 | 0        |
| Overall                      |             4 |             6 | 0.666667 |
"""


def write_jsonl_file(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return str(path)


def test_cmmmu_response_mode_table(tmp_path, capsys):
    data = write_jsonl_file(tmp_path / "data.jsonl", CMMMU_DATA)
    output = write_jsonl_file(tmp_path / "out.jsonl", CMMMU_RESPONSES)
    result = eval_script.main(["--output_path", output, "--data_path", data])
    assert result["Art & Design"] == {"correct_num": 2, "entries_num": 2, "acc": 1.0}
    assert result["Overall"] == {"correct_num": 4, "entries_num": 6, "acc": 4 / 6}
    printed = capsys.readouterr().out
    assert printed == "entries_num == 0, please check your file\n" * 3 + EXPECTED_TABLE


def test_cmmmu_empty_choice_response_draws_nothing():
    rng = random.Random(5)
    state = rng.getstate()
    output = {"id": 6, "type": "选择", "response": ""}
    assert eval_script.response_correct(output, CMMMU_DATA[5], rng) is False
    assert rng.getstate() == state


def test_cmmmu_answer_mode(tmp_path, capsys):
    data = write_jsonl_file(tmp_path / "data.jsonl", CMMMU_DATA)
    answers = [
        {"id": 1, "type": "选择", "answer": "A"},  # right
        {"id": 2, "type": "判断", "answer": "错"},  # wrong
        {"id": 3, "type": "填空", "answer": "DNA"},  # right
        {"id": 4, "type": "填空", "answer": "5.0"},  # 5.0 == 5.0: right
        {"id": 5, "type": "选择", "answer": "A"},  # wrong ("AD")
        {"id": 6, "type": "选择", "answer": "B"},  # right
    ]
    output = write_jsonl_file(tmp_path / "out.jsonl", answers)
    result = eval_script.main(["--output_path", output, "--data_path", data])
    # Art & Design 1/2, Business 2/2, Science 1/2 -> Overall 4/6.
    assert [result[name]["correct_num"] for name in ("Art & Design", "Business", "Science", "Overall")] == [1, 2, 1, 4]
    # Acc column 8 wide again (Overall 0.666667): the 1 of Business is padded to line up with its point.
    assert "| Business                     |             2 |             2 | 1        |" in capsys.readouterr().out


def test_cmmmu_errors_name_the_cause(tmp_path, capsys):
    data = write_jsonl_file(tmp_path / "data.jsonl", CMMMU_DATA)
    incomplete = write_jsonl_file(tmp_path / "o1.jsonl", CMMMU_RESPONSES[:3])
    with pytest.raises(SystemExit) as exit_info:
        eval_script.main(["--output_path", incomplete, "--data_path", data])
    assert exit_info.value.code == 1
    assert "no line for 1 商业 id(s) of the data file: 4" in capsys.readouterr().err
    mixed = write_jsonl_file(tmp_path / "o2.jsonl", [{"id": 1, "type": "选择", "response": "A", "extra": 1}])
    with pytest.raises(SystemExit):
        eval_script.main(["--output_path", mixed, "--data_path", data])
    assert "the line with id 1 has extra, id, response, type" in capsys.readouterr().err


def test_cmmmu_eval_runs_as_a_module(tmp_path):
    data = write_jsonl_file(tmp_path / "data.jsonl", CMMMU_DATA)
    output = write_jsonl_file(tmp_path / "out.jsonl", CMMMU_RESPONSES)
    run = subprocess.run(
        [sys.executable, "-m", "bunny.eval.cmmmu.eval_script", "--output_path", output, "--data_path", data],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.endswith(EXPECTED_TABLE)


# --- CMMMU dataset -------------------------------------------------------------------------------------

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CMMMU_SCHEMA = pa.schema(
    [("id", pa.int64()), ("type", pa.string()), ("question", pa.string())]
    + [(f"option{n}", pa.string()) for n in range(1, 5)]
    + [("image_1", IMAGE), ("image_2", IMAGE), ("image_1_filename", pa.string()), ("image_2_filename", pa.string()),
       ("answer", pa.string()), ("category", pa.string())]
)


def cmmmu_row(sample_id, question_type, options, answer, category, images=1):
    image = {"bytes": png_bytes((4, 6), mode="L"), "path": None}
    row = {"id": sample_id, "type": question_type, "question": f'问题{sample_id}<img="q.png">', "answer": answer,
           "category": category, "image_1": image, "image_2": image if images > 1 else None,
           "image_1_filename": "q.png", "image_2_filename": "a.png" if images > 1 else None}
    row.update({f"option{n}": options[n - 1] if n <= len(options) else None for n in range(1, 5)})
    return row


@pytest.fixture
def cmmmu_dataset(tmp_path):
    root = tmp_path / "CMMMU"
    rows = {
        "art_and_design": [cmmmu_row(11, "选择", ["甲", "乙", "丙"], "B", "艺术与设计")],
        "science": [cmmmu_row(12, "判断", [], "对", "科学"), cmmmu_row(13, "选择", ["x", "y"], "A", "科学", images=2)],
    }
    for config in cdata.CONFIGS:
        folder = root / config
        folder.mkdir(parents=True)
        table = pa.Table.from_pylist(rows.get(config, []), schema=CMMMU_SCHEMA)
        if config == "business":  # the hub's converted layout: <config>/<split>/*.parquet
            (folder / "val").mkdir()
            pq.write_table(table, folder / "val" / "0000.parquet")
        else:
            pq.write_table(table, folder / "val-00000-of-00001.parquet")
    return str(root)


def test_cmmmu_config_keeps_three_instructions(tmp_path):
    path = str(tmp_path / "prompt.yaml")
    cdata.write_config(path)
    config = cdata.load_config(path)
    assert config["task_instructions"] == list(cdata.TASK_INSTRUCTIONS)
    assert config["task_instructions"][1].startswith("请回答以下判断题")
    assert config["multi_choice_example_format"] == "问题：{}\n选项：\n{}\n正确答案：\n"
    assert config["T/F_example_format"] == config["short_ans_example_format"] == "问题：{}\n正确答案：\n"


def test_cmmmu_split_rows_and_queries(cmmmu_dataset, tmp_path):
    rows = cdata.load_split(cmmmu_dataset, "val")
    assert [row["id"] for row in rows] == [11, 12, 13]  # CONFIGS order: art_and_design before science
    cdata.write_config(str(tmp_path / "prompt.yaml"))
    config = cdata.load_config(str(tmp_path / "prompt.yaml"))
    choice = cdata.build_query(rows[0], config)
    assert choice.prompt == (
        cdata.TASK_INSTRUCTIONS[0] + '\n\n问题：问题11<img="q.png">\n选项：\n(A) 甲\n(B) 乙\n(C) 丙\n\n正确答案：\n'
    )
    assert (choice.sample_id, choice.question_type, choice.all_choices) == (11, "选择", ["A", "B", "C"])
    assert choice.image().mode == "RGB" and choice.image().size == (4, 6) and not choice.multiple_images
    true_false = cdata.build_query(rows[1], config)
    assert true_false.prompt == cdata.TASK_INSTRUCTIONS[1] + '\n\n问题：问题12<img="q.png">\n正确答案：\n'
    assert true_false.all_choices == []
    several = cdata.build_query(rows[2], config)
    # image_2 present: no image; the original's random answer picks among the present options' letters.
    assert several.image is None and several.multiple_images and several.all_choices == ["A", "B"]


def test_cmmmu_prepare_and_missing_data(tmp_path, cmmmu_dataset):
    written = cdata.prepare(str(tmp_path))
    assert written == [str(tmp_path / "prompt.yaml"), str(tmp_path / "cmmmu-data-val-answer.jsonl")]
    with open(tmp_path / "cmmmu-data-val-answer.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    # No images and no file-name columns, no empty options, img_list from the file names (sorted).
    assert rows[0] == {"id": 11, "type": "选择", "question": '问题11<img="q.png">', "option1": "甲", "option2": "乙",
                       "option3": "丙", "answer": "B", "category": "艺术与设计", "img_list": ["q.png"]}
    assert rows[2]["img_list"] == ["a.png", "q.png"] and "option1" not in rows[1]
    assert cdata.prepare(str(tmp_path)) == []
    with pytest.raises(MissingDataError, match="huggingface.co/datasets/m-a-p/CMMMU") as error:
        cdata.prepare(str(tmp_path / "elsewhere"))
    assert error.value.path == str(tmp_path / "elsewhere" / "CMMMU")
    os.remove(os.path.join(cmmmu_dataset, "science", "val-00000-of-00001.parquet"))
    with pytest.raises(MissingDataError) as error:
        cdata.load_split(cmmmu_dataset, "val")
    assert error.value.path == os.path.join(cmmmu_dataset, "science")


def test_cmmmu_prepared_file_scores(tmp_path, cmmmu_dataset, capsys):
    cdata.prepare(str(tmp_path))
    responses = [{"id": 11, "type": "选择", "response": "(B)"}, {"id": 12, "type": "判断", "response": "说法正确"},
                 {"id": 13, "type": "选择", "response": "A"}]
    output = write_jsonl_file(tmp_path / "out.jsonl", responses)
    result = eval_script.main(["--output_path", output, "--data_path", str(tmp_path / "cmmmu-data-val-answer.jsonl")])
    assert result["Overall"] == {"correct_num": 3, "entries_num": 3, "acc": 1.0}  # B, 对, A all right
