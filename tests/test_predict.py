"""Prediction on ordinary images: MNIST-style preprocessing, the predictor, scripts/predict.py."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli, script_main
from crafted_images import DRAWINGS, digit_like, sparse_ink
from PIL import Image
from scipy.ndimage import center_of_mass

from lenet_jax import cli, evaluation, figures, predict, report
from lenet_jax.commands.predict import json_row, text_line
from lenet_jax.data import load_dataset
from lenet_jax.errors import DataError
from lenet_jax.figures import confusion_matrix, per_class_scores
from lenet_jax.predict import UNSURE_BELOW, NoInkError, load_predictor, preprocess, read_image, verdict


def test_preprocess_makes_an_mnist_style_digit():
    out = preprocess(digit_like())
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8
    rows, cols = np.nonzero(out[..., 0] > 0)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert max(height, width) in (20, 21) and min(height, width) < 20  # aspect ratio kept
    np.testing.assert_allclose(center_of_mass(out[..., 0].astype(float)), 13.5, rtol=0, atol=1)


def test_preprocess_ignores_polarity_colour_position_and_size():
    reference = preprocess(digit_like()).astype(int)
    light_on_dark = preprocess(digit_like(ink=255, paper=0)).astype(int)
    colour = np.stack([digit_like(ink=30, paper=250)] * 3, -1)  # RGB, grey-ish ink
    colour[..., 2] = np.maximum(colour[..., 2], 60)
    shifted = np.full((300, 300), 255, np.uint8)
    shifted[150:270, 10:90] = digit_like()
    big = np.asarray(Image.fromarray(digit_like()).resize((240, 360), Image.Resampling.BILINEAR))
    for variant in (light_on_dark, preprocess(colour), preprocess(shifted), preprocess(big)):
        assert np.abs(variant - reference).mean() < 12  # same digit, up to resampling


@pytest.mark.parametrize("mode", DRAWINGS)
def test_every_mode_and_transparency_reads_as_the_same_drawing(mode):
    # Black ink on white paper, on transparent paper, as a palette index marked transparent, ...
    reference = preprocess(read_image(DRAWINGS["L"]())).astype(int)
    assert np.abs(preprocess(read_image(DRAWINGS[mode]())).astype(int) - reference).max() <= 1


def test_verdict_and_its_lines_mark_low_confidence_unsure_with_the_runner_up():
    probs = np.full(10, 0.11 / 8, np.float32)
    probs[7], probs[1] = 0.48, 0.41
    approx = {"probability": pytest.approx(0.48), "runner_up_probability": pytest.approx(0.41)}
    assert verdict(probs) == {"prediction": 7, "unsure": True, "runner_up": 1, **approx}
    assert text_line("a.png", probs) == "a.png: 7? (unsure: 7 0.48, 1 0.41)"
    row = json.loads(json_row("a.png", probs))
    assert row["prediction"] == 7 and row["unsure"] is True and row["runner_up"] == 1
    assert row["runner_up_probability"] == pytest.approx(0.41)
    sure = np.eye(10, dtype=np.float32)[3] * 0.9 + 0.01
    assert verdict(sure)["unsure"] is False and verdict(sure)["prediction"] == 3
    assert verdict(sure, threshold=0.95)["unsure"] is True and 0.5 < UNSURE_BELOW < 1
    assert text_line("b.png", sure) == "b.png: 3  (3: 0.910, 0: 0.010, 1: 0.010)"


def test_test_time_views_are_shifts_and_zooms_of_the_image():
    image = np.zeros((1, 28, 28, 1), np.float32)
    image[0, 8:20, 12:16] = 1.0
    views = np.asarray(predict._views(jnp.asarray(image)))[..., 0]
    assert views.shape == (1 + len(predict.TTA_SHIFTS) + len(predict.TTA_ZOOMS), 28, 28)
    np.testing.assert_array_equal(views[0], image[0, ..., 0])
    start = center_of_mass(views[0])
    for view, shift in zip(views[1:], predict.TTA_SHIFTS, strict=False):
        np.testing.assert_allclose(np.subtract(center_of_mass(view), start), shift, atol=1e-4)
    sizes = [np.count_nonzero(v > 0.5) for v in views[1 + len(predict.TTA_SHIFTS) :]]
    assert sizes[0] < np.count_nonzero(views[0] > 0.5) < sizes[1]  # zoomed out, zoomed in


@pytest.mark.parametrize(
    "convert",
    [lambda a: a.astype(np.uint16) * 257, lambda a: a.astype(np.float32) / 255],
    ids=["16-bit", "float in [0, 1]"],
)
def test_arrays_of_other_depths_preprocess_like_uint8(convert):
    assert np.array_equal(preprocess(convert(digit_like())), preprocess(digit_like()))


SPECKS = np.full((3000, 3000), 255, np.uint8)  # issue 26: predicted "5 (0.120)" before
SPECKS[100:103, 200:203] = SPECKS[2500:2504, 2800:2804] = 0
REFUSED = [  # (image, error, a part of its message)
    (np.full((50, 50), 255, np.uint8), NoInkError, "no ink"),
    (np.zeros((30, 40), np.uint8), NoInkError, "no ink"),
    (np.full((20, 20, 3), 128, np.uint8), NoInkError, "no ink"),
    (read_image(sparse_ink()), NoInkError, "too little ink"),
    (SPECKS, NoInkError, "too little ink"),
    (np.zeros((0, 5), np.uint8), DataError, "empty"),
    (np.full((9, 9), np.nan, np.float32), DataError, "NaN"),
    (np.zeros((2, 3, 4, 5), np.uint8), DataError, "expected an image of shape"),
]


@pytest.mark.parametrize("image,error,message", REFUSED)
def test_blank_sparse_and_unusable_images_are_refused_not_guessed(image, error, message):
    with pytest.raises(error, match=message):
        preprocess(image)


@pytest.mark.e2e
def test_mnist_digits_survive_png_enlarging_inverting_and_shifting(trained_run, mnist_dir, tmp_path):
    predictor = load_predictor(trained_run)
    test = load_dataset(mnist_dir).test
    images, labels = test.images[:40], test.labels[:40]
    direct = predictor.predict_mnist(images)
    confident = [i for i in range(40) if direct[i].argmax() == labels[i] and direct[i].max() > 0.9]
    assert len(confident) >= 30
    for i in confident:
        digit = images[i, ..., 0]
        Image.fromarray(digit).save(path := tmp_path / f"{i}.png")
        enlarged = np.asarray(Image.fromarray(digit).resize((200, 200), Image.Resampling.BICUBIC))
        shifted = np.zeros((90, 70), np.uint8)
        shifted[5:33, 40:68] = digit
        variants = [path, enlarged, 255 - digit, shifted]
        predictions = predictor(variants).argmax(-1)
        assert predictions.tolist() == [labels[i]] * 4, (i, predictions)


@pytest.mark.e2e
def test_predict_script_prints_predictions(trained_run, mnist_dir, tmp_path, capfd):
    test = load_dataset(mnist_dir).test
    (folder := tmp_path / "digits").mkdir()
    for i in range(5):
        Image.fromarray(255 - test.images[i, ..., 0]).resize((100, 100)).save(folder / f"{i}.png")
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(folder / "blank.png")
    code = cli.run(script_main("predict.py"), [str(folder), "--workdir", str(trained_run), "--json"])
    out, err = capfd.readouterr()
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert code == 2 and "blank.png: the image has no ink" in err
    by_name = {row["path"].rsplit("/", 1)[-1]: row for row in rows}
    assert "error" in by_name["blank.png"]
    for i in range(5):
        row = by_name[f"{i}.png"]
        assert len(row["probabilities"]) == 10 and abs(sum(row["probabilities"]) - 1) < 1e-3
        assert row["prediction"] == int(np.argmax(row["probabilities"]))
        assert isinstance(row["unsure"], bool) and row["runner_up"] != row["prediction"]
    assert sum(by_name[f"{i}.png"]["prediction"] == test.labels[i] for i in range(5)) >= 4


def test_confusion_matrix_and_per_class_scores():
    labels = np.asarray([0, 0, 1, 1, 1, 2])
    matrix = confusion_matrix(labels, np.asarray([0, 1, 1, 1, 2, 2]))  # the predictions
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[1, 1] == 2 and matrix.sum() == 6
    scores = {s["digit"]: s for s in per_class_scores(matrix)}
    assert scores[1]["precision"] == pytest.approx(2 / 3) and scores[1]["recall"] == pytest.approx(2 / 3)
    assert scores[2]["precision"] == 0.5 and scores[2]["recall"] == 1.0 and scores[2]["support"] == 1
    assert scores[5] == {"digit": 5, "precision": 0.0, "recall": 0.0, "support": 0}


def test_the_report_draws_in_a_process_without_jax():
    """The figures' process (python -m lenet_jax.figures) imports no JAX: the report's peak memory."""
    code = "import sys, lenet_jax.figures; print('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False\n"


def test_a_failed_drawing_process_writes_no_report(monkeypatch, tmp_path):
    monkeypatch.setattr(report, "_DRAW", "raise SystemExit(3)  # {root}")
    monkeypatch.setattr(report, "read_rows", lambda path, note: [])  # no run needed
    with pytest.raises(RuntimeError, match=r"drawing the report failed \(exit status 3\)"):
        report.draw_report(tmp_path, [tmp_path], 1, images=np.zeros((1, 28, 28, 1), np.uint8))
    assert os.listdir(tmp_path) == []


def test_figures_write_report_is_kept_as_0_2s_name(monkeypatch, tmp_path):
    def evaluate_checkpoint(workdir, epoch, data_dir, report, compare):  # what the old name calls
        (report / "per_class.json").write_text(json.dumps({"epoch": epoch, "workdir": workdir}))
        return {"report": ["per_class.json"], "compare": compare}

    monkeypatch.setattr(evaluation, "evaluate_checkpoint", evaluate_checkpoint)
    with pytest.warns(DeprecationWarning, match="figures.write_report is deprecated"):
        summary = figures.write_report(["run", "other"], tmp_path, 3, "data")
    assert summary == {"epoch": 3, "workdir": "run", "files": ["per_class.json"]}


@pytest.mark.e2e
def test_evaluate_report_writes_the_figures(trained_run, mnist_dir, tmp_path, capsys):
    argv = ["--workdir", trained_run, "--data-dir", mnist_dir, "--report", tmp_path / "report"]
    assert run_cli(capsys, "evaluate.py", *argv)[0] == 0
    for name in ("curves.png", "confusion.png", "mistakes.png", "per_class.png", "filters.png"):
        with Image.open(tmp_path / "report" / name) as image:
            assert image.size[0] > 300 and image.size[1] > 150
    summary = json.loads((tmp_path / "report" / "per_class.json").read_text())
    assert np.asarray(summary["confusion_matrix"]).sum() == 10_000
    assert sum(s["support"] for s in summary["per_class"]) == 10_000
    logged = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["test_accuracy"] == pytest.approx(logged["test_accuracy"], abs=1e-4)
