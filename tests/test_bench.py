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
        ("inference.py", [], {"batch1_end_to_end_tokens_per_s", "prefill_forward_ms", "settings"}),
        ("train.py", ["--repeats", "1"], {"training", "data_pipeline"}),
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
    if script == "serve.py":
        assert [level["clients"] for level in result["levels"]] == [1, 4, 8]
        assert all(level["completion_tokens"] > 0 for level in result["levels"])
        # the worker's log was read: every level prefilled its requests in one or more groups
        assert all(sum(level["prefill_groups"]) == level["requests"] for level in result["levels"])
