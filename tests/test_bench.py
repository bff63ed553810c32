"""The benchmark scripts run (on their tiny `--quick` workloads) and print one JSON object on stdout,
nothing else, so that their output can be piped into a JSON tool. No timing is asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize(
    "script, extra, keys",
    [
        ("inference.py", [], {"batch1_end_to_end_tokens_per_s", "prefill_forward_ms", "settings", "bare_llm", "efficiency", "machine"}),
        ("train.py", ["--repeats", "1"], {"training", "data_pipeline"}),
        ("train.py", ["--repeats", "1", "--dtype", "bfloat16", "--skip-data"], {"training"}),
        ("serve.py", ["--rounds", "1", "--max-tokens", "6", "--max-tokens-spread", "3"], {"levels", "speedup_8_over_1"}),
    ],
)
def test_a_benchmark_prints_only_its_json_result(script, extra, keys):
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *extra], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # the whole of stdout
    assert keys <= set(result)
    if script == "train.py":
        assert {"model_flops_per_step", "efficiency", "machine"} <= set(result["training"])
        assert result["training"]["machine"]["matmul"]["float32"]["peak_gflops"] > 0
        # bfloat16 trains as --bf16 does on a CPU, and times the autocast default beside it
        assert ("float32_weights_under_autocast" in result["training"]) == ("bfloat16" in extra)
    if script == "serve.py":
        assert [level["clients"] for level in result["levels"]] == [1, 4, 8]
        assert all(level["completion_tokens"] > 0 for level in result["levels"])
        # the worker's log was read: every level prefilled its requests in one or more groups
        assert all(sum(level["prefill_groups"]) == level["requests"] for level in result["levels"])


@pytest.mark.parametrize("script", ["train.py", "inference.py"])
def test_a_device_torch_cannot_use_is_refused_by_name(script):
    import torch

    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--device", "cuda" if not torch.cuda.is_available() else "mps"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 2 and "--device" in done.stderr and not done.stdout


def test_a_datasheet_peak_that_is_not_positive_is_refused():
    done = subprocess.run(
        [sys.executable, str(BENCH / "train.py"), "--quick", "--spec-peak-tflops", "0"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 2 and "--spec-peak-tflops must be positive" in done.stderr and not done.stdout


@pytest.mark.parametrize("batch, ids", [(4, 40), (2, 23)])
def test_the_training_flop_formula_counts_what_torch_counts(batch, ids, tmp_path, monkeypatch):
    """bench/train.py's model-FLOP formula against torch's FlopCounterMode on a real forward +
    backward of the quick workload."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.syspath_prepend(str(BENCH))
    from inference import WORKLOADS, build_model, save_random_siglip_tower
    from train import make_batch, training_step_flops

    workload = WORKLOADS["quick"]
    save_random_siglip_tower(workload, tmp_path / "tower")
    model = build_model(workload, torch.float32, tmp_path / "tower", attn_implementation="sdpa")
    model.train()
    model.get_vision_tower().requires_grad_(False)
    inputs = make_batch(batch, ids, 8, workload.vocab_size, workload.image_size, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(**inputs).loss.backward()
    formula = training_step_flops(workload, batch, ids)
    assert formula["total"] == sum(v for k, v in formula.items() if k != "total")
    # FlopCounterMode counts the attention kernel's backward as 2.5x its forward (it recomputes the
    # scores); model FLOPs count the usual 2x.
    recomputed = formula["attention"] // 3 // 2
    assert counter.get_total_flops() == pytest.approx(formula["total"] + recomputed, rel=1e-4)
