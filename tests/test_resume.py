"""A stopped run rerun ends bit for bit as the uninterrupted one (a new feature: a RUNS and a CASES row)."""

import functools
import re
import signal
from pathlib import Path

import chex
import pytest
from conftest import make_idx_dir, run_cli, run_ok, script_main, start_python

from lenet_jax import cli
from lenet_jax.checkpoints import Checkpoints, load_weights
from lenet_jax.workdir import read_metrics

# 40 steps an epoch, in several jitted calls at any steps per call: a stop lands inside epoch 2.
TRAIN = ["--preset", "smoke", "--train-size", "640", "--batch-size", "16", "--log-every", "5"]
RUNS = {  # kind of run -> flags over TRAIN
    "plain": [],
    "augmented": ["--augment-rotate", "10", "--elastic-alpha", "1.5"],
    "pen": ["--augment-stroke", "1", "--augment-blur", "1", "--augment-lowres", "1", "--augment-gamma", ".5"],
    "averaged": ["--ema-decay", "0.9"],
}
STOPS = {  # kind of stop -> (signal, point of tests/helpers/signal_self.py), all in epoch 2
    "sigkill": ("SIGKILL", "line:step 45:"),
    "sigterm": ("SIGTERM", "line:step 45:"),
    "sigkill-in-save": ("SIGKILL", "save:2"),  # leaves a half-written checkpoint of epoch 2
}
CASES = [("plain", "sigkill"), ("plain", "sigterm"), ("plain", "sigkill-in-save")]
CASES += [("augmented", "sigkill"), ("pen", "sigkill"), ("averaged", "sigterm")]
SIGNAL_SELF = Path(__file__).parent / "helpers" / "signal_self.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_idx_dir(tmp_path_factory.mktemp("resume-data") / "idx", n_train=640, n_test=40)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """kind of run -> the workdir of its uninterrupted run (trained in-process, once)."""

    @functools.cache
    def get(kind: str) -> Path:
        workdir = tmp_path_factory.mktemp(f"uninterrupted-{kind}") / "run"
        assert cli.run(script_main("train.py"), argv(kind, workdir, data)) == 0
        return workdir

    return get


def argv(kind: str, workdir: Path, data: Path) -> list[str]:
    return [*TRAIN, *RUNS[kind], "--workdir", str(workdir), "--data-dir", str(data)]


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith(("seconds", "per_second"))} for row in rows]


def assert_same_run(expected: Path, got: Path):
    for averaged in (False, True):  # the raw weights and (where kept) their moving average
        chex.assert_trees_all_equal(*[load_weights(run, averaged=averaged).params for run in (got, expected)])
    assert without_timings(read_metrics(got)) == without_timings(read_metrics(expected))
    assert [row["epoch"] for row in read_metrics(got)] == [1, 2]


@pytest.mark.e2e
@pytest.mark.parametrize("kind, stop", CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_resume_after_a_stop_equals_the_uninterrupted_run(kind, stop, uninterrupted, data, tmp_path, capsys):
    workdir = tmp_path / "run"
    signum, point = STOPS[stop]
    stopped = start_python(SIGNAL_SELF, signum, point, *argv(kind, workdir, data))
    _, err = stopped.communicate(timeout=300)
    if signum == "SIGKILL":
        assert stopped.returncode == -signal.SIGKILL, err
    else:  # a clean stop: one line naming where it stopped and what to do
        assert stopped.returncode == 128 + signal.SIGTERM, err
        assert re.fullmatch(
            r"stopped: SIGTERM received: stopped before step (4[1-9]|[5-7]\d|80) \(epoch 2\); rerun "
            r"the same command to resume from the checkpoint of epoch 1\n",
            err,
        ), err
    if stop == "sigkill-in-save":
        assert any(p.name.startswith("2.") for p in (workdir / "checkpoints").iterdir())
    assert Checkpoints(workdir).epochs() == [1]  # a half-written epoch 2 is not taken as complete

    out = run_ok(capsys, "train.py", *argv(kind, workdir, data))  # the same command again
    assert "Resuming from the checkpoint of epoch 1 (step 40)" in out
    assert_same_run(uninterrupted(kind), workdir)
    run_ok(capsys, "train.py", *argv(kind, workdir, data))  # a finished run rerun trains nothing, keeps all
    assert_same_run(uninterrupted(kind), workdir)


def test_resume_with_other_settings_is_refused_in_one_line(uninterrupted, data, capsys):
    workdir = uninterrupted("plain")
    before = read_metrics(workdir)
    changes = ["--epochs", "3", "--batch-size", "32", "--optimizer", "adam", "--activation", "relu"]
    code, _, err = run_cli(capsys, "train.py", *argv("plain", workdir, data), *changes)
    assert code == 2 and err.count("\n") == 1, err
    assert "batch_size: checkpoint 16, now 32" in err and "optimizer: checkpoint 'sgd'" in err
    assert "activation: checkpoint 'sigmoid', now 'relu'" in err
    assert Checkpoints(workdir).epochs() == [1, 2] and read_metrics(workdir) == before
