"""The NaN guard, --restart --force, a clean exit (other errors: test_fuzz.py; stops: test_resume.py)."""

import numpy as np
import pytest
from conftest import run_ok, run_script

from lenet_jax.checkpoints import Checkpoints
from lenet_jax.config import Config
from lenet_jax.errors import DivergedError
from lenet_jax.train import train_and_evaluate
from lenet_jax.workdir import read_config, read_metrics


def test_nan_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(idx_dir, tmp_path):
    config = Config(epochs=3, batch_size=16, activation="relu", init_scheme="flax", lr=1e4, log_every=1000)
    message = r"became (nan|inf) at step \d+ \(epoch \d\).*lower --lr \(now 10000\) or add --grad-clip"
    with pytest.raises(DivergedError, match=message):
        train_and_evaluate(config, tmp_path / "run", data_dir=idx_dir)
    for epoch in Checkpoints(tmp_path / "run").epochs():
        assert np.isfinite(read_metrics(tmp_path / "run")[epoch - 1]["train_loss"])


def test_restart_with_force_replaces_the_run(capsys, idx_dir, tmp_path):
    """(Without --force it is refused: tests/test_fuzz.py, "restart without force".)"""
    workdir = tmp_path / "run"
    train_and_evaluate(Config(epochs=2, batch_size=32, init_scheme="flax"), workdir, data_dir=idx_dir)
    argv = ["--workdir", workdir, "--data-dir", idx_dir, "--epochs", "1", "--restart", "--force"]
    run_ok(capsys, "train.py", *argv)
    assert Checkpoints(workdir).epochs() == [1] and read_config(workdir)["epochs"] == 1
    assert [r["epoch"] for r in read_metrics(workdir)] == [1]


def test_a_bad_data_dir_exits_with_one_line_and_no_traceback_at_interpreter_exit(tmp_path):
    # A subprocess on purpose: orbax's background thread used to print a traceback at exit.
    done = run_script("train.py", "--workdir", tmp_path / "run", "--data-dir", tmp_path / "nowhere")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "does not exist" in done.stderr and not (tmp_path / "run" / "checkpoints").exists()
