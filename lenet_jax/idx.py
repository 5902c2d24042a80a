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


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path} ({e}): the file is damaged, download it again") from e


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
    count, rows, cols = _header(data, path, IMAGES_MAGIC, 3)
    if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{path} holds {rows}x{cols} images, expected {IMAGE_SIZE}x{IMAGE_SIZE}: "
            "LeNet takes MNIST-sized images; resize the dataset first"
        )
    pixels = count * rows * cols
    if len(data) - 16 < pixels:
        raise DataError(
            f"{path} is truncated: its header promises {count} images but it holds "
            f"{(len(data) - 16) // (rows * cols)}; download it again"
        )
    return np.frombuffer(data, np.uint8, pixels, offset=16).reshape(count, rows, cols, 1)


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
    if len(images) != len(labels):
        raise DataError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has "
            f"{len(labels)} labels: the files are from different datasets or damaged"
        )
    if not len(images):
        raise DataError(
            f"{images_path} holds no images: a dataset needs at least one training and one test "
            "image; check that the right files are in that folder"
        )
    if digest is not None:
        for path, data in zip((images_path, labels_path), raw, strict=True):
            digest.update(path.name.removesuffix(".gz").encode())
            digest.update(data)
    return images, labels


def read_folder(data_dir: Path) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(sha256 of the decompressed files (gzip headers hold a time), each split's (images, labels))."""
    if not data_dir.is_dir():
        hint = "does not exist" if not os.path.exists(data_dir) else "is not a directory"
        raise DataError(
            f"data directory {data_dir} {hint}: pass --data-dir (or LENET_DATA_DIR) "
            "pointing at the folder with the four IDX files"
        )
    digest = hashlib.sha256()
    splits = {split: read_pair(*split_paths(data_dir, split), digest) for split in SPLIT_FILES}
    return digest.hexdigest(), splits


def check_and_fingerprint(data_dir: Path) -> str:
    """Validates the four files of data_dir (on every start, before tfds) and returns their sha256."""
    return read_folder(data_dir)[0]


def local_config_name(digest: str) -> str:
    """The tfds config of a folder's files (`lenet_jax.mnist_idx`), named by their content."""
    return f"idx_{digest[:16]}"
