"""The lmms-eval model plugin (`lmms-eval --model bunny`, `bunny.eval.lmms_eval_model`).

Without lmms-eval the class is driven here as lmms-eval drives it: requests whose `args` are what
lmms-eval's tasks build, documents in `task_dict`. Its answers are checked against Bunny's own
generation, one question at a time, and its log-likelihoods against a token-by-token oracle.
Where lmms-eval is installed (it is not a dev dependency: see docs/evaluation.md, "lmms-eval"),
the name `bunny` is resolved through lmms-eval's entry-point registry and its CLI runs a tiny local
task on the tiny checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from bunny.conversation import get_conv_template
from bunny.eval import lmms_eval_model
from bunny.eval.lmms_eval_model import Bunny, batch_size_of, generation_settings
from bunny.inference.generate import answer_batch, generate_replies
from bunny.inference.prompts import chat_prompt
from bunny.util.images import process_images
from bunny.util.tokens import tokenizer_image_token
from tiny import FIXTURES

CHECKPOINT = FIXTURES / "checkpoints" / "bunny-phi-2-siglip-full"
TASK, SPLIT = "tiny_task", "test"
QUESTIONS = [  # (question, picture size or None for a text-only question)
    ("What colour is it?", (20, 12)),
    ("How many shapes are in this picture, counting the small ones near the border too?", (12, 30)),
    ("Say hello.", None),
    ("Is the square to the left of the circle? Answer yes or no.", (16, 16)),
    ("Which is larger?", (40, 8)),
    ("Describe the scene in a long and careful sentence, please.", None),
]


@dataclass
class StandIn:
    """lmms-eval's `Instance` as a model sees it: only `args` is read."""

    args: tuple


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def docs() -> list[dict]:
    return [
        {"question": question, "pictures": [] if size is None else [picture(size, seed)]}
        for seed, (question, size) in enumerate(QUESTIONS)
    ]


def doc_to_visual(doc: dict) -> list[Image.Image]:
    return doc["pictures"]


def requests(documents: list[dict], gen_kwargs: dict | list[dict]) -> list[StandIn]:
    kwargs = gen_kwargs if isinstance(gen_kwargs, list) else [gen_kwargs] * len(documents)
    return [
        StandIn((doc["question"], dict(kwargs[row]), doc_to_visual, row, TASK, SPLIT))
        for row, doc in enumerate(documents)
    ]


@pytest.fixture(scope="module")
def bunny() -> Bunny:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(FIXTURES)  # the checkpoint names its tower relative to the fixture root
        return Bunny(pretrained=str(CHECKPOINT), model_type="phi-2", device="cpu")


def with_docs(model: Bunny, documents: list[dict], batch_size: int = 1) -> Bunny:
    model.task_dict = {TASK: {SPLIT: documents}}
    model.batch_size_per_gpu = batch_size
    return model


def alone(model: Bunny, doc: dict, max_new_tokens: int) -> str:
    """Bunny's answer to one question, asked on its own (the oracle)."""
    loaded = model.loaded
    if doc["pictures"]:
        return answer_batch([doc["question"]], doc["pictures"][:1], loaded.tokenizer, loaded.model,
                            loaded.image_processor, model.conv_mode, max_new_tokens)[0].text
    prompt = chat_prompt(model.conv_mode, doc["question"], image=False)
    stop = get_conv_template(model.conv_mode).stop_str
    return generate_replies([prompt], None, loaded.tokenizer, loaded.model, stop, max_new_tokens)[0].text


# -- generate_until --------------------------------------------------------------------------------


def test_answers_are_bunnys_and_do_not_depend_on_the_batch_size(bunny):
    documents = docs()
    gen_kwargs = {"max_new_tokens": 6, "temperature": 0, "do_sample": False, "until": ["ZZZ"]}
    by_batch = {size: with_docs(bunny, documents, size).generate_until(requests(documents, gen_kwargs)) for size in (1, 4)}
    expected = [alone(bunny, doc, 6) for doc in documents]
    assert by_batch[1] == expected
    assert by_batch[4] == expected
    assert all(expected) and len(set(expected)) > 1  # the oracle is not trivially empty or constant


