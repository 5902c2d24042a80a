"""Workdirs written by earlier versions keep working: evaluate, predict and resume."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from lenet_jax.checkpoints import FORMAT_VERSION, Checkpoints, load_weights
from lenet_jax.config import get_preset
from lenet_jax.errors import CheckpointError
from lenet_jax.evaluation import evaluate_checkpoint
from lenet_jax.predict import load_predictor
from lenet_jax.train import train_and_evaluate

FIXTURE = Path(__file__).parent / "fixtures" / "workdir_v0_1"


@pytest.fixture
def old_workdir(tmp_path):
    return Path(shutil.copytree(FIXTURE, tmp_path / "run"))


@pytest.mark.e2e
def test_a_0_1_workdir_evaluates_to_what_it_logged_predicts_and_resumes(old_workdir, mnist_dir):
    result = evaluate_checkpoint(old_workdir, data_dir=mnist_dir)
    assert result["averaged_weights"] and result["test_accuracy"] == 0.1135
    assert result["test_total_loss"] == pytest.approx(381.8274738788605, rel=1e-6)
    probabilities = load_predictor(old_workdir).predict_mnist(np.zeros((2, 28, 28, 1), np.uint8))
    assert np.shape(probabilities) == (2, 10)

    config = get_preset("smoke").replace(train_size=256, epochs=2, ema_decay=0.9, optimizer="momentum")
    resumed = train_and_evaluate(config, old_workdir, data_dir=mnist_dir)
    assert [row["epoch"] for row in resumed.metrics] == [1, 2]
    with Checkpoints(old_workdir, read_only=True) as checkpoints:
        assert checkpoints.restore_meta(2)["format_version"] == FORMAT_VERSION
        assert checkpoints.restore_meta(1)["optimizer_source"] == {"kind": "config"}  # upgraded


def test_a_meta_from_a_newer_version_is_refused_in_one_line(old_workdir):
    meta = old_workdir / "checkpoints" / "1" / "meta" / "metadata"
    meta.write_text(meta.read_text().replace('{"epoch"', '{"format_version": 99, "epoch"', 1))
    with pytest.raises(CheckpointError, match="has format version 99, newer than this lenet-jax reads"):
        load_weights(old_workdir)
