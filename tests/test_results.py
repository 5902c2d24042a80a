"""scripts/results.py: the summary of several finished runs."""

import json

import pytest
from conftest import run_script

from lenet_jax.workdir import read_metrics


@pytest.mark.e2e
def test_results_script_summarises_final_epochs(trained_run, tmp_path):
    done = run_script("results.py", trained_run, trained_run)
    assert done.returncode == 0, done.stderr
    *runs, summary = [json.loads(line) for line in done.stdout.splitlines()]
    final = read_metrics(trained_run)[-1]
    assert [r["test_error_percent"] for r in runs] == [round(100 * (1 - final["test_accuracy"]), 2)] * 2
    assert summary["runs"] == 2 and summary["test_error_percent_std"] == 0
    empty = run_script("results.py", tmp_path)
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1
    assert "has no metrics.jsonl rows" in empty.stderr
