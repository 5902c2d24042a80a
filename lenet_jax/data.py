"""The dataset as in-memory arrays, and the batch order of every epoch.

Each split is loaded once as a numpy array (through the tfds builder of `lenet_jax.mnist_idx`) and
batches are gathered from memory: no tf.data, no per-batch decoding. The order is a function of
(key, epoch) only, so a resumed run sees the batches an uninterrupted one would. A split whose size
is not a multiple of the batch size ends with a batch padded with index -1 and masked out: every
image counts once per epoch (DataLoader's drop_last=False) and the jitted step compiles once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lenet_jax import idx, parallel
from lenet_jax.errors import DataError, LenetError, storage_error, storage_fault
from lenet_jax.library_logs import quiet
from lenet_jax.small_files import check_small_file

DATA_DIR_ENV = "LENET_DATA_DIR"
PADDING_INDEX = -1
MAX_ARRAYS_CACHE_BYTES = 2**28  # MNIST's training arrays are 47 MB


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
        """The last validation_size training images held out as a validation split, then the
        first train_size of the rest kept (of a dataset that has no validation split yet)."""
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
        sizes = {"train": len(self.train), "test": len(self.test)}
        if self.validation is not None:
            sizes["validation"] = len(self.validation)
        return sizes


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


def _builder(config):
    from lenet_jax import mnist_idx  # here: tfds takes ~1 s to import, and only loading data needs it

    return mnist_idx.MnistIdx(config=config, file_format="array_record")


def _split_arrays(builder, split: str, use_cache: bool = True) -> Split:
    """One prepared split as arrays, decoded through tfds.data_source. use_cache: keep them beside
    it (`arrays-<split>.npz`, lenet_jax.speed.array_cache), skipped where read-only, decoded again
    when unreadable."""
    cache = Path(builder.data_path) / f"arrays-{split}.npz"
    if use_cache and cache.is_file():
        try:
            check_small_file(cache, MAX_ARRAYS_CACHE_BYTES)
            with np.load(cache) as arrays:
                return Split(np.asarray(arrays["images"]), np.asarray(arrays["labels"]))
        except Exception:  # noqa: BLE001 - BadZipFile, KeyError, ValueError...: decode again
            pass
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


def load_dataset(
    data_dir: str | os.PathLike | None = None,
    validation_size: int = 0,
    train_size: int | None = None,
    array_cache: bool = True,
) -> Dataset:
    """Loads train and test splits through tfds, preparing them on first use.

    data_dir: a folder of the four MNIST-format IDX files (gzipped or not); None uses
    $LENET_DATA_DIR, and failing that downloads the official MNIST files as tfds does.
    validation_size: hold out the last N training images as a validation split.
    train_size: then keep only the first N of the remaining training images.
    array_cache: keep the decoded arrays beside tfds's files (lenet_jax.speed.array_cache).
    """
    folder = resolve_data_dir(data_dir)
    missing = _missing_for_tfds()
    if folder is not None and missing:
        # No tfds path here (array-record has no wheel for the platform, or a machine set up
        # without tfds, e.g. a GPU image): the same arrays, read from the files each run.
        digest, splits = idx.read_folder(folder)
        train, test = (Split(*splits[name]) for name in ("train", "test"))
        source = f"mnist_idx/{idx.local_config_name(digest)}"
    else:
        train, test, source = _through_tfds(folder, missing, array_cache)
    return Dataset(train, test, None, source).subset(validation_size, train_size)


def _through_tfds(folder: Path | None, missing: str | None, array_cache: bool) -> tuple[Split, Split, str]:
    """The full train and test splits and their tfds name, prepared through tfds on first use."""
    if missing == "tensorflow-datasets":
        raise DataError(
            "downloading MNIST needs tensorflow-datasets, which is not installed: pip install "
            "tensorflow-datasets, or pass --data-dir DIR (or set LENET_DATA_DIR) with the four IDX files"
        )
    from lenet_jax import mnist_idx

    if folder is None:
        mnist_idx.require_array_record()  # the download goes through tfds's array_record files
    config = mnist_idx.ONLINE_MNIST if folder is None else mnist_idx.local_config(folder)
    # Process 0 prepares the dataset while the others wait: two preparing into one folder collide.
    # quiet(): tfds warns about what is expected here ("Using custom data configuration", ...).
    if parallel.is_main_process():
        with quiet():
            builder, train, test = _prepared(config, array_cache)
    parallel.barrier("dataset prepared")
    if not parallel.is_main_process():
        with quiet():
            builder = _builder(config)
            train, test = (_split_arrays(builder, split, array_cache) for split in ("train", "test"))
    return train, test, f"{builder.name}/{builder.builder_config.name}"


def _missing_for_tfds() -> str | None:
    """The package that the tfds path lacks here, if any (tfds itself first)."""
    if importlib.util.find_spec("tensorflow_datasets") is None:
        return "tensorflow-datasets"
    from lenet_jax import mnist_idx

    return None if mnist_idx.array_record_available() else "array-record"


def _prepared(config, array_cache: bool = True):
    """(builder, train, test) of a config, preparing its tfds dataset first if needed.

    The prepared dataset is derived data: one that cannot be read (a damaged file, a crash while
    it was written) is deleted and prepared again, once. A failed preparation leaves nothing behind.
    """
    from lenet_jax import mnist_idx

    for attempt in (1, 2):
        builder, preparing = None, False
        try:
            for name in ("dataset_info.json", "features.json"):  # read whole by tfds: bounded first
                with contextlib.suppress(FileNotFoundError):
                    check_small_file(mnist_idx.cache_dir(config) / name)
            builder = _builder(config)  # reads the cache's dataset_info.json, if any
            if not builder.is_prepared():
                preparing = True
                _prepare(builder, config)
                preparing = False
            return builder, *(_split_arrays(builder, split, array_cache) for split in ("train", "test"))
        except LenetError:
            raise
        except Exception as e:  # noqa: BLE001 - tfds, array_record, protobuf...: a damaged cache
            cache = Path(builder.data_dir) if builder is not None else mnist_idx.cache_dir(config)
            fault = storage_fault(e)
            if fault is not None:
                raise storage_error(
                    fault,
                    "the dataset could not be prepared there (TFDS_DATA_DIR chooses another folder)",
                    where=f"to the tfds cache {cache}",
                ) from e
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
    from lenet_jax import mnist_idx

    root = Path(builder.data_dir_root)
    own = (f"{mnist_idx.MnistIdx.name}/{config.name}", mnist_idx.MnistIdx.name, "downloads", "")
    new = [root / name for name in own if not (root / name).exists()]
    if config.source_dir is None:
        mnist_idx.check_download_possible()  # offline: one line, before tfds prints or creates anything
    print(f"Preparing {builder.name}/{config.name} in {builder.data_dir} (once)...", flush=True)
    try:
        builder.download_and_prepare()
    except BaseException:
        for folder in new:  # what this attempt created: nothing of it is usable
            shutil.rmtree(folder, ignore_errors=True)
        raise


def num_batches(num_examples: int, batch_size: int) -> int:
    """Batches per pass over num_examples, the last one possibly partial."""
    return -(-num_examples // batch_size)


def pad_rows(rows: np.ndarray, multiple: int) -> np.ndarray:
    """rows with rows of PADDING_INDEX appended up to a multiple of `multiple` of them."""
    return np.pad(
        rows, [(0, -len(rows) % multiple)] + [(0, 0)] * (rows.ndim - 1), constant_values=PADDING_INDEX
    )


def epoch_order(key: np.ndarray | jax.Array, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
    """int32 (steps, batch_size) image indices of one training epoch, -1 padding the last batch.

    Drawn from fold_in(key, epoch): a resumed run replays the order an uninterrupted one sees.
    Read to the host once per epoch, so the training loop slices rows without syncing.
    """
    return pad_rows(np.asarray(_permutation(key, epoch, num_examples)), batch_size).reshape(-1, batch_size)


@functools.partial(jax.jit, static_argnums=2)  # one small program, compiled once per size
def _permutation(key: jax.Array, epoch: int, num_examples: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def epoch_calls(key: jax.Array, epoch: int, num_examples: int, batch_size: int, per_call: int):
    """(indices (per_call, batch_size), count) of each training call of an epoch: its shuffled
    batches, per_call a call, the last call padded with rows of PADDING_INDEX (skipped steps)."""
    order = epoch_order(key, epoch, num_examples, batch_size)
    padded = pad_rows(order, per_call)
    for start in range(0, len(order), per_call):
        yield padded[start : start + per_call], min(per_call, len(order) - start)


def sequential_order(num_examples: int, batch_size: int) -> np.ndarray:
    """int32 (steps, batch_size) indices 0..N-1 in order, -1 padding the last batch."""
    return pad_rows(np.arange(num_examples, dtype=np.int32), batch_size).reshape(-1, batch_size)


def gather_batch(images: jax.Array, labels: jax.Array, indices: jax.Array) -> dict[str, jax.Array]:
    """The batch at `indices` (-1 = padding) as the model consumes it; call it inside jit.

    images stay uint8 on the device (4x less memory and traffic than float32); the scaling to
    [0, 1] happens here, fused by XLA into the gather. Padding rows read image 0 and get mask 0.
    """
    valid = indices >= 0
    safe = jnp.where(valid, indices, 0)
    return {
        "image": images[safe].astype(jnp.float32) / 255.0,
        "label": labels[safe],
        "mask": valid.astype(jnp.float32),
    }
