"""A tfds builder for MNIST's IDX files, no TensorFlow: `mnist` downloads, `idx_<sha256>` reads a folder."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lenet_jax import idx, parallel
from lenet_jax.data import Split
from lenet_jax.errors import DataError, LenetError, storage_error, storage_fault
from lenet_jax.library_logs import quiet
from lenet_jax.small_files import check_small_file

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MAX_ARRAYS_CACHE_BYTES = 2**28  # MNIST's training arrays are 47 MB


@dataclasses.dataclass
class IdxConfig(tfds.core.BuilderConfig):
    """source_dir: the local IDX folder, or None to download the official MNIST files."""

    source_dir: str | None = None


ONLINE_MNIST = IdxConfig(name="mnist", description="The official MNIST files, downloaded.")


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
    """OSError within seconds (tfds retries for minutes) if url's first hop (its proxy, if any) is down."""
    parsed = urllib.parse.urlparse(url)
    host = what = parsed.hostname
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
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


def _refuse_download(error: BaseException):
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    names = ", ".join(name for pair in idx.SPLIT_FILES.values() for name in pair)
    raise DataError(
        f"could not download MNIST ({reason}): offline? pass --data-dir DIR "
        f"(or set LENET_DATA_DIR) with the four IDX files ({names}; .gz or not)"
    ) from error


def load_splits(folder: Path | None, array_cache: bool = True, names=("train", "test")) -> tuple[list, str]:
    """The named splits of a folder (None: the download) and their tfds name, prepared once."""
    if folder is None:
        require_array_record()  # the download goes through tfds's array_record files
        config = ONLINE_MNIST
    else:  # named by the files' content, validated here
        digest = idx.check_and_fingerprint(folder)
        about = f"IDX files from {folder} (sha256 {digest})"
        config = IdxConfig(name=idx.local_config_name(digest), description=about, source_dir=str(folder))
    # Process 0 prepares while the others wait (two would collide); tfds's expected warnings quiet.
    with quiet():
        if parallel.is_main_process():
            builder, splits = _prepared(config, array_cache, names)
        parallel.barrier("dataset prepared")
        if not parallel.is_main_process():
            builder = MnistIdx(config=config, file_format="array_record")
            splits = [_split_arrays(builder, name, array_cache) for name in names]
    return splits, f"{builder.name}/{builder.builder_config.name}"


def _split_arrays(builder, split: str, use_cache: bool = True) -> Split:
    """One prepared split as arrays; use_cache: kept beside it as `arrays-<split>.npz` where writable."""
    cache = Path(builder.data_path) / f"arrays-{split}.npz"
    if use_cache and cache.is_file():
        with contextlib.suppress(Exception):  # BadZipFile, KeyError, ValueError...: decode again
            check_small_file(cache, MAX_ARRAYS_CACHE_BYTES)
            with np.load(cache) as arrays:
                return Split(np.asarray(arrays["images"]), np.asarray(arrays["labels"]))
    source = builder.as_data_source(split=split)
    records = source.__getitems__(list(range(len(source))))
    images = np.stack([r["image"] for r in records]).astype(np.uint8)
    labels = np.asarray([r["label"] for r in records], np.int32)
    if use_cache:
        with contextlib.suppress(OSError):  # written atomically
            tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(tmp, images=images, labels=labels)
            os.replace(tmp, cache)
    return Split(images, labels)


