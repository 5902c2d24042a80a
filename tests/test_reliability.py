"""The NaN guard and one-line errors for bad input (stops and resume: tests/test_resume.py)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_idx_dir, run_cli

from lenet_jax.checkpoints import Checkpoints
from lenet_jax.config import Config
from lenet_jax.errors import DivergedError
from lenet_jax.train import train_and_evaluate
from lenet_jax.workdir import read_config, read_metrics


def test_nan_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(idx_dir, tmp_path):
    config = Config(epochs=3, batch_size=16, activation="relu", init_scheme="flax", lr=1e4, log_every=1000)
    with pytest.raises(
        DivergedError,
        match=r"became (nan|inf) at step \d+ \(epoch \d\).*"
        r"lower --lr \(now 10000\) or add --grad-clip",
    ):
        train_and_evaluate(config, tmp_path / "run", data_dir=idx_dir)
    for epoch in Checkpoints(tmp_path / "run").epochs():
        assert np.isfinite(read_metrics(tmp_path / "run")[epoch - 1]["train_loss"])


# ---- one-line errors (bad data, flags, workdirs, checkpoints, faults): tests/test_fuzz.py ----


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """A 2-epoch run on synthetic data, trained once for this module: (workdir, data dir)."""
    folder = tmp_path_factory.mktemp("reliability")
    data = make_idx_dir(folder / "idx")
    train_and_evaluate(Config(epochs=2, batch_size=32, init_scheme="flax"), folder / "run", data_dir=data)
    return folder / "run", data


@pytest.fixture
def trained(trained_once, tmp_path):
    """A copy of the module's run, for a test to change: (workdir, data dir)."""
    workdir, data = trained_once
    return Path(shutil.copytree(workdir, tmp_path / "run", symlinks=True)), data


def retrain(capsys, trained, *flags):
    """train.py again on the `trained` workdir, with its settings unless flags override them."""
    workdir, data = trained
    return run_cli(
        capsys,
        "train.py",
        "--workdir",
        workdir,
        "--data-dir",
        data,
        "--batch-size",
        "32",
        "--init",
        "flax",
        *flags,
    )


def test_evaluate_epoch_that_does_not_exist(capsys, trained):
    workdir, data = trained
    code, err = run_cli(capsys, "evaluate.py", "--workdir", workdir, "--epoch", "5", "--data-dir", data)
    assert code == 2 and "no checkpoint for epoch 5" in err and "available epochs: 1, 2" in err


def test_evaluate_workdir_without_checkpoints(capsys, tmp_path):
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    code, err = run_cli(capsys, "evaluate.py", "--workdir", tmp_path / "empty")
    assert code == 2 and "has no checkpoints: train first" in err
    code, err = run_cli(capsys, "evaluate.py", "--workdir", tmp_path / "nowhere")
    assert code == 2 and "does not exist: pass the --workdir of a training run" in err


@pytest.mark.parametrize("damage", ["truncate", "garbage meta"])
def test_corrupt_checkpoint_is_refused_in_one_line(capsys, trained, damage):
    workdir, data = trained
    epoch_dir = workdir / "checkpoints" / "2"
    if damage == "truncate":
        for path in (epoch_dir / "params").rglob("*"):
            if path.is_file():
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    else:
        for path in (epoch_dir / "meta").rglob("*"):
            if path.is_file():
                path.write_text("{not json")
    code, err = run_cli(capsys, "evaluate.py", "--workdir", workdir, "--data-dir", data)
    assert code == 2 and err.count("\n") == 1, err
    assert "the checkpoint of epoch 2 is damaged" in err and "epoch 1 is the newest before it" in err
    assert "delete" not in err and "--epoch 1" in err
    # Training refuses to resume from it the same way, and epoch 1 still evaluates.
    code, err = retrain(capsys, trained, "--epochs", "2")
    assert code == 2 and "is damaged" in err and err.count("\n") == 1
    code, _ = run_cli(capsys, "evaluate.py", "--workdir", workdir, "--epoch", "1", "--data-dir", data)
    assert code == 0


def test_resume_with_more_epochs_is_allowed(capsys, trained):
    code, _ = retrain(capsys, trained, "--epochs", "3")
    assert code == 0 and [r["epoch"] for r in read_metrics(trained[0])] == [1, 2, 3]


def test_restart_refuses_to_delete_without_force(capsys, trained):
    workdir, data = trained
    args = ["--workdir", workdir, "--data-dir", data, "--epochs", "1", "--restart"]
    code, err = run_cli(capsys, "train.py", *args)
    assert code == 2 and "already holds checkpoints (epochs 1, 2)" in err and "--force" in err
    assert Checkpoints(workdir).epochs() == [1, 2]
    code, _ = run_cli(capsys, "train.py", *args, "--force")
    assert code == 0 and Checkpoints(workdir).epochs() == [1]
    assert read_config(workdir)["epochs"] == 1


def test_a_bad_data_dir_exits_with_one_line_and_no_traceback_at_interpreter_exit(tmp_path):
    # A subprocess on purpose: orbax's background thread used to print a traceback at exit.
    from conftest import run_script

    done = run_script("train.py", "--workdir", tmp_path / "run", "--data-dir", tmp_path / "nowhere")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "does not exist" in done.stderr and not (tmp_path / "run" / "checkpoints").exists()