def test_each_request_keeps_its_own_generation_settings(bunny):
    documents = docs()
    lengths = [2, 7, 2, 7, 7, 2]
    gen_kwargs = [{"max_new_tokens": length} for length in lengths]
    answers = with_docs(bunny, documents, 3).generate_until(requests(documents, gen_kwargs))
    assert answers == [alone(bunny, doc, length) for doc, length in zip(documents, lengths)]
    assert len({len(answer) for answer in answers}) > 1


def test_until_cuts_each_answer_where_the_first_stop_string_begins(bunny):
    documents = docs()[:2]
    full = with_docs(bunny, documents).generate_until(requests(documents, {"max_new_tokens": 8}))
    assert len(full[0]) > 6
    stop = full[0][4:6]
    cut = with_docs(bunny, documents).generate_until(requests(documents, {"max_new_tokens": 8, "until": ["QQQ", stop]}))
    assert cut[0] == full[0][: full[0].index(stop)].strip()
    assert cut[1] == (full[1][: full[1].index(stop)].strip() if stop in full[1] else full[1])
    single = with_docs(bunny, documents).generate_until(requests(documents, {"max_new_tokens": 8, "until": stop}))
    assert single == cut


def test_unused_generation_keys_are_reported(bunny, caplog):
    documents = docs()[:1]
    with caplog.at_level(logging.WARNING, logger=lmms_eval_model.__name__):
        with_docs(bunny, documents).generate_until(requests(documents, {"max_new_tokens": 2, "image_aspect_ratio": "pad"}))
    assert "image_aspect_ratio" in caplog.text


def test_several_pictures_answer_about_the_first_with_a_warning(bunny, caplog):
    documents = docs()[:1]
    first = with_docs(bunny, documents).generate_until(requests(documents, {"max_new_tokens": 5}))
    documents[0]["pictures"].append(picture((9, 9), 99))
    with caplog.at_level(logging.WARNING, logger=lmms_eval_model.__name__):
        both = with_docs(bunny, documents).generate_until(requests(documents, {"max_new_tokens": 5}))
    assert both == first
    assert f"task '{TASK}', doc 0: 2 pictures" in caplog.text


def test_visuals_that_are_not_pictures_are_an_error(bunny):
    documents = [{"question": "What happens?", "pictures": ["clip.mp4"]}]
    with pytest.raises(TypeError, match=r"task 'tiny_task', doc 0: Bunny reads pictures only, but doc_to_visual gave a str"):
        with_docs(bunny, documents).generate_until(requests(documents, {"max_new_tokens": 2}))


def test_an_image_marker_in_the_text_is_replaced_by_the_picture_first(bunny):
    documents = docs()[:1]
    plain = with_docs(bunny, documents).generate_until(requests(documents, {"max_new_tokens": 5}))
    documents[0]["question"] = "<image>\n" + documents[0]["question"]
    assert with_docs(bunny, documents).generate_until(requests(documents, {"max_new_tokens": 5})) == plain


def test_generation_settings_follow_the_task():
    greedy, until = generation_settings({}, "bunny", 64)
    assert (greedy.temperature, greedy.max_new_tokens, greedy.num_beams, greedy.top_p, until) == (0.0, 64, 1, None, ())
    sampled, until = generation_settings({"temperature": 0.7, "top_p": 0.9, "until": "\n\n", "max_new_tokens": 9}, "bunny", 64)
    assert (sampled.temperature, sampled.top_p, sampled.max_new_tokens, until) == (0.7, 0.9, 9, ("\n\n",))
    assert generation_settings({"temperature": 0.7, "do_sample": False}, "bunny", 64)[0].temperature == 0.0
    assert generation_settings({"do_sample": True}, "bunny", 64)[0].temperature == 1.0
    assert generation_settings({"until": ["", "A"]}, "bunny", 64)[1] == ("A",)
    with pytest.raises(TypeError, match="'until' must be a string or a list"):
        generation_settings({"until": 3}, "bunny", 64)


