"""IDX reading: every malformed input gets a DataError naming the problem."""

import gzip

import numpy as np
import pytest
from conftest import make_idx_dir, write_idx

from lenet_jax import idx
from lenet_jax.errors import DataError


@pytest.mark.parametrize("compress", [True, False])
def test_reads_gzipped_and_plain_files(tmp_path, compress):
    folder = make_idx_dir(tmp_path, n_train=12, n_test=5, compress=compress)
    images, labels = idx.read_pair(*idx.split_paths(folder, "train"))
    assert images.shape == (12, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (12,) and labels.dtype == np.int32
    assert len(idx.read_pair(*idx.split_paths(folder, "test"))[1]) == 5


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data-dir"):
        idx.check_and_fingerprint(tmp_path / "nowhere")


def test_missing_file(tmp_path):
    folder = make_idx_dir(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte"):
        idx.split_paths(folder, "test")


def test_wrong_magic_number(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((3, 28, 28), np.uint8), 0x801)
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        idx.read_images(path)


def test_truncated_images(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((3, 28, 28), np.uint8), 0x803, compress=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated.*promises 3 images but it holds 2"):
        idx.read_images(path)


def test_truncated_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((30, 28, 28), np.uint8), 0x803)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="damaged"):
        idx.read_images(path)


def test_header_only_fragment(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        idx.read_labels(path)


def test_images_not_28x28(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((3, 32, 32), np.uint8), 0x803)
    with pytest.raises(DataError, match="32x32 images, expected 28x28"):
        idx.read_images(path)


def test_labels_outside_0_to_9(tmp_path):
    path = write_idx(tmp_path / "x", np.asarray([1, 2, 12], np.uint8), 0x801)
    with pytest.raises(DataError, match="label 12 at index 2"):
        idx.read_labels(path)


def test_counts_disagree(tmp_path):
    folder = make_idx_dir(tmp_path, n_train=10)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(9, np.uint8), 0x801)
    with pytest.raises(DataError, match="10 images but .* 9 labels"):
        idx.read_pair(*idx.split_paths(folder, "train"))


def test_fingerprint_depends_on_content(tmp_path):
    a = make_idx_dir(tmp_path / "a", seed=0)
    b = make_idx_dir(tmp_path / "b", seed=1)
    assert idx.check_and_fingerprint(a) != idx.check_and_fingerprint(b)
    assert idx.check_and_fingerprint(a) == idx.check_and_fingerprint(make_idx_dir(tmp_path / "c", seed=0))
    plain = make_idx_dir(tmp_path / "d", seed=0, compress=False)
    assert idx.check_and_fingerprint(a) == idx.check_and_fingerprint(plain)


def test_gzip_roundtrip_helper_is_valid_gzip(tmp_path):
    path = write_idx(tmp_path / "x", np.arange(5, dtype=np.uint8), 0x801)
    assert gzip.decompress(path.read_bytes())[8:] == bytes(range(5))
