"""A small world of benchmark files in the official release formats, with real pictures, laid out as
the original's users lay them out under `eval/<benchmark>/`; and a tiny checkpoint that answers at
once, for running whole pipelines quickly."""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tiny import FIXTURES

MME_TASKS = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)
MME_WITH_IMAGES_FOLDER = ("artwork", "celebrity", "landmark", "posters", "scene")


def picture(path: Path, colour=(200, 40, 40), size=(24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def png_bytes(colour=(40, 200, 40), size=(16, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_json(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def make_mme(eval_dir: Path) -> None:
    release = eval_dir / "mme" / "MME_Benchmark_release_version"
    for task in MME_TASKS:
        if task in MME_WITH_IMAGES_FOLDER:
            image, txt = release / task / "images" / "1.jpg", release / task / "questions_answers_YN" / "1.txt"
        else:
            image, txt = release / task / "1.png", release / task / "1.txt"
        picture(image)
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text(f"Is this a {task} picture? Please answer yes or no.\tYes\nIs it blue? Please answer yes or no.\tNo\n")


def make_pope(eval_dir: Path) -> None:
    root = eval_dir / "pope"
    picture(root / "val2014" / "COCO_val2014_000000000001.jpg")
    for category in ("random", "popular", "adversarial"):
        write_lines(root / "coco" / f"coco_pope_{category}.json", [
            {"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a dog in the image?", "label": "no"},
            {"question_id": 2, "image": "COCO_val2014_000000000001.jpg", "text": f"Is there a {category} car?", "label": "yes"},
        ])


def make_scienceqa(eval_dir: Path) -> None:
    root = eval_dir / "scienceqa"
    picture(root / "test" / "5" / "image.png", size=(40, 12))
    problems = {
        "5": {"question": "Which colour is the bar?", "choices": ["red", "blue"], "answer": 0, "hint": "A bar.",
              "image": "image.png", "split": "test", "lecture": "", "solution": ""},
        "4": {"question": "Which is a mammal?", "choices": ["trout", "cat", "newt"], "answer": 1, "hint": "",
              "image": None, "split": "test", "lecture": "", "solution": ""},
    }
    write_json(root / "problems.json", problems)
    write_json(root / "pid_splits.json", {"test": ["4", "5"], "val": []})


def make_gqa(eval_dir: Path) -> None:
    root = eval_dir / "gqa"
    picture(root / "images" / "n1.jpg")
    question = {
        "imageId": "n1", "question": "Is the sky blue?", "answer": "no", "fullAnswer": "No, it is red.",
        "isBalanced": True, "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
        "groups": {"global": None, "local": "13-sky_blue"}, "entailed": [], "equivalent": ["q1"],
        "semantic": [{"operation": "select", "argument": "sky (1)", "dependencies": []},
                     {"operation": "verify color", "argument": "blue", "dependencies": [0]}],
        "semanticStr": "select: sky (1)->verify color: blue [0]", "annotations": {},
    }
    second = dict(question, question="What colour is the sky?", answer="red",
                  types={"structural": "query", "semantic": "attr", "detailed": "queryAttr"},
                  groups={"global": "color", "local": "10q-sky_color"})
    write_json(root / "testdev_balanced_questions.json", {"q1": question, "q2": second})


def make_vqav2(eval_dir: Path) -> None:
    root = eval_dir / "vqav2"
    picture(root / "test2015" / "COCO_test2015_000000000001.jpg")
    questions = [{"image_id": 1, "question": "What colour is it?", "question_id": 10}]
    write_json(root / "v2_OpenEnded_mscoco_test-dev2015_questions.json", {"questions": questions})
    everything = questions + [{"image_id": 1, "question": "Is it square?", "question_id": 11}]
    write_json(root / "v2_OpenEnded_mscoco_test2015_questions.json", {"questions": everything})


def make_textvqa(eval_dir: Path) -> None:
    root = eval_dir / "textvqa"
    picture(root / "train_images" / "abc.jpg")
    data = [{"image_id": "abc", "question": "What does the sign say?", "question_id": 1,
             "answers": ["stop"] * 6 + ["halt"] * 4, "ocr_tokens": ["stop", "sign"]}]
    write_json(root / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "data": data})


def make_vizwiz(eval_dir: Path) -> None:
    root = eval_dir / "viswiz"
    picture(root / "test" / "VizWiz_test_00000000.jpg")
    write_json(root / "test.json", [{"image": "VizWiz_test_00000000.jpg", "question": "What is this?"}])


def make_mmvet(eval_dir: Path) -> None:
    root = eval_dir / "mm-vet"
    picture(root / "images" / "v1_0.png")
    write_json(root / "mm-vet.json", {"v1_0": {"imagename": "v1_0.png", "question": "What is shown?",
                                              "answer": "a red card", "capability": ["rec"]}})


def make_seedbench(eval_dir: Path) -> None:
    root = eval_dir / "seed-bench"
    picture(root / "SEED-Bench-image" / "img1.jpg")
    questions = [{"question_id": "101", "question_type_id": 1, "data_type": "image", "data_id": "img1.jpg",
                  "question": "What colour?", "answer": "A", "choice_a": "red", "choice_b": "blue",
                  "choice_c": "green", "choice_d": "white"}]
    write_json(root / "SEED-Bench.json", {"question_type": {"Scene Understanding": 1}, "questions": questions})


def make_mmbench(eval_dir: Path) -> None:
    import pandas as pd

    image = base64.b64encode(png_bytes()).decode()
    rows = [{"index": 3, "question": "What colour?", "hint": "A card.", "A": "red", "B": "green", "C": None, "D": None,
             "answer": "B", "category": "colour", "l2-category": "attr", "source": "s", "comment": None, "image": image}]
    path = eval_dir / "mmbench" / "MMBench_DEV_EN_legacy.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def make_mmmu(eval_dir: Path) -> None:
    from bunny.eval.mmmu.data import SUBJECTS

    image = {"bytes": png_bytes(), "path": "x.png"}
    for (number, subject), split in itertools.product(enumerate(SUBJECTS), ("validation", "test")):
        rows = [{"id": f"{split}_{subject}_1", "question": "<image 1> Which colour?", "options": "['red', 'green']",
                 "answer": "B", "image_1": image, "question_type": "multiple-choice", "subfield": subject}]
        if number == 0:
            rows.append({"id": f"{split}_{subject}_2", "question": "<image 1> How many?", "options": "[]",
                         "answer": "2", "image_1": image, "question_type": "open", "subfield": subject})
        _parquet(eval_dir / "mmmu" / "MMMU" / subject / f"{split}-00000-of-00001.parquet", rows)


def make_cmmmu(eval_dir: Path, split: str = "val") -> None:
    from bunny.eval.cmmmu.data import CONFIGS

    categories = {"art_and_design": "艺术与设计", "business": "商业", "health_and_medicine": "健康与医学",
                  "humanities_and_social_sciences": "人文社会科学", "science": "科学", "technology_and_engineering": "技术与工程"}
    image = {"bytes": png_bytes(), "path": "x.png"}
    for number, config in enumerate(CONFIGS):
        base = {"source_type": "", "source": "", "analysis": "", "distribution": "", "difficulty_level": "easy",
                "img_type": "['photo']", "category": categories[config], "subcategory": "", "subfield": "", "image_2": None,
                "image_3": None, "image_4": None, "image_5": None, "option1": None, "option2": None,
                "option3": None, "option4": None}
        rows = [dict(base, id=number * 100 + 1, type="选择", question="<img=\"a.png\"> 什么颜色？", option1="红",
                     option2="绿", option3=None, option4=None, answer="B", image_1=image, img_list="['a.png']")]
        if number == 0:
            rows.append(dict(base, id=number * 100 + 2, type="判断", question="<img=\"a.png\"> 是绿色的。", answer="对",
                             image_1=image, img_list="['a.png']"))
            rows.append(dict(base, id=number * 100 + 3, type="填空", question="<img=\"a.png\"> 有几个？", answer="2",
                             image_1=image, img_list="['a.png']"))
        _parquet(eval_dir / "cmmmu" / "CMMMU" / config / f"{split}-00000-of-00001.parquet", rows)


MAKERS = {
    "mme": make_mme, "pope": make_pope, "scienceqa": make_scienceqa, "gqa": make_gqa, "vqav2": make_vqav2,
    "textvqa": make_textvqa, "vizwiz": make_vizwiz, "mmvet": make_mmvet, "seedbench": make_seedbench,
    "mmbench": make_mmbench, "mmmu": make_mmmu, "cmmmu": make_cmmmu,
}


def quick_checkpoint(directory: Path) -> Path:
    """The reference phi-2 checkpoint changed to end every answer at once: the final norm outputs a
    constant vector and only the end-of-text row of the head sees it. Pipelines run in seconds."""
    source = FIXTURES / "checkpoints" / "bunny-phi-2-siglip-full"
    shutil.copytree(source, directory)
    weights = load_file(source / "model.safetensors")
    eos = json.loads((source / "config.json").read_text())["eos_token_id"]
    constant = torch.linspace(0.5, 1.5, weights["model.final_layernorm.bias"].numel())
    weights["model.final_layernorm.weight"] = torch.zeros_like(weights["model.final_layernorm.weight"])
    weights["model.final_layernorm.bias"] = constant
    head = torch.zeros_like(weights["lm_head.weight"])
    head[eos] = constant / constant.dot(constant)
    weights["lm_head.weight"] = head
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def varied_checkpoint(directory: Path) -> Path:
    """The reference phi-2 checkpoint changed so that its greedy answers end after different numbers of
    tokens depending on the question (a few to a few dozen; now and then one runs to the limit),
    for tests of batching.

    The reference model says nearly the same thing whatever it is asked: its layer norms scale by
    about 0.08. With unit layer norms and the layers' weights doubled its answers follow the
    question; the end-of-text row of the head is then the row of " now" (id 730) scaled by 1.1, so an
    answer ends where " now" would come, or nearly would.
    """
    source = FIXTURES / "checkpoints" / "bunny-phi-2-siglip-full"
    shutil.copytree(source, directory)
    weights = load_file(source / "model.safetensors")
    for name, tensor in weights.items():
        if name.startswith(("model.layers.", "model.final_layernorm.")) and name.endswith(".weight"):
            weights[name] = tensor + 1.0 if "layernorm" in name else tensor * 2.0
    eos = json.loads((source / "config.json").read_text())["eos_token_id"]
    weights["lm_head.weight"][eos] = 1.1 * weights["lm_head.weight"][730]
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return directory
