"""The scripts on real MNIST, one process against 2 (jax.distributed + gloo), and launch.py."""

import json
import signal
import struct
import time
import types
from pathlib import Path

import chex
import jax
import numpy as np
import psutil
import pytest
from conftest import REPO_ROOT, make_idx_dir, run_cli, start_python

from lenet_jax import parallel, run_log
from lenet_jax.errors import ConfigError
from lenet_jax.evaluation import restore_params
from lenet_jax.workdir import read_metrics

RUN = ["--preset", "smoke", "--train-size", "1920", "--epochs", "2", "--log-every", "10"]  # 60 steps


def test_single_device_mesh_is_a_no_op():
    mesh = parallel.data_mesh()
    assert mesh.devices.size == jax.device_count() == 1
    indices = np.arange(8, dtype=np.int32)
    assert parallel.global_batch(indices, mesh) is indices
    parallel.check_batch_size(64, mesh)


def test_batch_size_must_divide_over_the_devices():
    mesh = types.SimpleNamespace(devices=types.SimpleNamespace(size=3))  # what is read of a Mesh
    with pytest.raises(ConfigError, match="--batch-size 64 does not divide over 3 devices"):
        parallel.check_batch_size(64, mesh)


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the TensorBoard event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def launch(workdir, data_dir, *extra):
    argv = [*RUN, "--workdir", workdir, "--data-dir", data_dir, *extra]
    return start_python(REPO_ROOT / "scripts" / "launch.py", "--num-processes", "2", "--", *argv)


@pytest.mark.e2e
def test_scripts_on_real_mnist_and_two_processes_match_one(mnist_dir, tmp_path, monkeypatch, capsys):
    """train.py here (a relative workdir), then launch.py's 2 processes: same output, weights, accuracies."""
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "train.py", *RUN, "--workdir", "one", "--data-dir", mnist_dir)
    assert code == 0 and "train 1,920 images, test 10,000 images" in out and "step 10: train loss" in out
    rows_one = read_metrics(tmp_path / "one")
    assert {"test_accuracy", "test_total_loss", "train_loss", "train_seconds"} <= set(rows_one[0])
    assert {"images_per_second", "learning_rate"} <= set(rows_one[0])
    scalars = read_scalars(tmp_path / "one" / "tensorboard")
    assert [s for s, _ in scalars[run_log.TAG_TRAIN_LOSS]] == [10, 20, 30, 40, 50, 60]
    assert [s for s, _ in scalars[run_log.TAG_ACCURACY]] == [1, 2]
    assert len(scalars[run_log.TAG_TEST_TOTAL_LOSS]) == 2

    two = launch(tmp_path / "two", mnist_dir)
    out, err = two.communicate(timeout=600)
    assert two.returncode == 0, err
    assert "[0] LeNet: 61,706 parameters; 2 cpu device(s), 2 process(es)" in out
    # Only process 0 prints (gloo's own C++ connection line aside).
    assert not [line for line in out.splitlines() if line.startswith("[1]") and "[Gloo]" not in line]
    params_two, params_one = (restore_params(tmp_path / run, 2).params for run in ("two", "one"))
    chex.assert_trees_all_close(params_two, params_one, atol=1e-4, rtol=0)
    rows_two = read_metrics(tmp_path / "two")
    assert [r["step"] for r in rows_two] == [30, 60]
    for a, b in zip(rows_two, rows_one, strict=True):
        assert round(a["test_accuracy"], 3) == round(b["test_accuracy"], 3)

    # evaluate.py on an --epoch and on the newest; the 2-process checkpoint restores in one process.
    for run, row in [("one", rows_one[0]), ("two", rows_two[1])]:
        argv = ["--workdir", run, "--epoch", row["epoch"], "--data-dir", mnist_dir]
        code, out, _ = run_cli(capsys, "evaluate.py", *argv)
        result = json.loads(out.splitlines()[-1])
        assert code == 0 and result["epoch"] == row["epoch"] and result["count"] == 10_000
        assert result["test_accuracy"] == row["test_accuracy"]
        if run == "one":
            assert result["test_total_loss"] == row["test_total_loss"]


def processes_of(workdir):
    return [p for p in psutil.process_iter(["cmdline"]) if str(workdir) in " ".join(p.info["cmdline"] or [])]


def test_launch_stops_everything_when_one_process_dies(tmp_path):
    workdir = tmp_path / "run"  # synthetic data: what is checked is the launcher, not the training
    launcher = launch(workdir, make_idx_dir(tmp_path / "idx", n_train=1920), "--epochs", "50")
    deadline = time.time() + 300
    for line in launcher.stdout:
        if line.startswith("[0] step 10:"):
            break
        assert time.time() < deadline
    ours = processes_of(workdir)
    victims = [p for p in ours if "--process-id" in p.info["cmdline"] and p.info["cmdline"][-1] == "1"]
    assert len(victims) == 1
    killed_at = time.time()
    victims[0].send_signal(signal.SIGKILL)
    _, err = launcher.communicate(timeout=60)
    assert time.time() - killed_at < 60 and launcher.returncode != 0
    assert "error: process 1 was killed by SIGKILL; stopped the other processes" in err
    assert not processes_of(workdir)
