"""`python -m bunny.eval run <benchmark>`: prepare, answer, score and report in one command, on small
official-format files and a tiny checkpoint; and the same under torchrun with two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark_files import MAKERS, quick_checkpoint
from bunny.eval import run
from bunny.eval.common import read_jsonl
from tiny import FIXTURES

MODEL = ["--model-type", "phi-2", "--device", "cpu", "--batch-size", "4"]
REPORT_FIELDS = {"benchmark", "score", "score_name", "metrics", "corrected", "counts", "missing_rows", "upload",
                 "model", "template", "generation", "inputs", "software", "timings", "command", "scorer_output"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-run")
    os.symlink(FIXTURES / "siglip-tiny", root / "siglip-tiny")
    quick_checkpoint(root / "checkpoints" / "bunny-quick")
    for benchmark in ("mme", "pope", "scienceqa", "vqav2"):
        MAKERS[benchmark](root / "eval")
    from bunny.demo import synthetic

    synthetic.generate(str(root / "eval" / "shapes"), 0, num_pretrain=0, num_finetune=0, num_eval=8, num_foreign=8)
    return root


@pytest.fixture()
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    return workdir


def run_benchmark(benchmark, *extra):
    return run.main([benchmark, "--model-path", "checkpoints/bunny-quick", *MODEL, *extra])


def scorer_result(benchmark, run_dir):
    """What the benchmark's own scorer says about the run's answers."""
    answers = str(run_dir / "answers.jsonl")
    if benchmark == "pope":
        from bunny.eval.pope import eval_pope

        return eval_pope.main(["--annotation-dir", "eval/pope/coco", "--question-file", "eval/pope/bunny_pope_test.jsonl",
                               "--result-file", answers])
    if benchmark == "scienceqa":
        from bunny.eval.scienceqa import eval_science_qa

        return eval_science_qa.main(["--base-dir", "eval/scienceqa", "--result-file", answers,
                                     "--output-file", str(run_dir / "o.json"), "--output-result", str(run_dir / "r.json")])
    if benchmark == "shapes":
        from bunny.eval import eval_shapes

        return eval_shapes.main(["--answer-key", "eval/shapes/eval/answer_key.jsonl", "--result-file", answers])
    raise AssertionError(benchmark)


@pytest.mark.parametrize("benchmark, headline", [
    ("pope", lambda result: 100 * result["average_f1"]),
    ("scienceqa", lambda result: result["image_acc"]),
    ("shapes", lambda result: 100 * result["accuracy"]),
])
def test_run_reports_the_scorers_numbers(in_workdir, benchmark, headline, capsys):
    report = run_benchmark(benchmark)
    run_dir = in_workdir / "eval" / benchmark / "runs" / "bunny-quick"
    assert json.loads((run_dir / "report.json").read_text()) == json.loads(json.dumps(report))
    assert REPORT_FIELDS <= set(report)
    result = scorer_result(benchmark, run_dir)
    assert report["score"] == pytest.approx(headline(result))
    assert report["counts"]["missing"] == 0 and report["counts"]["answered"] == report["counts"]["questions"] > 0
    assert report["model"]["type"] == "phi-2" and report["model"]["weights"]["model.safetensors"]
    assert report["template"] == "bunny" and report["generation"]["temperature"] == 0.0
    assert report["generation"]["batch_size"] == 4 and report["inputs"]["questions_hash"]
    assert set(report["software"]) >= {"torch", "transformers", "python"} and report["timings"]["total"] > 0
    out = capsys.readouterr().out
    assert f"report     {os.path.join('eval', benchmark, 'runs', 'bunny-quick', 'report.json')}" in out


def test_run_mme_scores_both_categories(in_workdir, capsys):
    from bunny.eval.mme import calculation_mme

    report = run_benchmark("mme")
    assert "=========== Perception ===========" in report["scorer_output"]
    assert report["counts"]["questions"] == 28 and "Cognition" in json.dumps(report["metrics"])
    assert report["score"] == pytest.approx(report["metrics"]["Perception"]["total"])
    upload = Path(report["run_dir"])
    assert any(upload.rglob("existence.txt"))
    again = calculation_mme.process_result(str(next(upload.rglob("existence.txt")).parent))
    assert again["Perception"]["total"] == report["score"]


def test_shapes_reports_the_blind_control_and_the_foreign_set(in_workdir):
    from bunny.eval import eval_shapes

    report = run_benchmark("shapes")
    run_dir = in_workdir / "eval/shapes/runs/bunny-quick"
    for name, key in (("blind", "answer_key.jsonl"), ("foreign", "answer_key_foreign.jsonl")):
        scored = eval_shapes.score(
            read_jsonl(str(in_workdir / "eval/shapes/eval" / key)), read_jsonl(str(run_dir / f"answers_{name}.jsonl"))
        )
        assert report["metrics"][f"{name}_accuracy"] == scored["accuracy"]
        assert report["metrics"][f"{name}_accuracy_by_type"] == scored["accuracy_by_type"]


def test_server_scored_benchmark_writes_the_upload_file_and_says_where(in_workdir, capsys):
    report = run_benchmark("vqav2")
    assert report["score"] is None and report["upload"]["to"].startswith("https://eval.ai/")
    upload = json.loads(Path(report["upload"]["file"]).read_text())
    assert [row["question_id"] for row in upload] == [10, 11]  # the whole test set, the unanswered one with ""
    assert f"upload     {report['upload']['file']} -> {report['upload']['to']}" in capsys.readouterr().out


def test_a_missing_official_file_stops_with_status_2_naming_it(in_workdir, capsys):
    with pytest.raises(SystemExit) as stop:
        run_benchmark("gqa")
    assert stop.value.code == 2
    assert "eval/gqa/testdev_balanced_questions.json" in capsys.readouterr().err
    assert not (in_workdir / "eval" / "gqa" / "runs").exists()


def test_torchrun_splits_the_questions_and_process_0_reports(in_workdir):
    single = run_benchmark("pope", "--run-name", "single")
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "-m", "bunny.eval", "run", "pope", "--model-path", "checkpoints/bunny-quick",
         *MODEL, "--run-name", "two"],
        cwd=in_workdir, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = in_workdir / "eval" / "pope" / "runs"
    parts = sorted(p.name for p in (runs / "two" / ".progress").iterdir())
    assert parts == ["part-2_0.jsonl", "part-2_1.jsonl"]  # each process answered its share
    assert all(len((runs / "two" / ".progress" / p).read_text().splitlines()) == 4 for p in parts)  # header + 3
    assert (runs / "two" / "answers.jsonl").read_bytes() == (runs / "single" / "answers.jsonl").read_bytes()
    assert json.loads((runs / "two" / "report.json").read_text())["score"] == single["score"]
    assert result.stdout.count("report     ") == 1  # only process 0 reports


def test_loading_a_model_in_process_leaves_later_models_initialised(in_workdir):
    """Generators load with Linear/LayerNorm initialisation skipped; a test run, lmms-eval or a notebook
    that builds models afterwards in the same process must get initialised ones."""
    import torch

    run_benchmark("pope", "--run-name", "init")
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64)
    assert torch.isfinite(layer.weight).all() and 0.01 < layer.weight.std() < 0.2
    assert torch.equal(torch.nn.LayerNorm(8).weight, torch.ones(8))
