"""The benchmark's subcommands run through lenet-jax's public loop API and report JSON lines."""

import json

import jax
import pytest

from benchmarks import device_check
from benchmarks.__main__ import main


@pytest.fixture
def quick_compiles():
    """XLA's optimizations off: compiles ~2x faster; these tests check what is reported, not speed."""
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


@pytest.mark.e2e
def test_time_to_99_evaluates_where_the_calls_end_and_reports(mnist_dir, capsys, quick_compiles):
    # The smoke preset never reaches 99%: the run goes to its last epoch and says so.
    argv = ["time-to-99", "--data-dir", str(mnist_dir), "--preset", "smoke", "--set", "epochs=1"]
    assert main([*argv, "--seeds", "0", "--evals-per-epoch", "2", "--no-torch", "--list-programs"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    # --list-programs: each program once, traced and lowered before compiled; training's in the first call.
    programs = [line for line in lines if "program" in line]
    assert len({p["program"] for p in programs}) == len(programs)
    compiled = [p for p in programs if p["compile"] > 0]
    assert all(p["trace"] > 0 and p["lower"] > 0 for p in compiled)
    assert {p["before_first_call"] for p in compiled} == {True, False}
    evals = [line for line in lines if "test_accuracy" in line]
    assert [e["epoch"] for e in evals] == [0.5, 1.0]  # 32 steps an epoch, 16 a call
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
    kept = device_check.seeds_and_summary(lines)  # what device-check's time_to_99 check keeps of these lines
    assert kept["time_to_99_seconds"] is None and kept["per_seed_seconds"] == [None]
    assert kept["mean_first_call_compilation_seconds"] == stages and kept["epochs_reached"] == [None]


def test_bad_arguments_are_one_line(capsys):
    from lenet_jax import cli

    assert cli.run(main, ["time-to-99", "--set", "lr=-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --set lr=-1: lr must be greater than 0, not -1.0"
    assert cli.run(main, ["sped"]) == 2 and "invalid choice: 'sped'" in capsys.readouterr().err


def test_summary_splits_the_race_into_start_and_running_speed():
    import argparse

    from benchmarks.__main__ import time_to_99_summary

    args = argparse.Namespace(preset="fast", set=[], seeds=[0, 1], evals_per_epoch=8, warm_cache=False)
    jax_row = {"reached": True, "epoch": 0.75, "train_seconds": 4.0, "steps_per_call": 16}
    jax_row["first_call_compilation_seconds"] = {"trace": 0.2, "lower": 0.1, "compile": 1.5}
    jax_rows = [
        {**jax_row, "first_call_seconds": 2.05, "ms_per_step": 3.0},
        {**jax_row, "first_call_seconds": 2.25, "ms_per_step": 3.5},
    ]
    twin = [{"reached": True, "epoch": 0.75, "train_seconds": 5.0, "ms_per_step": 5.0}] * 2
    summary = time_to_99_summary(args, {"lenet-jax": jax_rows, "pytorch-twin-2t": twin}, torch_ok=True)
    # The start: each first call less its 16 steps at that seed's speed, averaged.
    assert summary["mean_start_seconds"] == round(((2.05 - 0.048) + (2.25 - 0.056)) / 2, 3)
    assert summary["median_ms_per_step"] == {"lenet-jax": 3.25, "pytorch-twin-2t": 5.0}
    assert summary["ratio_ms_per_step"] == 0.65 and summary["ratio_jax_to_pytorch"] == 0.8
    # A seed without a running speed (it ended inside the first call): no figure, not one over fewer seeds.
    jax_rows[1]["ms_per_step"] = None
    summary = time_to_99_summary(args, {"lenet-jax": jax_rows, "pytorch-twin-2t": twin}, torch_ok=True)
    assert summary["mean_start_seconds"] is None and summary["median_ms_per_step"]["lenet-jax"] is None
    assert "ratio_ms_per_step" not in summary
