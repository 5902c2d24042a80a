"""Crash safety, exact resume, signals, the NaN guard and one-line errors for bad input."""

import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, run_cli, start_python

from lenet_jax.checkpoints import Checkpoints
from lenet_jax.config import Config
from lenet_jax.errors import DivergedError
from lenet_jax.evaluation import restore_params
from lenet_jax.train import train_and_evaluate
from lenet_jax.workdir import read_config, read_metrics

# Real MNIST subset: 640 images = 10 steps per epoch, a loss line every 5 steps.
SHORT_RUN = ["--preset", "smoke", "--epochs", "3", "--train-size", "640", "--log-every", "5"]
TIMING_KEYS = ("train_seconds", "images_per_second", "eval_seconds")


def params_of(workdir, epoch=3):
    return restore_params(workdir, epoch).params


def assert_same_run(a: Path, b: Path):
    import jax

    for x, y in zip(
        jax.tree_util.tree_leaves(params_of(a)), jax.tree_util.tree_leaves(params_of(b)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    def strip(rows):
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]

    assert strip(read_metrics(a)) == strip(read_metrics(b))
    assert [row["epoch"] for row in read_metrics(b)] == [1, 2, 3]


def start_training(workdir, mnist_dir, *wrapper_args, wrapper=None):
    """scripts/train.py (or a wrapper taking wrapper_args first) on the short real-MNIST run."""
    program = REPO_ROOT / "scripts" / "train.py" if wrapper is None else wrapper
    return start_python(program, *wrapper_args, *SHORT_RUN, "--workdir", workdir, "--data-dir", mnist_dir)


def wait_for_line(process, prefix, timeout=300):
    deadline = time.time() + timeout
    for line in process.stdout:
        if line.startswith(prefix):
            return
        assert time.time() < deadline, f"no line {prefix!r} in time"
    raise AssertionError(f"process ended before printing {prefix!r}: {process.stderr.read()}")


@pytest.fixture(scope="module")
def reference_run(mnist_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run that every interrupted run must reproduce bit for bit."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    done = start_training(workdir, mnist_dir)
    assert done.wait(600) == 0, done.stderr.read()
    return workdir


@pytest.mark.e2e
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(reference_run, mnist_dir, tmp_path):
    process = start_training(tmp_path / "run", mnist_dir)
    wait_for_line(process, "step 15:")  # epoch 2 covers steps 11-20
    process.send_signal(signal.SIGKILL)
    assert process.wait(60) == -signal.SIGKILL
    assert Checkpoints(tmp_path / "run").epochs() == [1]
    resumed = start_training(tmp_path / "run", mnist_dir)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "Resuming from the checkpoint of epoch 1 (step 10)" in out
    assert_same_run(reference_run, tmp_path / "run")


@pytest.mark.e2e
def test_sigkill_during_a_checkpoint_write_leaves_a_resumable_workdir(reference_run, mnist_dir, tmp_path):
    wrapper = Path(__file__).parent / "helpers" / "kill_during_save.py"
    killed = start_training(tmp_path / "run", mnist_dir, 2, wrapper=wrapper)
    killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert any(name.startswith("2.") for name in leftovers), leftovers  # the half-written one
    assert Checkpoints(tmp_path / "run").epochs() == [1]  # ...is not taken as complete
    resumed = start_training(tmp_path / "run", mnist_dir)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert_same_run(reference_run, tmp_path / "run")


@pytest.mark.e2e
def test_sigterm_stops_cleanly_and_says_how_to_resume(reference_run, mnist_dir, tmp_path):
    process = start_training(tmp_path / "run", mnist_dir)
    wait_for_line(process, "step 15:")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    # Where it stops depends on timing (and on how many steps one call runs): the message must
    # name the step it stopped before, its epoch, and the previous epoch's checkpoint.
    last = err.strip().splitlines()[-1]
    stopped = re.fullmatch(
        r"stopped: SIGTERM received: stopped before step (\d+) \(epoch (\d+)\); rerun the same "
        r"command to resume from the checkpoint of epoch (\d+)",
        last,
    )
    assert stopped, last
    step, epoch, checkpoint = map(int, stopped.groups())
    assert epoch >= 2 and checkpoint == epoch - 1 and (epoch - 1) * 10 < step <= epoch * 10
    resumed = start_training(tmp_path / "run", mnist_dir)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert_same_run(reference_run, tmp_path / "run")


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


@pytest.fixture
def trained(idx_dir, tmp_path):
    """A 2-epoch run on synthetic data: (workdir, data dir)."""
    config = Config(epochs=2, batch_size=32, init_scheme="flax")
    train_and_evaluate(config, tmp_path / "run", data_dir=idx_dir)
    return tmp_path / "run", idx_dir


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


def test_resume_with_other_settings_lists_the_differences(capsys, trained):
    code, err = retrain(capsys, trained, "--epochs", "3", "--batch-size", "16", "--optimizer", "adam")
    assert code == 2 and err.count("\n") == 1
    assert "batch_size: checkpoint 32, now 16" in err and "optimizer: checkpoint 'sgd'" in err


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