def test_batch_size_must_be_a_whole_number():
    assert batch_size_of("8") == 8 and batch_size_of(1) == 1
    for bad in ("auto", "auto:4", 0, "2.5"):
        with pytest.raises(ValueError, match="whole batch size of at least 1"):
            batch_size_of(bad)


def test_multi_round_tasks_are_refused(bunny):
    request = StandIn(("Hi", {}, doc_to_visual, lambda doc: "", 0, "chat_task", SPLIT))
    with pytest.raises(NotImplementedError, match=r"multi-round tasks \['chat_task'\]"):
        bunny.generate_until_multi_round([request])


# -- loglikelihood ---------------------------------------------------------------------------------


def oracle_loglikelihood(model: Bunny, question: str, image: Image.Image | None, continuation: str) -> tuple[float, bool]:
    """Sum of log-probabilities, each continuation token predicted from its own prefix in a separate
    forward pass; greedy if every token is the prefix's argmax."""
    loaded = model.loaded
    prompt = chat_prompt(model.conv_mode, question, image=image is not None)
    context = tokenizer_image_token(prompt, loaded.tokenizer)
    tail = tokenizer_image_token(prompt + continuation, loaded.tokenizer)[len(context):]
    pixels = None if image is None else process_images([image], loaded.image_processor, loaded.model.config)
    total, greedy = 0.0, True
    for step, token in enumerate(tail):
        ids = torch.tensor([context + tail[:step]])
        with torch.inference_mode():
            logits = loaded.model(input_ids=ids, images=pixels).logits[0, -1].float()
        total += torch.log_softmax(logits, dim=-1)[token].item()
        greedy &= int(logits.argmax()) == token
    return total, greedy


def test_loglikelihood_matches_a_token_by_token_oracle(bunny):
    documents = docs()
    bunny = with_docs(bunny, documents)
    greedy = answer_batch([documents[0]["question"]], documents[0]["pictures"], bunny.loaded.tokenizer,
                          bunny.loaded.model, bunny.loaded.image_processor, bunny.conv_mode, 3)[0].token_ids
    greedy_text = bunny.loaded.tokenizer.decode(greedy[:1])  # one token: its text tokenises back to it
    assert bunny.loaded.tokenizer(greedy_text).input_ids == greedy[:1]
    asked = [(0, " yes"), (0, greedy_text), (1, " three shapes"), (2, " hello")]
    got = bunny.loglikelihood(
        [StandIn((documents[row]["question"], text, doc_to_visual, row, TASK, SPLIT)) for row, text in asked]
    )
    for (row, text), (logprob, is_greedy) in zip(asked, got):
        pictures = documents[row]["pictures"]
        image = pictures[0] if pictures else None
        expected, expected_greedy = oracle_loglikelihood(bunny, documents[row]["question"], image, text)
        assert logprob == pytest.approx(expected, abs=1e-3)
        assert is_greedy == expected_greedy
    assert [is_greedy for _, is_greedy in got] == [False, True, False, False]


def test_loglikelihood_reads_targets_from_the_document_and_scores_text_alone(bunny):
    documents = [{"question": "Name a colour.", "pictures": [], "answer": " red"}]
    bunny = with_docs(bunny, documents)
    from_doc = bunny.loglikelihood([StandIn(("Name a colour.", lambda doc: doc["answer"], doc_to_visual, 0, TASK, SPLIT))])
    text_alone = bunny.loglikelihood([StandIn(("Name a colour.", " red"))])  # acc_mutual_info's unconditional form
    assert from_doc == text_alone
    assert from_doc[0][0] == pytest.approx(oracle_loglikelihood(bunny, "Name a colour.", None, " red")[0], abs=1e-3)
    assert bunny.loglikelihood([StandIn(("Name a colour.", ""))]) == [(0.0, True)]


# -- against the real lmms-eval package, where it is installed --------------------------------------


def entry_point_dir(root: Path) -> Path:
    """A distribution that declares only the plugin's entry point, as `pip install` of bunny with the
    `lmms_eval.models` entry point declares it (so this test does not depend on how bunny was installed)."""
    dist_info = root / "bunny_lmms_eval_plugin-0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: bunny-lmms-eval-plugin\nVersion: 0\n")
    (dist_info / "entry_points.txt").write_text("[lmms_eval.models]\nbunny = bunny.eval.lmms_eval_entry:manifest\n")
    return root


