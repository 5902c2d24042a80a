"""The benchmark's subcommands run through lenet-jax's public loop API and report JSON lines."""

import json

import pytest

from benchmarks.__main__ import main


@pytest.mark.e2e
def test_time_to_99_evaluates_where_the_calls_end_and_reports(mnist_dir, capsys):
    # The smoke preset never reaches 99%: the run goes to its last epoch and says so.
    argv = ["time-to-99", "--data-dir", str(mnist_dir), "--preset", "smoke", "--seeds", "0"]
    assert main([*argv, "--evals-per-epoch", "2", "--no-torch"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    evals = [line for line in lines if "test_accuracy" in line]
    assert [e["epoch"] for e in evals] == [0.5, 1.0, 1.5, 2.0]  # 32 steps an epoch, 16 a call
    assert all(a["train_seconds"] < b["train_seconds"] for a, b in zip(evals, evals[1:], strict=False))
    summary = lines[-1]
    assert summary["summary"] == "time to 99%" and summary["epochs_reached"] == [None]
    assert summary["pytorch"].startswith("not run") and summary["compilation_cache"] == "cold"
    assert {"cpu", "avx512", "avx2", "fma"} <= set(summary) and summary["mean_first_call_seconds"] > 0
    # Tracing, lowering and compiling (or reading from the cache) happen within the first call.
    stages = summary["mean_first_call_compilation_seconds"]
    assert set(stages) == {"trace", "lower", "compile"} and stages["compile"] > 0
    assert sum(stages.values()) < summary["mean_first_call_seconds"]
    # The race's make-up: the running speed after the first call, and what the start cost.
    (result,) = [line["result"] for line in lines if "result" in line]
    assert result["ms_per_step"] > 0 and summary["median_ms_per_step"] == {"lenet-jax": result["ms_per_step"]}
    start = result["first_call_seconds"] - result["steps_per_call"] * result["ms_per_step"] / 1000
    assert summary["mean_start_seconds"] == pytest.approx(start, abs=1e-3)
    assert 0 < summary["mean_start_seconds"] < summary["mean_first_call_seconds"]


def test_bad_arguments_are_one_line(capsys):
    from lenet_jax import cli

    assert cli.run(main, ["time-to-99", "--set", "lr=-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --set lr=-1: --lr must be greater than 0, not -1.0"
    assert cli.run(main, ["sped"]) == 2 and "invalid choice: 'sped'" in capsys.readouterr().err