def _prepared(config, array_cache: bool, names: tuple[str, ...]):
    """(builder, its named splits), prepared if needed; an unreadable one is prepared again, once."""
    for attempt in (1, 2):
        builder, preparing = None, False
        try:
            for name in ("dataset_info.json", "features.json"):  # read whole by tfds: bounded first
                with contextlib.suppress(FileNotFoundError):
                    check_small_file(cache_dir(config) / name)
            builder = MnistIdx(config=config, file_format="array_record")  # reads its dataset_info.json
            preparing = not builder.is_prepared()
            if preparing:
                _prepare(builder, config)
                preparing = False
            return builder, [_split_arrays(builder, name, array_cache) for name in names]
        except LenetError:
            raise
        except Exception as e:  # noqa: BLE001 - tfds, array_record, protobuf...: a damaged cache
            cache = Path(builder.data_dir) if builder is not None else cache_dir(config)
            if (fault := storage_fault(e)) is not None:
                why = "the dataset could not be prepared there (TFDS_DATA_DIR chooses another folder)"
                raise storage_error(fault, why, where=f"to the tfds cache {cache}") from e
            if preparing or not cache.is_dir():
                raise  # not a cache that was there: a bug, with its traceback
            reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            if attempt == 2:
                raise DataError(
                    f"the tfds cache {cache} cannot be read ({reason}), even prepared anew: delete "
                    "it (derived data, rebuilt from the source files) and rerun, or set "
                    "TFDS_DATA_DIR to another folder"
                ) from e
            print(f"note: the tfds cache {cache} was damaged ({reason}); preparing it again", flush=True)
            try:
                shutil.rmtree(cache)
            except OSError as removing:
                raise DataError(
                    f"the tfds cache {cache} is damaged ({reason}) and cannot be deleted "
                    f"({removing.strerror}): delete it (derived data) or set TFDS_DATA_DIR to another "
                    "folder"
                ) from e


def _prepare(builder, config) -> None:
    """Prepares a dataset (downloading the MNIST files if it is the online one)."""
    root = Path(builder.data_dir_root)
    own = (f"{MnistIdx.name}/{config.name}", MnistIdx.name, "downloads", "")
    new = [root / name for name in own if not (root / name).exists()]
    if config.source_dir is None:  # offline: one line, before tfds prints or creates anything
        try:
            _check_reachable(MNIST_URL)
        except OSError as e:
            _refuse_download(e)
    print(f"Preparing {builder.name}/{config.name} in {builder.data_dir} (once)...", flush=True)
    try:
        builder.download_and_prepare()
    except BaseException:
        for folder in new:  # what this attempt created: nothing of it is usable
            shutil.rmtree(folder, ignore_errors=True)
        raise


def cache_dir(config: IdxConfig) -> Path:
    """Where tfds keeps `config`'s prepared dataset; no builder: a damaged dataset_info.json breaks one."""
    root = Path(tfds.core.constants.DATA_DIR).expanduser()  # what tfds uses: read at its import
    return root / MnistIdx.name / config.name / str(MnistIdx.VERSION)


class MnistIdx(tfds.core.GeneratorBasedBuilder):
    """MNIST, or any 28x28 10-class dataset in MNIST's IDX layout."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "uint8 image tensors stored as bytes, original order kept."}
    BUILDER_CONFIGS = [ONLINE_MNIST]

    def _info(self) -> tfds.core.DatasetInfo:
        shape = (idx.IMAGE_SIZE, idx.IMAGE_SIZE, 1)
        # Bytes encoding: ~3x faster to decode than the default int64 list.
        image = tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)
        label = tfds.features.ClassLabel(num_classes=idx.NUM_CLASSES)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"image": image, "label": label}),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # the files' order: "the last N training images" are the files'
            homepage="http://yann.lecun.com/exdb/mnist/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        if self.builder_config.source_dir is not None:
            folder = Path(self.builder_config.source_dir)
            pairs = {split: idx.split_paths(folder, split) for split in idx.SPLIT_FILES}
        else:
            urls = {stem: MNIST_URL + stem + ".gz" for files in idx.SPLIT_FILES.values() for stem in files}
            require_array_record()
            try:
                _check_reachable(MNIST_URL)
                paths = dl_manager.download(urls)  # verified against checksums.tsv (size, sha256) by tfds
            except Exception as e:  # noqa: BLE001 - any network failure means the same to a user
                if storage_fault(e) is not None:  # a full disk is no network failure
                    raise
                _refuse_download(e)
            pairs = {split: [Path(paths[stem]) for stem in stems] for split, stems in idx.SPLIT_FILES.items()}
        return {split: self._generate_examples(*pair) for split, pair in pairs.items()}

    def _generate_examples(self, images_path: Path, labels_path: Path):
        images, labels = idx.read_pair(images_path, labels_path)
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}
