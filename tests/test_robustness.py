"""The robustness benchmark's mechanics, on a few real MNIST digits and an untrained model."""

import jax
import numpy as np
import pytest

from benchmarks.__main__ import parse
from benchmarks.robustness import MNIST_TRANSFORMS, MOUSE_WIDTHS, robustness_set, score
from lenet_jax.config import get_preset
from lenet_jax.idx import read_pair, split_paths
from lenet_jax.model import init_params, model_from_config
from lenet_jax.predict import Predictor, preprocess


@pytest.fixture(scope="module")
def test_digits(mnist_dir):
    return read_pair(*split_paths(mnist_dir, "test"))  # the IDX files as they are: no tfds


@pytest.fixture(scope="module")
def small_set(test_digits):
    return robustness_set(*test_digits, 20)


def ink(images):
    return np.mean([preprocess(image).astype(float).sum() for image in images])


def test_every_transform_makes_predictable_images(small_set):
    assert set(small_set) == set(MNIST_TRANSFORMS) | set(MOUSE_WIDTHS)
    for name, (images, labels) in small_set.items():
        assert len(images) == len(labels) == 20, name
        assert all(preprocess(image).shape == (28, 28, 1) for image in images), name
    assert ink(small_set["thick"][0]) > 1.3 * ink(small_set["mnist"][0]) > 1.3 * ink(small_set["thin"][0])
    assert ink(small_set["mouse_thick"][0]) > 1.3 * ink(small_set["mouse_thin"][0])
    # Dark ink on light paper: preprocess inverts it.
    assert np.median(small_set["dark_on_light"][0][0]) > 200 and np.median(small_set["mnist"][0][0]) == 0


def test_the_set_is_the_same_every_time(test_digits, small_set):
    again = robustness_set(*test_digits, 20)
    for name in small_set:
        np.testing.assert_array_equal(again[name][0][3], small_set[name][0][3])


def test_score_counts_accuracy_and_unsure_answers(small_set):
    config = get_preset("handwriting")
    model = model_from_config(config)
    predictor = Predictor(model, init_params(model, jax.random.PRNGKey(0)), tta=False)  # compiles faster
    row = score(predictor, *small_set["blur"])
    assert row["images"] == 20 and 0 <= row["accuracy"] <= 1 and row["refused"] == 0
    assert row["unsure_rate"] == 1.0  # an untrained model is unsure of everything
    assert parse(["robustness", "--workdir", "W", "--count", "5"]).count == 5
