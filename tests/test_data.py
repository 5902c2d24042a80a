"""The dataset through tfds, validation/train subsets, and the batch order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_idx_dir

from lenet_jax import data, idx
from lenet_jax.data import epoch_order, gather_batch, load_dataset, resolve_data_dir
from lenet_jax.errors import DataError


def test_load_dataset_serves_the_idx_files_through_tfds(idx_dir):
    dataset = load_dataset(idx_dir)
    images, labels = idx.read_pair(*idx.split_paths(idx_dir, "train"))
    np.testing.assert_array_equal(dataset.train.images, images)  # same order as the files
    np.testing.assert_array_equal(dataset.train.labels, labels)
    assert dataset.sizes() == {"train": 96, "test": 40}
    assert dataset.source.startswith("mnist_idx/idx_")
    import tensorflow_datasets as tfds

    source = tfds.data_source(dataset.source, split="test")  # an ordinary tfds dataset
    assert len(source) == 40 and int(source[0]["label"]) == int(dataset.test.labels[0])
    np.testing.assert_array_equal(load_dataset(idx_dir).test.images, dataset.test.images)  # from the cache


def test_a_different_dataset_gets_its_own_cache_entry(tmp_path):
    a = load_dataset(make_idx_dir(tmp_path / "a", seed=0))
    b = load_dataset(make_idx_dir(tmp_path / "b", seed=1))
    assert a.source != b.source and not np.array_equal(a.train.labels, b.train.labels)


def test_validation_split_is_the_last_n_training_images(idx_dir):
    full = load_dataset(idx_dir)
    split = load_dataset(idx_dir, validation_size=16, train_size=50)
    assert split.sizes() == {"train": 50, "test": 40, "validation": 16}
    np.testing.assert_array_equal(split.validation.labels, full.train.labels[-16:])
    np.testing.assert_array_equal(split.train.labels, full.train.labels[:50])
    with pytest.raises(DataError, match="validation-size"):
        load_dataset(idx_dir, validation_size=96)
    with pytest.raises(DataError, match="train-size"):
        load_dataset(idx_dir, validation_size=16, train_size=81)


def test_data_dir_falls_back_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LENET_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path.resolve() and resolve_data_dir("elsewhere").name == "elsewhere"
    monkeypatch.delenv("LENET_DATA_DIR")
    assert resolve_data_dir(None) is None


def test_epoch_and_sequential_orders_cover_every_image_once_and_pad_the_last_batch():
    order = epoch_order(jax.random.PRNGKey(0), 1, 10, 4)
    assert order.shape == (3, 4) and order.dtype == np.int32
    flat = order.ravel()
    assert sorted(flat[flat >= 0].tolist()) == list(range(10)) and (order[-1, 2:] == data.PADDING_INDEX).all()
    np.testing.assert_array_equal(data.sequential_order(5, 2), [[0, 1], [2, 3], [4, -1]])


def test_epoch_order_is_the_permutation_of_fold_in_key_epoch():
    key = jax.random.PRNGKey(7)  # numpy draws what jax.random draws: reproducible across versions
    expected = jax.random.permutation(jax.random.fold_in(key, 5), 60_000)
    np.testing.assert_array_equal(epoch_order(key, 5, 60_000, 64).ravel()[:60_000], expected)
    np.testing.assert_array_equal(epoch_order(key, 3, 100, 8), epoch_order(key, 3, 100, 8))
    assert not np.array_equal(epoch_order(key, 3, 100, 8), epoch_order(key, 4, 100, 8))
    assert not np.array_equal(epoch_order(key, 3, 100, 8), epoch_order(jax.random.PRNGKey(1), 3, 100, 8))


def test_gather_batch_scales_and_masks_padding():
    images = jnp.asarray(np.arange(3 * 28 * 28).reshape(3, 28, 28, 1) % 256, jnp.uint8)
    batch = gather_batch(images, jnp.asarray([7, 8, 9], jnp.int32), jnp.asarray([2, 0, -1]))  # labels, rows
    assert batch["image"].dtype == jnp.float32 and batch["image"].shape == (3, 28, 28, 1)
    np.testing.assert_allclose(batch["image"][0], np.asarray(images[2]) / 255.0)
    assert float(batch["image"].max()) <= 1.0
    np.testing.assert_array_equal(batch["label"][:2], [9, 7])
    np.testing.assert_array_equal(batch["mask"], [1, 1, 0])


@pytest.mark.e2e
def test_real_mnist_matches_the_published_facts(mnist_dir):
    dataset = load_dataset(mnist_dir)
    assert dataset.sizes() == {"train": 60_000, "test": 10_000}
    assert dataset.train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert dataset.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = np.bincount(dataset.train.labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    pixels = dataset.train.images.astype(np.float64) / 255.0
    assert round(pixels.mean(), 4) == 0.1307 and round(pixels.std(), 4) == 0.3081
