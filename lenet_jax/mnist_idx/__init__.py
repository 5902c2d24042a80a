"""A tensorflow-datasets builder for MNIST-format IDX files that needs no TensorFlow.

tfds's stock `mnist` builder needs TensorFlow to prepare the data; this one reads the IDX files with
numpy, stores uint8 tensors in `array_record` files and is served with `tfds.data_source`. Configs:
`mnist` downloads the official files (tfds verifies them against `checksums.tsv` beside this file);
`idx_<sha256 prefix>` serves a local folder (`--data-dir`), named by the files' content. Where the
array-record package has no wheel (only Linux and Apple-silicon macOS have one), a local folder is
read straight from its files (`idx.read_folder`) and the download is refused in one line.
"""

from __future__ import annotations

import dataclasses
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lenet_jax import idx
from lenet_jax.errors import DataError, storage_fault

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"


@dataclasses.dataclass
class IdxConfig(tfds.core.BuilderConfig):
    """source_dir: the local IDX folder, or None to download the official MNIST files."""

    source_dir: str | None = None


ONLINE_MNIST = IdxConfig(name="mnist", description="The official MNIST files, downloaded.")


def local_config(data_dir: Path) -> IdxConfig:
    """The config serving the IDX files in data_dir (validated while preparing)."""
    digest = idx.check_and_fingerprint(data_dir)
    return IdxConfig(
        name=idx.local_config_name(digest),
        description=f"IDX files from {data_dir} (sha256 {digest})",
        source_dir=str(data_dir),
    )


def array_record_available() -> bool:
    """Whether tfds can write and read its array_record files here (see the module docstring)."""
    try:
        from array_record.python import array_record_module  # noqa: F401
    except ImportError:
        return False
    return True


def require_array_record() -> None:
    """Refuses the download path in one line where array-record cannot be installed."""
    if not array_record_available():
        raise DataError(
            "downloading MNIST needs the array-record package, which has no wheels for this platform "
            f"(Linux and Apple-silicon macOS only): download the four IDX files from {MNIST_URL} "
            "and pass their folder with --data-dir DIR (or set LENET_DATA_DIR)"
        )


def _check_reachable(url: str, timeout: float = 10.0) -> None:
    """OSError within seconds (tfds retries for minutes) when the first hop of a download of url
    cannot be reached: the proxy when the standard variables (HTTPS_PROXY, ALL_PROXY, NO_PROXY, ...)
    or the system's settings name one, as for the download itself (requests honours them)."""
    parsed = urllib.parse.urlparse(url)
    host, port, what = (
        parsed.hostname,
        parsed.port or (443 if parsed.scheme == "https" else 80),
        parsed.hostname,
    )
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(parsed.hostname):
        hop = urllib.parse.urlparse(proxy if "://" in proxy else "http://" + proxy)
        proxy_port = {"https": 443, "socks4": 1080, "socks4a": 1080, "socks5": 1080, "socks5h": 1080}
        host, port, what = hop.hostname, hop.port or proxy_port.get(hop.scheme, 80), f"proxy {hop.hostname}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise OSError(f"cannot connect to {what} port {port}: {e}") from e


def check_download_possible() -> None:
    """DataError at once when the MNIST files cannot be downloaded (offline): called before
    tfds starts preparing, so that nothing is printed or created for a download that fails."""
    try:
        _check_reachable(MNIST_URL)
    except OSError as e:
        _refuse_download(e)


def _refuse_download(error: BaseException):
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    names = ", ".join(name for pair in idx.SPLIT_FILES.values() for name in pair)
    raise DataError(
        f"could not download MNIST ({reason}): offline? pass --data-dir DIR "
        f"(or set LENET_DATA_DIR) with the four IDX files ({names}; .gz or not)"
    ) from error


def cache_dir(config: IdxConfig) -> Path:
    """Where tfds keeps the prepared dataset of `config` (derived data: rebuilt when deleted).
    Computed without a builder: a damaged dataset_info.json makes building one fail."""
    root = Path(tfds.core.constants.DATA_DIR).expanduser()  # what tfds uses: read at its import
    return root / MnistIdx.name / config.name / str(MnistIdx.VERSION)


class MnistIdx(tfds.core.GeneratorBasedBuilder):
    """MNIST, or any 28x28 10-class dataset in MNIST's IDX layout."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "uint8 image tensors stored as bytes, original order kept."}
    BUILDER_CONFIGS = [ONLINE_MNIST]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    # Bytes encoding: ~3x faster to decode than the default int64 list.
                    "image": tfds.features.Tensor(
                        shape=(idx.IMAGE_SIZE, idx.IMAGE_SIZE, 1),
                        dtype=np.uint8,
                        encoding=tfds.features.Encoding.BYTES,
                    ),
                    "label": tfds.features.ClassLabel(num_classes=idx.NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            # Keep the files' order: "the last N training images" must mean those of the files.
            disable_shuffling=True,
            homepage="http://yann.lecun.com/exdb/mnist/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        if self.builder_config.source_dir is None:
            urls = {stem: MNIST_URL + stem + ".gz" for files in idx.SPLIT_FILES.values() for stem in files}
            require_array_record()
            try:
                _check_reachable(MNIST_URL)
                # Verified against checksums.tsv (size and sha256) by tfds.
                paths = dl_manager.download(urls)
            except Exception as e:  # noqa: BLE001 - any network failure means the same to a user
                if storage_fault(e) is not None:  # a full disk is no network failure
                    raise
                _refuse_download(e)
            return {
                split: self._generate_examples(Path(paths[images]), Path(paths[labels]))
                for split, (images, labels) in idx.SPLIT_FILES.items()
            }
        folder = Path(self.builder_config.source_dir)
        return {split: self._generate_examples(*idx.split_paths(folder, split)) for split in idx.SPLIT_FILES}

    def _generate_examples(self, images_path: Path, labels_path: Path):
        images, labels = idx.read_pair(images_path, labels_path)
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}
