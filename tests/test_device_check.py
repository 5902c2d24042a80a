"""`device-check --quick`'s cheap checks on the CPU (others: docs/device-check.md); no tensorboardX."""

import json
import subprocess

import jax
import pytest
from conftest import REPO_ROOT

from benchmarks.__main__ import main
from lenet_jax import cli, run_log


@pytest.mark.e2e
def test_quick_device_check_prints_the_checks_asked_then_a_summary(mnist_dir, tmp_path, capsys):
    argv = ["device-check", "--quick", "--data-dir", str(mnist_dir), "--out", str(tmp_path)]
    assert main([*argv, "--checks", "eval", "fast_1_epoch"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    lines = [json.loads(line) for line in printed]
    checks = {line["check"]: line for line in lines[:-1]}
    assert list(checks) == ["env", "fast_1_epoch", "eval"]  # env always, then in CHECKS' order
    assert not any("error" in line for line in lines)
    assert (tmp_path / "device-check.jsonl").read_text().splitlines() == printed
    assert "--- fast: " in (tmp_path / "runs.log").read_text()  # the runs' console, not the JSON
    assert checks["env"]["backend"] == "cpu" and checks["fast_1_epoch"]["compile_seconds"] > 0
    assert checks["eval"]["accuracy"] == checks["fast_1_epoch"]["test_accuracy"]
    summary = lines[-1]
    assert summary["summary"] == "device check" and summary["failed"] == []
    assert summary["eval_images_per_second"] > 0 and summary["resume_identical"] is None  # not run
    assert summary["speed_table_row"]["measured"].endswith("cpu (--quick: not a measurement)")
    assert not jax.config.read("jax_disable_most_optimizations")  # --quick's setting is undone


def test_an_unknown_check_is_one_line(capsys):
    assert cli.run(main, ["device-check", "--checks", "eval", "speed"]) == 2
    assert capsys.readouterr().err.startswith("error: --checks speed: no such check (the checks: env,")


def test_without_tensorboardx_a_run_logs_metrics_jsonl_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_log, "EventsWriter", None)
    row = {"epoch": 1, "step": 8, "train_loss": 1.0, "test_accuracy": 0.5, "test_total_loss": 9.0}
    with run_log.RunLog(tmp_path) as log:
        log.log_epoch(row)
    assert capsys.readouterr().out.strip() == run_log.NO_TENSORBOARD
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [row]
    assert not (tmp_path / run_log.TENSORBOARD_SUBDIR).exists()


def test_the_device_scripts_parse():
    for script in ("device_check.sh", "prepare_device_check.sh"):
        assert subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / script)]).returncode == 0
