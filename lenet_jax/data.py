"""The dataset as in-memory arrays, and the batch order of every epoch.

Each split is loaded once as a numpy array (through the tfds builder of `lenet_jax.mnist_idx`) and
batches are gathered from memory: no tf.data, no per-batch decoding. The order is a function of
(key, epoch) only, so a resumed run sees the batches an uninterrupted one would. A split whose size
is not a multiple of the batch size ends with a batch padded with index -1 and masked out: every
image counts once per epoch (DataLoader's drop_last=False) and the jitted step compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lenet_jax import idx
from lenet_jax.errors import DataError

DATA_DIR_ENV = "LENET_DATA_DIR"
PADDING_INDEX = -1


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, see Evaluator
class Split:
    """Images uint8 (N, 28, 28, 1) and labels int32 (N,) of one split."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, start: int, stop: int | None) -> Split:
        return Split(self.images[start:stop], self.labels[start:stop])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The splits of one run; `source` names where they came from (tfds name and config)."""

    train: Split
    test: Split
    validation: Split | None
    source: str

    def subset(self, validation_size: int = 0, train_size: int | None = None) -> Dataset:
        """The last validation_size training images held out for validation, the first train_size kept."""
        train, validation = self.train, None
        if validation_size:
            if validation_size >= len(train):
                raise DataError(
                    f"--validation-size {validation_size} leaves no training images "
                    f"(the training split has {len(train)}): choose a smaller one"
                )
            train, validation = train.take(0, -validation_size), train.take(-validation_size, None)
        if train_size is not None:
            if train_size > len(train):
                raise DataError(
                    f"--train-size {train_size} is larger than the training split ({len(train)}): "
                    "choose a smaller one or leave it out"
                )
            train = train.take(0, train_size)
        return Dataset(train, self.test, validation, self.source)

    def describe(self) -> str:
        """'<source>: train N images, test N images[, validation N images]'."""
        return f"{self.source}: " + ", ".join(f"{name} {n:,} images" for name, n in self.sizes().items())

    def sizes(self) -> dict[str, int]:
        splits = {"train": self.train, "test": self.test, "validation": self.validation}
        return {name: len(split) for name, split in splits.items() if split is not None}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The --data-dir value, else $LENET_DATA_DIR, else None (download through tfds)."""
    value = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if value is None:
        return None
    try:
        return Path(value).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        raise DataError(
            f"data directory {value} cannot be resolved ({getattr(e, 'strerror', None) or e}): pass "
            "--data-dir (or LENET_DATA_DIR) pointing at the folder with the four IDX files"
        ) from None


def load_dataset(
    data_dir: str | os.PathLike | None = None,
    validation_size: int = 0,
    train_size: int | None = None,
    array_cache: bool = True,
) -> Dataset:
    """The train and test splits of data_dir (four IDX files, .gz or not; None: $LENET_DATA_DIR, else
    the download) through tfds, prepared on first use; the sizes: Dataset.subset; array_cache: speed's."""
    (train, test), source = _load_splits(data_dir, array_cache, ("train", "test"))
    return Dataset(train, test, None, source).subset(validation_size, train_size)


def load_test_split(data_dir: str | os.PathLike | None = None, array_cache: bool = True) -> Split:
    """The test split alone, as load_dataset's (evaluation: the training images would only cost memory)."""
    return _load_splits(data_dir, array_cache, ("test",))[0][0]


def _load_splits(data_dir, array_cache: bool, names: tuple[str, ...]) -> tuple[list[Split], str]:
    folder = resolve_data_dir(data_dir)
    missing = _missing_for_tfds()
    if folder is not None and missing:
        # No tfds here (no array-record wheel, or an image without tfds): read the files each run.
        digest, splits = idx.read_folder(folder)
        return [Split(*splits[name]) for name in names], f"mnist_idx/{idx.local_config_name(digest)}"
    if missing == "tensorflow-datasets":
        raise DataError(
            "downloading MNIST needs tensorflow-datasets, which is not installed: pip install "
            "tensorflow-datasets, or pass --data-dir DIR (or set LENET_DATA_DIR) with the four IDX files"
        )
    from lenet_jax import mnist_idx  # here: tfds takes ~1 s to import, and only loading data needs it

    return mnist_idx.load_splits(folder, array_cache, names)


def _missing_for_tfds() -> str | None:
    """The package that the tfds path lacks here, if any (tfds itself first)."""
    if importlib.util.find_spec("tensorflow_datasets") is None:
        return "tensorflow-datasets"
    from lenet_jax import mnist_idx

    return None if mnist_idx.array_record_available() else "array-record"


def num_batches(num_examples: int, batch_size: int) -> int:
    """Batches per pass over num_examples, the last one possibly partial."""
    return -(-num_examples // batch_size)


def pad_rows(rows: np.ndarray, multiple: int) -> np.ndarray:
    """rows with rows of PADDING_INDEX appended up to a multiple of `multiple` of them."""
    widths = [(0, -len(rows) % multiple)] + [(0, 0)] * (rows.ndim - 1)
    return np.pad(rows, widths, constant_values=PADDING_INDEX)


def epoch_order(key: np.ndarray | jax.Array, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
    """int32 (steps, batch_size) image indices of one epoch, -1 padding the last batch, drawn from
    fold_in(key, epoch) (a resume replays it) and read to the host once (no sync per call)."""
    return pad_rows(np.asarray(_permutation(key, epoch, num_examples)), batch_size).reshape(-1, batch_size)


@functools.partial(jax.jit, static_argnums=2)  # one small program, compiled once per size
def _permutation(key: jax.Array, epoch: int, num_examples: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def epoch_calls(key: jax.Array, epoch: int, num_examples: int, batch_size: int, per_call: int):
    """(indices (per_call, batch_size), count) of an epoch's calls; the last padded with PADDING_INDEX."""
    order = epoch_order(key, epoch, num_examples, batch_size)
    padded = pad_rows(order, per_call)
    for start in range(0, len(order), per_call):
        yield padded[start : start + per_call], min(per_call, len(order) - start)


def sequential_order(num_examples: int, batch_size: int) -> np.ndarray:
    """int32 (steps, batch_size) indices 0..N-1 in order, -1 padding the last batch."""
    return pad_rows(np.arange(num_examples, dtype=np.int32), batch_size).reshape(-1, batch_size)


def gather_batch(images: jax.Array, labels: jax.Array, indices: jax.Array) -> dict[str, jax.Array]:
    """The batch at `indices` (-1 = padding: image 0, mask 0) as the model consumes it, inside jit:
    images stay uint8 on the device (4x less traffic), scaled to [0, 1] fused into the gather."""
    valid = indices >= 0
    safe = jnp.where(valid, indices, 0)
    return {
        "image": images[safe].astype(jnp.float32) / 255.0,
        "label": labels[safe],
        "mask": valid.astype(jnp.float32),
    }
