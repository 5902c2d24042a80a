"""Shared fixtures and helpers: synthetic and real MNIST, an isolated tfds cache, the scripts, a predictor."""

from __future__ import annotations

import atexit
import fcntl
import functools
import gzip
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# One XLA compilation cache per test process (per xdist worker): the same small programs compile once.
os.environ["LENET_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="lenet-jax-tests-xla-")
atexit.register(shutil.rmtree, os.environ["LENET_JAX_CACHE_DIR"], ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", os.environ["LENET_JAX_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
# Tests and CI read the real MNIST from ../shared/data/mnist (see README); LENET_DATA_DIR wins.
MNIST_DIR = Path(os.environ.get("LENET_DATA_DIR") or REPO_ROOT.parent / "shared/data/mnist").resolve()


def start_python(program, *args) -> subprocess.Popen:
    """`python program args...` in the background, unbuffered, with stdout/stderr as text pipes."""
    command = [sys.executable, str(program), *map(str, args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_script(name, *args) -> subprocess.CompletedProcess:
    """scripts/NAME in a subprocess (for what only a real process shows: exit, signals)."""
    process = start_python(REPO_ROOT / "scripts" / name, *args)
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@functools.cache
def script_main(name):
    """scripts/<name>'s main function, loaded as its __main__ would be."""
    return runpy.run_path(str(REPO_ROOT / "scripts" / name))["main"]


def run_cli(capsys, script, *argv):
    """Runs a script's main in-process, exactly as its __main__ does; returns (code, stdout, stderr)."""
    from lenet_jax import cli

    program = sys.argv[0]
    sys.argv[0] = str(REPO_ROOT / "scripts" / script)  # argparse names the script by it
    try:
        code = cli.run(script_main(script), [str(a) for a in argv])
    finally:
        sys.argv[0] = program
    return code, *capsys.readouterr()


def run_ok(capsys, script, *argv) -> str:
    """run_cli for a run that must succeed with nothing on stderr; returns its stdout."""
    code, out, err = run_cli(capsys, script, *argv)
    assert code == 0 and err == "", err
    return out


def snapshot(root: Path) -> dict[str, object]:
    """Every path under root (or root itself, "."), with what _entry reads of it."""
    root = Path(root)
    if root.is_dir() and not root.is_symlink():
        return {str(path.relative_to(root)): _entry(path) for path in sorted(root.rglob("*"))}
    return {".": _entry(root)} if os.path.lexists(root) else {}


def _entry(path: Path) -> object:
    """A link's target, None for a folder, a file's bytes (its kind and size if it cannot be read whole)."""
    if path.is_symlink():
        return os.readlink(path)
    if path.is_dir():
        return None
    info = path.stat()
    if not path.is_file() or info.st_size > 2**26:  # a FIFO, a sparse 4 GiB file: not read
        return ("not read", info.st_mode, info.st_size)
    return path.read_bytes()


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> Path:
    """Writes array (uint8) as an IDX file with the given magic number."""
    header = np.asarray([magic, *array.shape], ">u4").tobytes()
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if compress else path
    path.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)
    return path


def make_idx_dir(folder: Path, n_train=96, n_test=40, seed=0, compress=True) -> Path:
    """The four IDX files of a learnable task: class c a bright 6x6 square placed by c, over noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = 2 + 2 * (c // 5) * 5, 2 + (c % 5) * 5
            images[i, r : r + 6, col : col + 6] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, 0x803, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, 0x801, compress)
    return folder


@pytest.fixture(scope="session", autouse=True)
def isolated_tfds_cache(tmp_path_factory):
    """tfds datasets are prepared in a temporary folder (one per xdist worker), never the user's."""
    os.environ["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    return make_idx_dir(tmp_path / "idx")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {MNIST_DIR} (set LENET_DATA_DIR)")
    return MNIST_DIR


@pytest.fixture(scope="session")
def trained_run(mnist_dir, tmp_path_factory):
    """fast, 1 epoch on 12,000 images (~97%); unsmoothed: confident digits; so clipped (else it diverges)."""
    from lenet_jax.config import get_preset
    from lenet_jax.train import train_and_evaluate

    # Once per session: the first xdist worker to lock the shared parent folder trains (xdist's recipe).
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared
    workdir = shared / "trained-run"
    with open(shared / "trained-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "trained-run.done").exists():
            config = get_preset("fast").replace(
                epochs=1, train_size=12_000, label_smoothing=0.0, grad_clip=1.0
            )
            train_and_evaluate(config, workdir, data_dir=mnist_dir)
            (shared / "trained-run.done").touch()
    return workdir


@pytest.fixture(scope="session")
def untrained_predictor():
    """Random weights for input-handling tests (drawn by numpy: an op-by-op init compiles every op)."""
    from lenet_jax.config import Config
    from lenet_jax.model import init_params, model_from_config
    from lenet_jax.predict import Predictor

    model = model_from_config(Config())
    shapes = jax.eval_shape(lambda key: init_params(model, key), jax.random.key(0))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    return Predictor(model, params)
