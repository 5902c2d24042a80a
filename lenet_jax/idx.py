"""Reading and checking IDX files, the format of MNIST and of the datasets laid out like it.

A data directory holds four files, each gzipped (`NAME.gz`) or not (`NAME`):
train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte. Fashion-MNIST, KMNIST and EMNIST-MNIST ship in the same layout.
Every check raises `DataError` with one line naming the file, the problem and the fix.
"""

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


def find_idx_file(data_dir: Path, stem: str) -> Path:
    """The path of `stem` or `stem.gz` in data_dir."""
    for name in (stem + ".gz", stem):
        path = data_dir / name
        if path.is_file():
            return path
    raise DataError(
        f"{data_dir} has no {stem}[.gz]: put the four MNIST-format IDX files in one folder "
        "and pass it with --data-dir"
    )


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


def read_images(path: Path) -> np.ndarray:
    """IDX3 images as uint8 (N, 28, 28, 1)."""
    return parse_images(_read_bytes(path), path)


def parse_images(data: bytes, path: Path) -> np.ndarray:
    """IDX3 images from the file's (decompressed) bytes; path only names it in errors."""
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


def read_labels(path: Path) -> np.ndarray:
    """IDX1 labels as int32 (N,), checked to lie in 0..9."""
    return parse_labels(_read_bytes(path), path)


def parse_labels(data: bytes, path: Path) -> np.ndarray:
    """IDX1 labels from the file's (decompressed) bytes; path only names it in errors."""
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


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28, 1), labels int32 (N,)) from two IDX files, counts checked."""
    return _check_pair(read_images(images_path), read_labels(labels_path), images_path, labels_path)


def _check_pair(images, labels, images_path: Path, labels_path: Path):
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
    return images, labels


def split_paths(data_dir: Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of a split in data_dir."""
    images_stem, labels_stem = SPLIT_FILES[split]
    return find_idx_file(data_dir, images_stem), find_idx_file(data_dir, labels_stem)


def local_config_name(digest: str) -> str:
    """The tfds config of a folder's files (`lenet_jax.mnist_idx`), named by their content."""
    return f"idx_{digest[:16]}"


def read_folder(data_dir: Path) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The source name and the (images, labels) of each split that the tfds path serves for
    data_dir, read straight from the files: the path used where tfds cannot be."""
    name = local_config_name(check_and_fingerprint(data_dir))
    splits = {split: read_pair(*split_paths(data_dir, split)) for split in SPLIT_FILES}
    return f"mnist_idx/{name}", splits


def check_and_fingerprint(data_dir: Path) -> str:
    """Validates the four files of data_dir and returns the sha256 of their decompressed bytes.

    Runs on every start, before tfds is involved, so bad files are refused in one line at once.
    The digest identifies the dataset in the tfds cache: decompressed, so that the same data
    gzipped again (gzip headers hold a timestamp) or stored uncompressed stays the same dataset.
    """
    if not data_dir.is_dir():
        hint = "does not exist" if not os.path.exists(data_dir) else "is not a directory"
        raise DataError(
            f"data directory {data_dir} {hint}: pass --data-dir (or LENET_DATA_DIR) "
            "pointing at the folder with the four IDX files"
        )
    digest = hashlib.sha256()
    for split, stems in SPLIT_FILES.items():
        paths = split_paths(data_dir, split)
        raw_images, raw_labels = (_read_bytes(path) for path in paths)
        _check_pair(parse_images(raw_images, paths[0]), parse_labels(raw_labels, paths[1]), *paths)
        for stem, data in zip(stems, (raw_images, raw_labels), strict=True):
            digest.update(stem.encode())
            digest.update(data)
    return digest.hexdigest()
