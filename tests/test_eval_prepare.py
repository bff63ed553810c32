"""`python -m bunny.eval.prepare`: question files in the original's format from small official-format files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bunny.eval import prepare as prep
from bunny.eval.common import MissingDataError

REPO = Path(__file__).resolve().parents[1]
SHORT = "\\nAnswer the question using a single word or phrase."  # as it appears inside a JSON string


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, document: object) -> Path:
    return write(path, json.dumps(document))


def lines(path: Path | str) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


# --- MME ---------------------------------------------------------------------------------------

def make_mme(root: Path) -> Path:
    release = root / "MME_Benchmark_release_version"
    # artwork: images/ + questions_answers_YN/ ; code_reasoning: txt files beside the images
    write(release / "artwork/images/20.jpg", "")
    write(release / "artwork/images/3.jpg", "")
    write(release / "artwork/questions_answers_YN/3.txt",
          "Is this artwork displayed in mus\u00e9e d'orsay? Please answer yes or no.\tYes\n"
          "Is this artwork displayed in the louvre?  Please answer yes or no.\tNo\n")
    write(release / "artwork/questions_answers_YN/20.txt", "Is it a painting? Please answer yes or no.\tYes\r\n\nIs it a statue?\tNo\n")
    write(release / "code_reasoning/0001.png", "")
    write(release / "code_reasoning/0001.txt", "Is a python code shown in the picture? Please answer yes or no.\tYes\n"
                                               "Is a c++ code shown in the picture? Please answer yes or no.\tNo\n")
    return release


def test_mme_reads_both_layouts_drops_the_yes_no_instruction_and_escapes_like_the_original(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prep, "MME_CATEGORIES", ("artwork", "code_reasoning"))
    make_mme(tmp_path)
    assert prep.prepare("mme", str(tmp_path)) == [str(tmp_path / "bunny_mme.jsonl")]
    # Categories, then txt files, in sorted order ("20.txt" < "3.txt"); two consecutive lines per image;
    # "Please answer yes or no." removed and the rest stripped (the two-space variant too); é written \u00e9.
    assert lines(tmp_path / "bunny_mme.jsonl") == [
        '{"question_id": "artwork/images/20.jpg", "image": "artwork/images/20.jpg", "text": "Is it a painting?' + SHORT + '", "category": "artwork"}',
        '{"question_id": "artwork/images/20.jpg", "image": "artwork/images/20.jpg", "text": "Is it a statue?' + SHORT + '", "category": "artwork"}',
        '{"question_id": "artwork/images/3.jpg", "image": "artwork/images/3.jpg", "text": "Is this artwork displayed in mus\\u00e9e d\'orsay?' + SHORT + '", "category": "artwork"}',
        '{"question_id": "artwork/images/3.jpg", "image": "artwork/images/3.jpg", "text": "Is this artwork displayed in the louvre?' + SHORT + '", "category": "artwork"}',
        '{"question_id": "code_reasoning/0001.png", "image": "code_reasoning/0001.png", "text": "Is a python code shown in the picture?' + SHORT + '", "category": "code_reasoning"}',
        '{"question_id": "code_reasoning/0001.png", "image": "code_reasoning/0001.png", "text": "Is a c++ code shown in the picture?' + SHORT + '", "category": "code_reasoning"}',
    ]
    assert f"wrote {tmp_path / 'bunny_mme.jsonl'} (6 questions)" in capsys.readouterr().out


def test_mme_errors_name_the_file(tmp_path, monkeypatch):
    release = make_mme(tmp_path)
    with pytest.raises(MissingDataError, match=r"MME_Benchmark_release_version/OCR: MME's OCR folder"):
        prep.prepare("mme", str(tmp_path))  # the real list of 14 categories: OCR is missing
    monkeypatch.setattr(prep, "MME_CATEGORIES", ("artwork",))
    write(release / "artwork/questions_answers_YN/3.txt", "only one question\tYes\n")
    with pytest.raises(ValueError, match=r"3\.txt: 1 questions; MME has 2 per image"):
        prep.prepare("mme", str(tmp_path))
    write(release / "artwork/questions_answers_YN/3.txt", "a\tYes\nno tab here\n")
    with pytest.raises(ValueError, match=r"3\.txt, line 2: expected 'question<TAB>answer'"):
        prep.prepare("mme", str(tmp_path))
    os.remove(release / "artwork/images/20.jpg")
    write(release / "artwork/questions_answers_YN/3.txt", "a\tYes\nb\tNo\n")
    with pytest.raises(ValueError, match=r"20\.txt: no image 20\.jpg or 20\.png"):
        prep.prepare("mme", str(tmp_path))


# --- POPE --------------------------------------------------------------------------------------

def make_pope(data_dir: Path) -> None:
    for category, questions in {
        "random": [("COCO_val2014_000000000042.jpg", "Is there a dog in the image?", "no")],
        "popular": [("COCO_val2014_000000000001.jpg", "Is there a car in the image?", "yes"),
                    ("COCO_val2014_000000000001.jpg", "Is there a person in the image?", "no")],
        "adversarial": [("COCO_val2014_000000000007.jpg", "Is there an umbrella in the imange?", "yes")],
    }.items():
        rows = [{"question_id": i, "image": image, "text": text, "label": label}
                for i, (image, text, label) in enumerate(questions, start=1)]
        write(data_dir / "coco" / f"coco_pope_{category}.json", "".join(json.dumps(r) + "\n" for r in rows))


def test_pope_offsets_ids_per_category_in_adversarial_popular_random_order(tmp_path):
    make_pope(tmp_path)
    prep.prepare("pope", str(tmp_path))
    # ids: adversarial 30000000 + 1; popular 20000000 + 1, + 2; random 10000000 + 1 (spec §6.2)
    assert lines(tmp_path / "bunny_pope_test.jsonl") == [
        '{"question_id": 30000001, "image": "COCO_val2014_000000000007.jpg", "text": "Is there an umbrella in the imange?' + SHORT + '", "category": "adversarial"}',
        '{"question_id": 20000001, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a car in the image?' + SHORT + '", "category": "popular"}',
        '{"question_id": 20000002, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a person in the image?' + SHORT + '", "category": "popular"}',
        '{"question_id": 10000001, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog in the image?' + SHORT + '", "category": "random"}',
    ]


def test_pope_malformed_entries_name_the_file_and_question(tmp_path):
    make_pope(tmp_path)
    write(tmp_path / "coco/coco_pope_popular.json", '{"question_id": "1", "image": "a.jpg", "text": "q", "label": "yes"}\n')
    with pytest.raises(ValueError, match=r"coco_pope_popular\.json, question 1: 'question_id' is '1', not of type int"):
        prep.prepare("pope", str(tmp_path))
    write(tmp_path / "coco/coco_pope_popular.json", '{"question_id": 1, "image": "a.jpg", "text": "q"}\n')
    with pytest.raises(ValueError, match=r"coco_pope_popular\.json, line 1: no 'label'"):
        prep.prepare("pope", str(tmp_path))
    write(tmp_path / "coco/coco_pope_popular.json", '{"question_id": 10000000, "image": "a.jpg", "text": "q", "label": "no"}\n')
    with pytest.raises(ValueError, match=r"question 1: question_id 10000000 is outside"):
        prep.prepare("pope", str(tmp_path))


# --- ScienceQA ---------------------------------------------------------------------------------

def test_scienceqa_writes_llava_cqm_a_list(tmp_path):
    problems = {
        "5": {"question": "Which of the following could Gordon's test show?", "choices": ["if it was damaged", "how steady it was"],
              "answer": 1, "hint": "People can use the engineering-design process.\n\nGordon was an engineer.", "image": "image.png",
              "split": "test", "lecture": "", "solution": ""},
        "4": {"question": "Which figure of speech is used in this text?\nSing, O goddess\n\u2014Homer", "choices": ["chiasmus", "apostrophe"],
              "answer": 1, "hint": "", "image": None, "split": "test", "lecture": "", "solution": ""},
        "26": {"question": "How long does it take to bake lasagna in the oven?", "choices": ["33 minutes", "33 hours", "3 s"],
               "answer": 0, "hint": "Select the better estimate.", "image": None, "split": "test", "lecture": "", "solution": ""},
        "7": {"question": "unused", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None, "split": "val"},
    }
    write_json(tmp_path / "problems.json", problems)
    write_json(tmp_path / "pid_splits.json", {"test": ["4", "5", "26"], "val": ["7"]})
    prep.prepare("scienceqa", str(tmp_path))
    # LLaVA's llava_test_CQM-A.json: indent 2, ASCII escapes, split order; "Context: " line only with a
    # hint; "<image>\n" first for image questions; options "A. ..." one per line; gpt turn = answer letter.
    expected = r'''[
  {
    "id": "4",
    "conversations": [
      {
        "from": "human",
        "value": "Which figure of speech is used in this text?\nSing, O goddess\n\u2014Homer\nA. chiasmus\nB. apostrophe"
      },
      {
        "from": "gpt",
        "value": "B"
      }
    ]
  },
  {
    "id": "5",
    "image": "5/image.png",
    "conversations": [
      {
        "from": "human",
        "value": "<image>\nContext: People can use the engineering-design process.\n\nGordon was an engineer.\nWhich of the following could Gordon's test show?\nA. if it was damaged\nB. how steady it was"
      },
      {
        "from": "gpt",
        "value": "B"
      }
    ]
  },
  {
    "id": "26",
    "conversations": [
      {
        "from": "human",
        "value": "Context: Select the better estimate.\nHow long does it take to bake lasagna in the oven?\nA. 33 minutes\nB. 33 hours\nC. 3 s"
      },
      {
        "from": "gpt",
        "value": "A"
      }
    ]
  }
]'''
    assert (tmp_path / "bunny_test_CQM-A.json").read_text(encoding="utf-8") == expected


def test_scienceqa_errors_name_the_problem(tmp_path):
    write_json(tmp_path / "problems.json", {"4": {"question": "q", "choices": ["a", "b"], "answer": 2, "hint": "", "image": None}})
    write_json(tmp_path / "pid_splits.json", {"test": ["4"]})
    with pytest.raises(ValueError, match=r"problems\.json, problem '4': 'answer' 2 is not the index of a choice"):
        prep.prepare("scienceqa", str(tmp_path))
    write_json(tmp_path / "pid_splits.json", {"test": ["9"]})
    with pytest.raises(ValueError, match=r"problems\.json: no problem '9' \(listed in .*pid_splits\.json, 'test'\)"):
        prep.prepare("scienceqa", str(tmp_path))
    os.remove(tmp_path / "pid_splits.json")
    with pytest.raises(MissingDataError, match=r"pid_splits\.json: ScienceQA's split lists; download it from https://github.com/lupantech"):
        prep.prepare("scienceqa", str(tmp_path))


# --- GQA, VQAv2 --------------------------------------------------------------------------------

def test_gqa_keeps_file_order_and_string_ids(tmp_path):
    write_json(tmp_path / "testdev_balanced_questions.json", {
        "201307251": {"question": "Is it overcast?", "answer": "no", "imageId": "n161313", "isBalanced": True},
        "2062325": {"question": "Is the surfer wearing a wetsuit?", "answer": "yes", "imageId": "n179136", "isBalanced": True},
    })
    prep.prepare("gqa", str(tmp_path))
    assert lines(tmp_path / "bunny_gqa_testdev_balanced.jsonl") == [
        '{"question_id": "201307251", "image": "n161313.jpg", "text": "Is it overcast?' + SHORT + '", "category": "default"}',
        '{"question_id": "2062325", "image": "n179136.jpg", "text": "Is the surfer wearing a wetsuit?' + SHORT + '", "category": "default"}',
    ]
    write_json(tmp_path / "testdev_balanced_questions.json", {"7": {"question": "q"}})
    with pytest.raises(ValueError, match=r"testdev_balanced_questions\.json, question '7': no 'imageId'"):
        prep.prepare("gqa", str(tmp_path), overwrite=True)


def test_vqav2_builds_test_dev_and_full_test_files(tmp_path):
    write_json(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
               {"questions": [{"image_id": 262144, "question": "Is the ball flying towards the batter?", "question_id": 262144000}]})
    write_json(tmp_path / "v2_OpenEnded_mscoco_test2015_questions.json",
               {"questions": [{"image_id": 262144, "question": "Is the ball flying towards the batter?", "question_id": 262144000},
                              {"image_id": 1, "question": "What color?", "question_id": 1000}]})
    assert prep.prepare("vqav2", str(tmp_path)) == [
        str(tmp_path / "bunny_vqav2_mscoco_test-dev2015.jsonl"), str(tmp_path / "bunny_vqav2_mscoco_test2015.jsonl")]
    first = '{"question_id": 262144000, "image": "COCO_test2015_000000262144.jpg", "text": "Is the ball flying towards the batter?' + SHORT + '", "category": "default"}'
    assert lines(tmp_path / "bunny_vqav2_mscoco_test-dev2015.jsonl") == [first]
    assert lines(tmp_path / "bunny_vqav2_mscoco_test2015.jsonl") == [
        first, '{"question_id": 1000, "image": "COCO_test2015_000000000001.jpg", "text": "What color?' + SHORT + '", "category": "default"}']


# --- TextVQA, VizWiz, MM-Vet -------------------------------------------------------------------

def test_textvqa_joins_rosetta_tokens_and_keeps_an_empty_token_line(tmp_path):
    write_json(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": [
        {"question": "What is the brand of this camera?", "image_id": "003a8ae2ef43b901", "answers": ["dakota"] * 10},
        {"question": "Whats the lowest number yard line that you can see?", "image_id": "97b1112b17015396", "answers": ["10"] * 10},
        {"question": "Who is the author?", "image_id": "c8616652f54577f4", "answers": ["jorge"] * 10},
    ]})
    write_json(tmp_path / "TextVQA_Rosetta_OCR_v0.2_val.json", {"data": [
        {"image_id": "003a8ae2ef43b901", "ocr_tokens": ["DAKOTA", "DIGITAL", "Single-Use"]},
        {"image_id": "97b1112b17015396", "ocr_tokens": []},
        {"image_id": "c8616652f54577f4", "ocr_tokens": ["\u00a9", "JORGE"]},
    ]})
    prep.prepare("textvqa", str(tmp_path))
    assert lines(tmp_path / "bunny_textvqa_val_v051_ocr.jsonl") == [
        '{"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg", "text": "What is the brand of this camera?\\nReference OCR token: DAKOTA, DIGITAL, Single-Use' + SHORT + '", "category": "default"}',
        '{"question_id": "97b1112b17015396", "image": "97b1112b17015396.jpg", "text": "Whats the lowest number yard line that you can see?\\nReference OCR token: ' + SHORT + '", "category": "default"}',
        '{"question_id": "c8616652f54577f4", "image": "c8616652f54577f4.jpg", "text": "Who is the author?\\nReference OCR token: \\u00a9, JORGE' + SHORT + '", "category": "default"}',
    ]


def test_textvqa_tokens_inside_the_val_file_need_no_ocr_file_and_errors_name_the_image(tmp_path):
    write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [{"question": "Q?", "image_id": "ab", "ocr_tokens": ["x", "y"]}]})
    prep.prepare("textvqa", str(tmp_path))
    assert lines(tmp_path / "bunny_textvqa_val_v051_ocr.jsonl") == [
        '{"question_id": "ab", "image": "ab.jpg", "text": "Q?\\nReference OCR token: x, y' + SHORT + '", "category": "default"}']
    write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [{"question": "Q?", "image_id": "ab"}]})
    with pytest.raises(MissingDataError, match=r"TextVQA_Rosetta_OCR_v0\.2_val\.json: TextVQA's OCR tokens"):
        prep.prepare("textvqa", str(tmp_path), overwrite=True)
    write_json(tmp_path / "TextVQA_Rosetta_OCR_v0.2_val.json", {"data": [{"image_id": "cd", "ocr_tokens": []}]})
    with pytest.raises(ValueError, match=r"TextVQA_0\.5\.1_val\.json, question 1: image 'ab' has no entry in the OCR file"):
        prep.prepare("textvqa", str(tmp_path), overwrite=True)


def test_vizwiz_numbers_questions_from_zero_and_keeps_them_verbatim(tmp_path):
    write_json(tmp_path / "test.json", [
        {"image": "VizWiz_test_00000000.jpg", "question": "What is this? and what color is it?"},
        {"image": "VizWiz_test_00000001.jpg", "question": "What is this? "},
    ])
    prep.prepare("vizwiz", str(tmp_path))
    suffix = "\\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT
    assert lines(tmp_path / "bunny_test.jsonl") == [
        '{"question_id": 0, "image": "VizWiz_test_00000000.jpg", "text": "What is this? and what color is it?' + suffix + '", "category": "default"}',
        '{"question_id": 1, "image": "VizWiz_test_00000001.jpg", "text": "What is this? ' + suffix + '", "category": "default"}',
    ]


def test_mmvet_uses_the_official_image_name_and_key_number(tmp_path):
    write_json(tmp_path / "mm-vet.json", {
        "v1_0": {"imagename": "v1_0.png", "question": "What is x in the equation?", "answer": "-1 <AND> -5", "capability": ["ocr", "math"]},
        "v1_12": {"imagename": "v1_11.jpg", "question": "What is the cost of three bottles of \"Moet\"?", "answer": "$1344", "capability": ["ocr"]},
    })
    prep.prepare("mmvet", str(tmp_path))
    # the original's key order for this file: image, text, category, question_id; no suffix
    assert lines(tmp_path / "bunny-mm-vet.jsonl") == [
        '{"image": "v1_0.png", "text": "What is x in the equation?", "category": "conv", "question_id": 0}',
        '{"image": "v1_11.jpg", "text": "What is the cost of three bottles of \\"Moet\\"?", "category": "conv", "question_id": 12}',
    ]
    write_json(tmp_path / "mm-vet.json", {"q1": {"imagename": "a.png", "question": "q"}})
    with pytest.raises(ValueError, match=r"mm-vet\.json: question key 'q1' is not 'v1_<number>'"):
        prep.prepare("mmvet", str(tmp_path), overwrite=True)


# --- SEED-Bench, MMBench, MMMU, CMMMU ----------------------------------------------------------

def seed_entry(question_id: str, data_type: str, type_id: int, data_id: str) -> dict:
    return {"question_id": question_id, "question_type_id": type_id, "data_type": data_type, "data_id": data_id,
            "question": "How many towels are in the image?", "answer": "A",
            "choice_a": "One", "choice_b": "Two", "choice_c": "Three", "choice_d": "Four"}


def test_seedbench_options_images_video_frames_and_int_ids(tmp_path):
    write_json(tmp_path / "SEED-Bench.json", {"question_type": {"Instances Counting": 5, "Action Recognition": 10}, "questions": [
        seed_entry("101669", "image", 5, "1454426_2591111986.jpg"),
        seed_entry("1x", "video", 10, "v_123.webm"),
    ]})
    prep.prepare("seedbench", str(tmp_path))
    options = "\\nA. One\\nB. Two\\nC. Three\\nD. Four\\nAnswer with the option's letter from the given choices directly."
    assert lines(tmp_path / "bunny-seed-bench.jsonl") == [
        '{"question_id": 101669, "image": "SEED-Bench-image/1454426_2591111986.jpg", "text": "How many towels are in the image?' + options + '", "category": "image"}',
        '{"question_id": "1x", "image": "SEED-Bench-video-image/10_1x.png", "text": "How many towels are in the image?' + options + '", "category": "video"}',
    ]
    write_json(tmp_path / "SEED-Bench.json", {"questions": [seed_entry("1", "audio", 1, "a")]})
    with pytest.raises(ValueError, match=r"SEED-Bench\.json, question 1: 'data_type' is 'audio'"):
        prep.prepare("seedbench", str(tmp_path), overwrite=True)


def test_mmbench_checks_the_tsvs_in_place(tmp_path, capsys):
    with pytest.raises(MissingDataError, match=r"MMBench_DEV_EN_legacy\.tsv: MMBench's dev split.*opencompass"):
        prep.prepare("mmbench", str(tmp_path))
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit\n"
    write(tmp_path / "MMBench_DEV_CN_legacy.tsv", header + "0\tq\tnan\ta\tb\tc\td\tA\tx\tiVBOR\ts\tl\tnan\tdev\n")
    write(tmp_path / "MMBench_DEV_EN_legacy.tsv", header)
    found = prep.prepare("mmbench", str(tmp_path))
    assert found == [str(tmp_path / "MMBench_DEV_EN_legacy.tsv"), str(tmp_path / "MMBench_DEV_CN_legacy.tsv")]
    assert sorted(os.listdir(tmp_path)) == ["MMBench_DEV_CN_legacy.tsv", "MMBench_DEV_EN_legacy.tsv"]  # nothing written
    assert f"found {found[0]}" in capsys.readouterr().out
    write(tmp_path / "MMBench_DEV_EN_legacy.tsv", "index\tquestion\tA\tB\n")
    with pytest.raises(ValueError, match=r"MMBench_DEV_EN_legacy\.tsv: no column 'hint', 'image'"):
        prep.prepare("mmbench", str(tmp_path))


@pytest.mark.parametrize("benchmark", ["mmmu", "cmmmu"])
def test_mmmu_and_cmmmu_delegate_to_their_data_module(tmp_path, monkeypatch, benchmark):
    calls = []
    data = types.SimpleNamespace(prepare=lambda data_dir: calls.append(data_dir) or [os.path.join(data_dir, "answer.json")])
    monkeypatch.setitem(sys.modules, f"bunny.eval.{benchmark}", types.SimpleNamespace(data=data))
    assert prep.prepare(benchmark, str(tmp_path)) == [str(tmp_path / "answer.json")]
    monkeypatch.chdir(tmp_path)
    prep.prepare(benchmark)
    assert calls == [str(tmp_path), f"eval/{benchmark}"]


# --- the rules every benchmark shares ----------------------------------------------------------

def test_existing_question_file_is_kept_unless_overwrite(tmp_path, capsys):
    make_pope(tmp_path)
    target = write(tmp_path / "bunny_pope_test.jsonl", "the original's own file\n")
    assert prep.main(["pope", "--data-dir", str(tmp_path)])["files"] == {"pope": [str(target)]}
    assert target.read_text() == "the original's own file\n"
    assert f"kept {target}" in capsys.readouterr().out
    prep.main(["pope", "--data-dir", str(tmp_path), "--overwrite"])
    assert len(lines(target)) == 4 and "wrote" in capsys.readouterr().out


def test_output_is_deterministic_and_written_atomically(tmp_path):
    make_pope(tmp_path)
    first = Path(prep.prepare("pope", str(tmp_path))[0]).read_bytes()
    assert Path(prep.prepare("pope", str(tmp_path), overwrite=True)[0]).read_bytes() == first
    assert sorted(os.listdir(tmp_path)) == ["bunny_pope_test.jsonl", "coco"]  # no temporary file left


def test_missing_official_file_exits_2_naming_it_and_where_it_goes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prep.main(["gqa", "--data-dir", str(tmp_path / "gqa")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: missing {tmp_path / 'gqa' / 'testdev_balanced_questions.json'}: GQA's test-dev balanced questions")
    assert "questions1.2.zip" in err
    assert not (tmp_path / "gqa" / "bunny_gqa_testdev_balanced.jsonl").exists()


def test_malformed_official_file_exits_1_naming_the_entry(tmp_path, capsys):
    write(tmp_path / "test.json", '[{"image": "a.jpg", "question": "q"}, {"image": "b.jpg"}]')
    with pytest.raises(SystemExit) as exit_info:
        prep.main(["vizwiz", "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'test.json'}, question 1: no 'question'\n"
    write(tmp_path / "test.json", '[{"image": "a.jpg",')
    with pytest.raises(SystemExit):
        prep.main(["vizwiz", "--data-dir", str(tmp_path)])
    assert "test.json: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "bunny_test.jsonl").exists()


def test_default_folder_is_the_originals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_pope(tmp_path / "eval" / "pope")
    assert prep.prepare("pope") == [os.path.join("eval", "pope", "bunny_pope_test.jsonl")]
    assert len(lines(tmp_path / "eval/pope/bunny_pope_test.jsonl")) == 4
    with pytest.raises(ValueError, match=r"'seed' is not a benchmark; choose one of mme, mmbench, seedbench"):
        prep.prepare("seed")


def test_all_prepares_what_is_there_and_reports_the_rest(tmp_path, monkeypatch, capsys):
    for benchmark in ("mmmu", "cmmmu"):  # their data modules report a missing dataset folder
        def missing(data_dir: str) -> list[str]:
            raise MissingDataError(os.path.join(data_dir, "MMMU"), "the dataset", "huggingface")
        monkeypatch.setitem(sys.modules, f"bunny.eval.{benchmark}", types.SimpleNamespace(data=types.SimpleNamespace(prepare=missing)))
    make_pope(tmp_path / "pope")
    write_json(tmp_path / "viswiz" / "test.json", [{"image": "a.jpg", "question": "q"}])
    result = prep.main(["all", "--data-dir", str(tmp_path)])
    assert result["files"] == {"pope": [str(tmp_path / "pope/bunny_pope_test.jsonl")], "vizwiz": [str(tmp_path / "viswiz/bunny_test.jsonl")]}
    assert set(result["missing"]) == set(prep.PREPARERS) - {"pope", "vizwiz", "shapes"}  # shapes: ours, not in `all`
    assert str(tmp_path / "mm-vet" / "mm-vet.json") in result["missing"]["mmvet"]
    assert f"gqa: skipped, missing {tmp_path / 'gqa' / 'testdev_balanced_questions.json'}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        prep.main(["all", "--data-dir", str(tmp_path / "nothing")])
    assert exit_info.value.code == 2


def test_runs_as_a_module(tmp_path):
    make_pope(tmp_path)
    command = [sys.executable, "-m", "bunny.eval.prepare", "pope", "--data-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {tmp_path / 'bunny_pope_test.jsonl'} (4 questions)\n"
    assert len(lines(tmp_path / "bunny_pope_test.jsonl")) == 4
