"""IDX reading, the downloader's platform and network checks, and a data folder without tfds."""

import contextlib
import dataclasses
import os
import socket
import sys

import chex
import numpy as np
import pytest
from conftest import make_idx_dir, write_idx

from lenet_jax import data, idx, mnist_idx
from lenet_jax.errors import DataError


@pytest.mark.parametrize("compress", [True, False])
def test_reads_back_the_values_written(tmp_path, compress):
    """(Every malformed file is refused in one line: tests/test_fuzz.py, family "data".)"""
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    labels = np.asarray([0, 9, 3, 3], np.uint8)
    images_path = write_idx(tmp_path / "images", images, 0x803, compress)
    labels_path = write_idx(tmp_path / "labels", labels, 0x801, compress)
    assert images_path.suffix == (".gz" if compress else "")
    read_images, read_labels = idx.read_pair(images_path, labels_path)
    assert read_images.dtype == np.uint8 and read_labels.dtype == np.int32
    np.testing.assert_array_equal(read_images, images[..., None])
    np.testing.assert_array_equal(read_labels, labels)
    folder = make_idx_dir(tmp_path / "idx", n_train=12, n_test=5, compress=compress)
    assert len(idx.read_pair(*idx.split_paths(folder, "train"))[1]) == 12
    assert len(idx.read_pair(*idx.split_paths(folder, "test"))[1]) == 5


def test_fingerprint_depends_on_content(tmp_path):
    a = make_idx_dir(tmp_path / "a", seed=0)
    b = make_idx_dir(tmp_path / "b", seed=1)
    assert idx.check_and_fingerprint(a) != idx.check_and_fingerprint(b)
    assert idx.check_and_fingerprint(a) == idx.check_and_fingerprint(make_idx_dir(tmp_path / "c", seed=0))
    plain = make_idx_dir(tmp_path / "d", seed=0, compress=False)
    assert idx.check_and_fingerprint(a) == idx.check_and_fingerprint(plain)
    assert idx.check_and_fingerprint(a) == idx.read_folder(a)[0]  # streamed: the cache names stay


# The download's reachability probe: the download's first hop (a proxy the standard variables name).
@pytest.fixture
def probes(monkeypatch):
    """The (host, port) pairs the code connects to; no proxy variables set, no real connection."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    seen = []

    def create_connection(address, timeout=None, *args, **kwargs):
        seen.append(address)
        return contextlib.nullcontext()

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return seen


DIRECT, PROXY = ("storage.googleapis.com", 443), {"HTTPS_PROXY": "http://proxy.example:3128"}


@pytest.mark.parametrize(
    "environment, expected",
    [
        ({}, DIRECT),
        (PROXY, ("proxy.example", 3128)),
        ({"https_proxy": "http://user:secret@proxy.example:8080/"}, ("proxy.example", 8080)),
        ({"HTTPS_PROXY": "proxy.example:3128"}, ("proxy.example", 3128)),
        ({"ALL_PROXY": "socks5://socks.example"}, ("socks.example", 1080)),
        ({"HTTP_PROXY": "http://proxy.example:3128"}, DIRECT),  # http only
        ({**PROXY, "NO_PROXY": "storage.googleapis.com"}, DIRECT),
        ({**PROXY, "NO_PROXY": ".googleapis.com"}, DIRECT),
        ({**PROXY, "NO_PROXY": "*"}, DIRECT),
    ],
)
def test_probes_the_first_hop_of_the_download(probes, monkeypatch, environment, expected):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    mnist_idx._check_reachable(mnist_idx.MNIST_URL)
    assert probes == [expected]


def test_unreachable_proxy_fails_fast_naming_it(probes, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)

    def refuse(address, timeout=None, *args, **kwargs):
        probes.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DataError) as error:
        data.load_dataset(None)
    message = str(error.value)
    assert "cannot connect to proxy proxy.example port 3128" in message and "\n" not in message
    assert "offline? pass --data-dir" in message
    assert probes == [("proxy.example", 3128)]


NEEDS = {"array_record": "the array-record package", "tensorflow_datasets": "tensorflow-datasets"}


@pytest.mark.parametrize("package", NEEDS)
def test_without_array_record_or_tfds_idx_files_read_alike_and_downloads_refused(
    package, idx_dir, monkeypatch
):
    """array-record has wheels for Linux and Apple-silicon macOS only; the GPU image has no tfds."""
    assert mnist_idx.array_record_available()
    through_tfds = data.load_dataset(idx_dir, validation_size=8)
    for name in {package, *[n for n in sys.modules if n.startswith(f"{package}.")]}:
        monkeypatch.setitem(sys.modules, name, None)
    direct = data.load_dataset(idx_dir, validation_size=8)  # the IDX files read directly
    chex.assert_trees_all_equal(dataclasses.asdict(direct), dataclasses.asdict(through_tfds), strict=True)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match=f"needs {NEEDS[package]}.*--data-dir") as error:
        data.load_dataset(None)
    assert "\n" not in str(error.value)