def test_lmms_eval_resolves_bunny_through_its_entry_point_registry(tmp_path, monkeypatch):
    import lmms_eval  # noqa: F401 - a dev dependency: these tests run against the real package
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    monkeypatch.syspath_prepend(str(entry_point_dir(tmp_path)))
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert registry.resolve("bunny").model_type == "simple"
    assert registry.get_model_class("bunny") is Bunny  # imported and validated as lmms-eval does
    assert issubclass(Bunny, lmms)


def test_model_args_take_precedence_over_the_cli_batch_size(in_fixture_root, caplog):
    import lmms_eval  # noqa: F401 - a dev dependency: these tests run against the real package
    args = f"pretrained={CHECKPOINT},model_type=phi-2,device=cpu,batch_size=3"
    with caplog.at_level(logging.WARNING, logger=lmms_eval_model.__name__):
        model = Bunny.create_from_arg_string(args, {"batch_size": "1", "max_batch_size": None, "device": None})
    assert (model.batch_size, str(model.device), model.conv_mode) == (3, "cpu", "bunny")
    assert "batch_size=3 in --model_args is used, not --batch_size 1" in caplog.text


def write_task(root: Path, documents: list[dict]) -> Path:
    """A local lmms-eval task: a JSON-lines file of questions and picture paths, its YAML and utils."""
    task_dir = root / "tasks" / "tiny"
    task_dir.mkdir(parents=True)
    rows = []
    for row, doc in enumerate(documents):
        path = task_dir / f"{row}.png"
        doc["pictures"][0].save(path)
        rows.append({"question": doc["question"], "image": str(path), "answer": "red"})
    (task_dir / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (task_dir / "utils.py").write_text(
        "from PIL import Image\n\n"
        "def doc_to_visual(doc):\n    return [Image.open(doc['image']).convert('RGB')]\n\n"
        "def process_results(doc, results):\n    return {'exact_match': float(results[0].strip() == doc['answer'])}\n"
    )
    (task_dir / "tiny.yaml").write_text(
        f"task: bunny_tiny_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {task_dir / 'test.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_visual: !function utils.doc_to_visual\n"
        "doc_to_text: question\ndoc_to_target: answer\n"
        "generation_kwargs:\n  max_new_tokens: 6\n  temperature: 0\n  do_sample: false\n  until: ['ZZZ']\n"
        "process_results: !function utils.process_results\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 0\n"
    )
    return task_dir.parent


def test_the_lmms_eval_cli_runs_a_local_task_on_a_bunny_checkpoint(tmp_path, bunny):
    import lmms_eval  # noqa: F401 - a dev dependency: these tests run against the real package
    documents = [doc for doc in docs() if doc["pictures"]][:3]
    tasks = write_task(tmp_path, documents)
    python_path = os.pathsep.join([str(entry_point_dir(tmp_path / "plugin")), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": python_path,
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "bunny",
               "--model_args", f"pretrained={CHECKPOINT},model_type=phi-2,device=cpu", "--tasks", "bunny_tiny_task",
               "--include_path", str(tasks), "--batch_size", "2", "--output_path", str(tmp_path / "out"), "--log_samples"]
    run = subprocess.run(command, cwd=FIXTURES, env=env, capture_output=True, text=True, timeout=600, check=False)
    samples = sorted((tmp_path / "out").glob("*/*_samples_bunny_tiny_task.jsonl"))
    # lmms-eval exits 0 even when the evaluation failed: the samples file is the proof
    assert run.returncode == 0 and samples, f"lmms-eval failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    rows = sorted((json.loads(line) for line in samples[0].read_text().splitlines()), key=lambda row: row["doc_id"])
    answers = [row["filtered_resps"] for row in rows]
    answers = [answer[0] if isinstance(answer, list) else answer for answer in answers]
    assert answers == [alone(bunny, doc, 6) for doc in documents]
