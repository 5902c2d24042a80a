"""`python -m benchmarks device-check --quick`: every check of the GPU command, tiny, on the CPU;
and lenet-jax on a machine like the GPU image, which has neither tfds nor tensorboardX."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import main
from benchmarks.device_check import CHECKS
from lenet_jax import data, run_log


@pytest.mark.e2e
def test_quick_device_check_prints_every_check_then_a_speed_table_row(mnist_dir, tmp_path, capsys):
    assert main(["device-check", "--quick", "--data-dir", str(mnist_dir), "--out", str(tmp_path)]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    lines = [json.loads(line) for line in printed]
    checks = {line["check"]: line for line in lines[:-1]}
    assert list(checks) == list(CHECKS) and not any("error" in line for line in lines)
    assert (tmp_path / "device-check.jsonl").read_text().splitlines() == printed
    assert checks["env"]["backend"] == "cpu" and checks["fast_1_epoch"]["compile_seconds"] > 0
    assert {"cold", "warm"} <= set(checks["time_to_99"])
    # 512 training images: 8 steps an epoch, so the sweep's 1, 16, 64, 256 and epoch are 1 and 8.
    sweep = checks["steps_per_call"]["ms_per_step"]
    assert set(sweep["toeplitz"]["fast"]) == {"1", "8"}
    assert all(ms > 0 for ms in sweep["plain"].values())  # --speed plain, from lenet-jax 0.3 on
    # The CPU computes the same bits in every process, the GPU flag changing nothing.
    assert checks["determinism"]["same_bits_twice"] == {"default": True, "deterministic_ops": True}
    assert checks["determinism"]["same_bits_across_modes"] and checks["resume"]["identical"]
    assert checks["eval"]["accuracy"] == checks["fast_1_epoch"]["test_accuracy"]
    assert len(checks["recipe_3_epochs"]["test_accuracy"]) == 3
    summary = lines[-1]
    assert summary["summary"] == "device check" and summary["failed"] == []
    row = summary["speed_table_row"]
    assert row["conv"] in ("xla", "toeplitz") and row["steps_per_call"] in (1, 8)
    assert row["measured"].endswith("cpu (--quick: not a measurement)")


def test_a_data_dir_is_read_without_tfds_as_through_it(idx_dir, monkeypatch):
    through_tfds = data.load_dataset(idx_dir)
    monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", None)  # as if not installed
    direct = data.load_dataset(idx_dir)
    assert direct.source == through_tfds.source
    np.testing.assert_array_equal(direct.train.images, through_tfds.train.images)
    np.testing.assert_array_equal(direct.test.labels, through_tfds.test.labels)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(data.DataError, match="needs tensorflow-datasets.*--data-dir"):
        data.load_dataset(None)


def test_without_tensorboardx_a_run_logs_metrics_jsonl_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_log, "EventsWriter", None)
    row = {"epoch": 1, "step": 8, "train_loss": 1.0, "test_accuracy": 0.5, "test_total_loss": 9.0}
    with run_log.RunLog(tmp_path) as log:
        log.log_epoch(row)
    assert capsys.readouterr().out.strip() == run_log.NO_TENSORBOARD
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [row]
    assert not (tmp_path / run_log.TENSORBOARD_SUBDIR).exists()


def test_the_device_scripts_parse():
    root = Path(__file__).resolve().parent.parent
    for script in ("device_check.sh", "prepare_device_check.sh"):
        assert subprocess.run(["bash", "-n", str(root / "scripts" / script)]).returncode == 0
