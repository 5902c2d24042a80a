"""Earlier versions' workdirs evaluate, predict, resume (a newer one's: test_fuzz.py, "meta from a newer")."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from lenet_jax.checkpoints import FORMAT_VERSION, Checkpoints
from lenet_jax.config import get_preset
from lenet_jax.evaluation import evaluate_checkpoint
from lenet_jax.predict import load_predictor
from lenet_jax.train import train_and_evaluate

FIXTURES = Path(__file__).parent / "fixtures"
WRITTEN = {  # version -> (what its epoch 1 logged: accuracy, total loss; the preset and changes resuming it)
    "0_1": (0.1135, 381.8274738788605, "smoke", dict(ema_decay=0.9, optimizer="momentum")),
    "0_2": (0.2991, 319.28083872795105, "fast", dict(schedule="constant", lr=0.05, speed="plain")),
}


@pytest.mark.e2e
@pytest.mark.parametrize("version", WRITTEN)
def test_an_old_workdir_evaluates_predicts_and_resumes(version, tmp_path, mnist_dir, capsys):
    old_workdir = Path(shutil.copytree(FIXTURES / f"workdir_v{version}", tmp_path / "run"))
    accuracy, total_loss, preset, changes = WRITTEN[version]
    result = evaluate_checkpoint(old_workdir, data_dir=mnist_dir)
    assert result["averaged_weights"] and result["test_accuracy"] == accuracy
    assert result["test_total_loss"] == pytest.approx(total_loss, rel=1e-6)
    assert np.shape(load_predictor(old_workdir).predict_mnist(np.zeros((2, 28, 28, 1), np.uint8))) == (2, 10)

    config = get_preset(preset).replace(train_size=256, epochs=2, **changes)
    resumed = train_and_evaluate(config, old_workdir, data_dir=mnist_dir)
    other_speed = "Note: the checkpoint trained with --speed auto, this run with plain: the same function"
    assert (other_speed in capsys.readouterr().out) == (config.speed == "plain")
    assert [row["epoch"] for row in resumed.metrics] == [1, 2]
    with Checkpoints(old_workdir, read_only=True) as checkpoints:
        assert checkpoints.restore_meta(2)["format_version"] == FORMAT_VERSION
        assert checkpoints.restore_meta(1)["optimizer_source"] == {"kind": "config"}  # upgraded
