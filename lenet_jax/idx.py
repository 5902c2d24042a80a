"""Reading and checking IDX files (MNIST's format): a data directory holds SPLIT_FILES, .gz or not."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from lenet_jax.errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
IMAGE_SIZE = 28
NUM_CLASSES = 10

# split -> (images file, labels file), without the optional .gz suffix.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def split_paths(data_dir: Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of a split in data_dir, each NAME.gz or NAME."""
    return tuple(_find(data_dir, stem) for stem in SPLIT_FILES[split])


def _find(data_dir: Path, stem: str) -> Path:
    path = next((p for p in (data_dir / f"{stem}.gz", data_dir / stem) if p.is_file()), None)
    if path is None:
        raise DataError(
            f"{data_dir} has no {stem}[.gz]: put the four MNIST-format IDX files in one folder "
            "and pass it with --data-dir"
        )
    return path


def _chunks(path: Path, size: int = 2**20):
    """The file's decompressed bytes, `size` at a time (-1: all at once)."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            while data := f.read(size):
                yield data
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path} ({e}): the file is damaged, download it again") from e


def _read_bytes(path: Path) -> bytes:
    return b"".join(_chunks(path, -1))  # one chunk: joined without a copy


def _header(data: bytes, path: Path, magic: int, ndim: int) -> list[int]:
    size = 4 * (1 + ndim)
    if len(data) < size:
        raise DataError(f"{path} is truncated ({len(data)} bytes, not even a header): download it again")
    fields = np.frombuffer(data[:size], dtype=">u4").tolist()
    if fields[0] != magic:
        raise DataError(
            f"{path} has magic number {fields[0]:#010x}, expected {magic:#010x}: "
            "it is not an IDX file of this kind (swapped or wrong file?)"
        )
    return fields[1:]


def read_images(path: Path, data: bytes | None = None) -> np.ndarray:
    """IDX3 images as uint8 (N, 28, 28, 1); data: the file's decompressed bytes if already read."""
    data = _read_bytes(path) if data is None else data
    count = _image_count(path, data[:16], len(data))
    pixels = np.frombuffer(data, np.uint8, count * IMAGE_SIZE**2, offset=16)
    return pixels.reshape(count, IMAGE_SIZE, IMAGE_SIZE, 1)


def _image_count(path: Path, head: bytes, size: int) -> int:
    """The count an IDX3 file's header (head) promises, checked against its decompressed size."""
    count, rows, cols = _header(head, path, IMAGES_MAGIC, 3)
    if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{path} holds {rows}x{cols} images, expected {IMAGE_SIZE}x{IMAGE_SIZE}: "
            "LeNet takes MNIST-sized images; resize the dataset first"
        )
    if size - 16 < count * rows * cols:
        raise DataError(
            f"{path} is truncated: its header promises {count} images but it holds "
            f"{(size - 16) // (rows * cols)}; download it again"
        )
    return count


def read_labels(path: Path, data: bytes | None = None) -> np.ndarray:
    """IDX1 labels as int32 (N,), checked to lie in 0..9; data as for read_images."""
    data = _read_bytes(path) if data is None else data
    (count,) = _header(data, path, LABELS_MAGIC, 1)
    if len(data) - 8 < count:
        raise DataError(
            f"{path} is truncated: its header promises {count} labels but it holds "
            f"{len(data) - 8}; download it again"
        )
    labels = np.frombuffer(data, np.uint8, count, offset=8)
    if count and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(
            f"{path} has label {labels[bad]} at index {bad}, outside 0-{NUM_CLASSES - 1}: "
            "this is not a 10-class digit dataset"
        )
    return labels.astype(np.int32)


def read_pair(images_path: Path, labels_path: Path, digest=None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28, 1), labels int32 (N,)), counts checked; digest gets names and bytes."""
    raw = [_read_bytes(path) for path in (images_path, labels_path)]
    images, labels = read_images(images_path, raw[0]), read_labels(labels_path, raw[1])
    _check_counts(images_path, labels_path, len(images), len(labels))
    if digest is not None:
        for path, data in zip((images_path, labels_path), raw, strict=True):
            digest.update(path.name.removesuffix(".gz").encode())
            digest.update(data)
    return images, labels


def _check_counts(images_path: Path, labels_path: Path, images: int, labels: int) -> None:
    if images != labels:
        raise DataError(
            f"{images_path.name} has {images} images but {labels_path.name} has "
            f"{labels} labels: the files are from different datasets or damaged"
        )
    if not images:
        raise DataError(
            f"{images_path} holds no images: a dataset needs at least one training and one test "
            "image; check that the right files are in that folder"
        )


def read_folder(data_dir: Path) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(sha256 of the decompressed files (gzip headers hold a time), each split's (images, labels))."""
    _check_folder(data_dir)
    digest = hashlib.sha256()
    splits = {split: read_pair(*split_paths(data_dir, split), digest) for split in SPLIT_FILES}
    return digest.hexdigest(), splits


def _check_folder(data_dir: Path) -> None:
    if not data_dir.is_dir():
        hint = "does not exist" if not os.path.exists(data_dir) else "is not a directory"
        raise DataError(
            f"data directory {data_dir} {hint}: pass --data-dir (or LENET_DATA_DIR) "
            "pointing at the folder with the four IDX files"
        )


def check_and_fingerprint(data_dir: Path) -> str:
    """read_folder's checks and sha256, the images streamed (evaluation's peak memory: 47 MB less)."""
    _check_folder(data_dir)
    digest = hashlib.sha256()
    for split in SPLIT_FILES:
        images_path, labels_path = split_paths(data_dir, split)
        digest.update(images_path.name.removesuffix(".gz").encode())
        head, size = b"", 0
        for chunk in _chunks(images_path):
            head = head or chunk[:16]  # the header: the first chunk's 16 bytes
            size += len(chunk)
            digest.update(chunk)
        labels = _read_bytes(labels_path)
        count = len(read_labels(labels_path, labels))
        _check_counts(images_path, labels_path, _image_count(images_path, head, size), count)
        digest.update(labels_path.name.removesuffix(".gz").encode())
        digest.update(labels)
    return digest.hexdigest()


def local_config_name(digest: str) -> str:
    """The tfds config of a folder's files (`lenet_jax.mnist_idx`), named by their content."""
    return f"idx_{digest[:16]}"
