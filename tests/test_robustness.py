"""The robustness benchmark's mechanics, on a few real MNIST digits."""

import numpy as np
import pytest

from benchmarks.__main__ import parse
from benchmarks.robustness import MNIST_TRANSFORMS, MOUSE_WIDTHS, robustness_set, score
from lenet_jax.idx import read_pair, split_paths
from lenet_jax.predict import Predictor, preprocess


@pytest.fixture(scope="module")
def test_digits(mnist_dir):
    return read_pair(*split_paths(mnist_dir, "test"))  # the IDX files as they are: no tfds


@pytest.fixture(scope="module")
def small_set(test_digits):
    return robustness_set(*test_digits, 20)


def ink(images):
    return np.mean([preprocess(image).astype(float).sum() for image in images])


def test_every_transform_makes_predictable_images_the_same_every_time(test_digits, small_set):
    assert set(small_set) == set(MNIST_TRANSFORMS) | set(MOUSE_WIDTHS)
    for name, (images, labels) in small_set.items():
        assert len(images) == len(labels) == 20, name
        assert all(preprocess(image).shape == (28, 28, 1) for image in images), name
    assert ink(small_set["thick"][0]) > 1.3 * ink(small_set["mnist"][0]) > 1.3 * ink(small_set["thin"][0])
    assert ink(small_set["mouse_thick"][0]) > 1.3 * ink(small_set["mouse_thin"][0])
    # Dark ink on light paper: preprocess inverts it.
    assert np.median(small_set["dark_on_light"][0][0]) > 200 and np.median(small_set["mnist"][0][0]) == 0
    again = robustness_set(*test_digits, 20)
    for name in small_set:
        np.testing.assert_array_equal(again[name][0][3], small_set[name][0][3])


def test_score_counts_accuracy_refusals_and_unsure_answers(small_set):
    images, labels = small_set["blur"]
    images = [*images[:19], np.zeros((28, 28), np.uint8)]  # a blank page: refused, counted wrong
    sure = np.eye(10)[labels[:10]] * 0.9 + 0.01  # the first 10 right and sure, the next 9 unsure

    class Stub(Predictor):  # the real preprocessing, probabilities made up: no model, no compile
        def predict_mnist(self, prepared):
            assert prepared.shape == (19, 28, 28, 1) and prepared.dtype == np.uint8
            return np.concatenate([sure, np.full((9, 10), 0.1)])

    row = score(Stub(model=None, params=None, tta=False), images, labels)
    unsure_right = int(np.sum(labels[10:19] == 0))  # a tie is read as digit 0
    assert row == {"accuracy": (10 + unsure_right) / 20, "unsure_rate": 9 / 20, "refused": 1, "images": 20}
    assert parse(["robustness", "--workdir", "W", "--count", "5"]).count == 5
