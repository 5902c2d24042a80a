"""Fuzz train.py, evaluate.py, results.py in-process: one line naming real flags, nothing lost."""

from __future__ import annotations

import builtins
import collections
import contextlib
import errno
import functools
import io
import json
import operator
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging as absl_logging
from conftest import REPO_ROOT, make_idx_dir, run_cli, run_ok, script_main, snapshot, start_python, write_idx

from lenet_jax import cli
from lenet_jax.checkpoints import load_weights
from lenet_jax.data import load_dataset
from lenet_jax.resume import PLATEAU_NOTE
from lenet_jax.workdir import read_metrics, workdir_lock

TRAIN = ["--preset", "smoke", "--train-size", "64", "--batch-size", "32"]
TFDS_DATA_DIR = "tensorflow_datasets.core.constants.DATA_DIR"  # tfds reads $TFDS_DATA_DIR once, on import


# ---- helpers ----
@functools.cache
def script_flags(name: str) -> set[str]:
    """The options a script accepts, read from its --help."""
    with contextlib.redirect_stdout(out := io.StringIO()), pytest.raises(SystemExit):
        script_main(name)(["--help"])  # the options part of the help reads the same whatever prog is
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.getvalue()))


def assert_flags_exist(script: str, message: str, argv=()) -> None:
    """Every --flag named is the named script's ("evaluate.py --epoch 1"), the printer's or the user's."""
    named = re.compile(r"(\w+\.py)((?: --[a-z][\w-]*(?: [^\s;,()]+)?)+)")
    for other, flags in named.findall(message):
        for flag in re.findall(r"--[a-z][\w-]*", flags):
            assert flag in script_flags(other), f"{other} has no {flag}: {message}"
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", named.sub("", message)):
        assert flag in map(str, argv) or flag in script_flags(script), f"{script} has no {flag}: {message}"


def assert_one_line(err: str, code: int, expected_code: int, message: str) -> None:
    assert code == expected_code and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith(("error: ", "stopped: ")) and message in err, err


def check(capsys, script, argv, code, message, unchanged=(), absent=()):
    """The one line; `unchanged` paths byte for byte as they were, `absent` ones not created."""
    before = {path: snapshot(path) for path in unchanged}
    got, out, err = run_cli(capsys, script, *argv)
    assert_one_line(err, got, code, message)
    assert_flags_exist(script, err, argv)
    assert {path: snapshot(path) for path in unchanged} == before  # byte for byte
    assert [path for path in absent if os.path.lexists(path)] == []  # none left behind
    return out, err


# ---- shared runs ----
@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Relative paths (a default workdir) land in the test's folder, never the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_idx_dir(tmp_path_factory.mktemp("fuzz-data") / "idx")


@pytest.fixture(scope="module")
def trained_once(data, tmp_path_factory) -> Path:
    """A 2-epoch run of the smoke preset on the synthetic data (copied by `run`)."""
    workdir = tmp_path_factory.mktemp("fuzz-run") / "run"
    assert cli.run(script_main("train.py"), [str(a) for a in train_argv(workdir, data)]) == 0
    return workdir


@pytest.fixture
def run(trained_once, tmp_path) -> Path:
    return Path(shutil.copytree(trained_once, tmp_path / "run", symlinks=True))


def train_argv(workdir, data, *more) -> list:
    return [*TRAIN, "--epochs", "2", "--workdir", workdir, "--data-dir", data, *more]


# ---- family: data ----
TI, TL = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
EI, EL = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def _idx(folder: Path, stem: str, shape, magic: int = 0x803, fill: int = 0) -> Path:
    return write_idx(folder / stem, np.full(shape, fill, np.uint8), magic)


def _raw(folder: Path, stem: str, content: bytes) -> None:
    """stem.gz replaced by an uncompressed stem holding `content`."""
    (folder / f"{stem}.gz").unlink()
    (folder / stem).write_bytes(content)


def _empty_split(folder: Path, images: str, labels: str) -> None:
    _idx(folder, images, (0, 28, 28)), _idx(folder, labels, 0, 0x801)


DAMAGED = "the file is damaged, download it again"
DATA_CASES = {  # name: (damage the data folder, message, extra flags)
    "missing file": (lambda d: (d / f"{TL}.gz").unlink(), f"has no {TL}[.gz]"),
    "wrong magic": (lambda d: _idx(d, TI, (96, 28, 28), 0x801),
                    "has magic number 0x00000801, expected 0x00000803"),
    "truncated gzip": (lambda d: (d / f"{EI}.gz").write_bytes((d / f"{EI}.gz").read_bytes()[:300]), DAMAGED),
    "not gzip at all": (lambda d: (d / f"{TI}.gz").write_bytes(bytes(64)), DAMAGED),
    "empty file": (lambda d: _raw(d, EL, b""), "not even a header"),
    "promises more": (lambda d: _raw(d, EI, np.asarray([0x803, 50, 28, 28], ">u4").tobytes() + bytes(784)),
        "its header promises 50 images but it holds 1"),
    "counts disagree": (lambda d: _idx(d, EL, 39, 0x801), f"has 40 images but {EL}.gz has 39 labels"),
    "not 28x28": (lambda d: _idx(d, TI, (96, 32, 32)), "holds 32x32 images, expected 28x28"),
    "label out of range": (lambda d: _idx(d, TL, 96, 0x801, fill=10), "has label 10 at index 0, outside 0-9"),
    "labels file as images": (lambda d: shutil.copy(d / f"{TL}.gz", d / f"{TI}.gz"), "expected 0x00000803"),
    "0 test images": (lambda d: _empty_split(d, EI, EL), f"{EI}.gz holds no images"),
    "0 training images": (lambda d: _empty_split(d, TI, TL), f"{TI}.gz holds no images"),
    "--train-size above the split": (lambda d: None, "--train-size 1000 is larger than", "--train-size=1000"),
    "--validation-size takes all": (lambda d: None, "leaves no training images", "--validation-size", "96"),
    "--batch-size above the split": (lambda d: None, "--batch-size 1000000000 is larger than the 64 training "
                                     "images: use 64 or less", "--batch-size", "1000000000"),
    "folder missing": (lambda d: shutil.rmtree(d), "does not exist: pass --data-dir"),
    "folder is a file": (lambda d: (shutil.rmtree(d), d.write_text("x")), "is not a directory"),
    "folder is a symlink loop": (lambda d: (shutil.rmtree(d), d.symlink_to(d)), "cannot be resolved"),
    "folder empty": (lambda d: [p.unlink() for p in d.iterdir()], f"has no {TI}[.gz]"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_fuzz_data(capsys, tmp_path, case):
    damage, message, *flags = DATA_CASES[case]
    folder = make_idx_dir(tmp_path / "data")
    damage(folder)
    argv = [*TRAIN, "--workdir", tmp_path / "new" / "run", "--data-dir", folder, *flags]
    check(capsys, "train.py", argv, 2, message, unchanged=[folder], absent=[tmp_path / "new"])


def test_fuzz_data_environment_and_offline(capsys, tmp_path, monkeypatch, run, data):
    """LENET_DATA_DIR pointing nowhere; no data folder, offline; evaluate.py with bad data."""
    monkeypatch.setenv("LENET_DATA_DIR", str(tmp_path / "nowhere"))
    w1, w2 = tmp_path / "w1", tmp_path / "w2"
    check(capsys, "train.py", [*TRAIN, "--workdir", w1], 2, "(or LENET_DATA_DIR)", absent=[w1])
    monkeypatch.delenv("LENET_DATA_DIR")
    monkeypatch.setattr(TFDS_DATA_DIR, str(tmp_path / "tfds"))

    def offline(address, *args, **kwargs):
        raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))

    monkeypatch.setattr(socket, "create_connection", offline)
    message = "offline? pass --data-dir DIR"
    out, _ = check(capsys, "train.py", [*TRAIN, "--workdir", w2], 2, message, absent=[w2, tmp_path / "tfds"])
    assert "Downloading and preparing" not in out and "Preparing" not in out
    argv = ["--workdir", run, "--data-dir", tmp_path / "nowhere"]
    check(capsys, "evaluate.py", argv, 2, "does not exist", unchanged=[run])


# ---- family: flags ----
FLAG_CASES = {  # argv (train.py's, unless it starts with another script): message
    "--seed 99999999999999999999999": "--seed must fit in 64 bits",
    "--seed -99999999999999999999999": "--seed must fit in 64 bits",
    "--seed 1e3": "expected int, got '1e3'",
    "--lr inf": "--lr must be a finite number, not inf",
    "--lr nan": "--lr must be a finite number, not nan",
    "--lr 0": "--lr must be greater than 0",
    "--lr 1e308": "--lr must be at most 3.4e+38 (a float32), not 1e+308",  # with no numpy warning first
    "--augment-rotate=1e39": "--augment-rotate must be at most",
    "--epochs 1000000000000": "--epochs must be at most 10,000",
    "--weight-decay inf": "--weight-decay must be a finite number",
    "--augment-translate inf": "--augment-translate must be a finite number",
    "--momentum 1": "--momentum must be in [0, 1)",
    "--label-smoothing 1": "--label-smoothing must be in [0, 1)",
    "--ema-decay -1": "--ema-decay must be in [0, 1)",
    "--grad-clip -1": "--grad-clip must be greater than 0",
    "--epochs 0": "--epochs must be at least 1",
    "--epochs 1.5": "expected int, got '1.5'",
    "--batch-size -1": "--batch-size must be at least 1",
    "--eval-batch-size 0": "--eval-batch-size must be at least 1",
    "--speed fastest": "--speed must be one of auto, plain",
    "--train-size 0": "--train-size must be at least 1",
    "--keep 0": "--keep must be at least 1",
    "--optimizer adamax2": "--optimizer must be one of sgd, momentum",
    "--activation gelu": "--activation must be one of sigmoid, tanh, relu",
    "--pool min": "--pool must be one of avg, max",
    "--schedule step": "--schedule must be one of",
    "--lr -0.1": "--lr must be greater than 0",
    "--preset turbo": "unknown preset 'turbo'",
    "--bogus-flag": "unrecognized arguments: --bogus-flag",
    "--force": "--force only goes with --restart",
    "--distributed": "outside a detected cluster",
    "--distributed --coordinator h:1": "--distributed takes no --coordinator",
    "--process-id 1": "give all of --coordinator, --num-processes",
    "--coordinator localhost:1234 --num-processes 0 --process-id 0": "--num-processes must be at least 1",
    "--coordinator localhost:1234 --num-processes 2 --process-id 5": "--process-id must be in 0..1, not 5",
    "--coordinator notahost --num-processes 1 --process-id 0": "--coordinator must be HOST:PORT",
    "--coordinator localhost:70000 --num-processes 1 --process-id 0":
        "--coordinator must be HOST:PORT with a port in 1-65535",
    "--coordinator notahost.invalid:1234 --num-processes 2 --process-id 1":
        "--coordinator host 'notahost.invalid' cannot be resolved",
    "evaluate.py": "the following arguments are required: --workdir",
    "evaluate.py --workdir x --epoch last": "invalid int value: 'last'",
    "evaluate.py --workdir x --compare y": "--compare only goes with --report",
    "results.py": "the following arguments are required: workdirs",
}  # fmt: skip


@pytest.mark.parametrize("argv", list(FLAG_CASES))
def test_fuzz_flags(capsys, tmp_path, monkeypatch, argv):
    """(--distributed, outside a cluster, sets jax's CPU collectives: put back afterwards.)"""
    message, argv = FLAG_CASES[argv], argv.split()
    script = argv.pop(0) if argv[0].endswith(".py") else "train.py"
    real_getaddrinfo, collectives = socket.getaddrinfo, jax.config.jax_cpu_collectives_implementation

    def getaddrinfo(host, *args, **kwargs):  # an unknown name, without waiting for a resolver
        if host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    workdir = ["--workdir", tmp_path / "run"] if script == "train.py" else []
    try:
        check(capsys, script, [*workdir, *argv], 2, message, unchanged=[tmp_path], absent=[tmp_path / "run"])
    finally:
        jax.config.update("jax_cpu_collectives_implementation", collectives)


# ---- family: checkpoints ----
def _meta(run: Path, epoch: int) -> Path:
    return run / "checkpoints" / str(epoch) / "meta" / "metadata"


def _truncate_item(run: Path, epoch: int, item: str) -> None:
    for path in (run / "checkpoints" / str(epoch) / item).rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _cut(epoch):
    return lambda run: _truncate_item(run, epoch, "params")


def _meta_is(text, epoch=2):
    return lambda run: _meta(run, epoch).write_text(text)


def _edit(edit: Callable[[dict], object]):
    """The meta of epoch 2 rewritten as edit(meta)."""
    return lambda run: _meta(run, 2).write_text(json.dumps(edit(json.loads(_meta(run, 2).read_text()))))


def _without(key):
    return _edit(lambda m: {k: v for k, v in m.items() if k != key})


def _config_with(**fields):
    return _edit(lambda m: {**m, "config": {**m["config"], **fields}})


def _evaluate(*more):
    return ["evaluate.py", "--workdir", "{run}", "--data-dir", "{data}", *more]


def _resume(*more, epochs=3):
    return ["train.py", *TRAIN, "--epochs", str(epochs), "--workdir", "{run}", "--data-dir", "{data}", *more]


EV, TR = _evaluate(), _resume()
CHECKPOINT_CASES = {  # name: (damage or None, script, argv ({run} {data} {tmp} filled in), message or None)
    "params truncated, evaluate": (_cut(2), EV, "): epoch 1 is the newest before it (evaluate.py --epoch 1"),
    "params truncated, the older epoch evaluates": (_cut(2), _evaluate("--epoch", "1"), None),
    "params truncated, resume": (_cut(2), TR, "the checkpoint of epoch 2 is damaged"),
    "params missing": (lambda r: shutil.rmtree(r / "checkpoints/2/params"), EV, "no params in it"),
    "no train_state": (lambda r: shutil.rmtree(r / "checkpoints/2/train_state"), TR, "no train_state in it"),
    "meta garbage": (_meta_is("{not json"), EV, "is damaged"),
    "meta a list": (_meta_is("[1, 2]"), EV, "is damaged"),
    "meta without config": (_without("config"), EV, "its meta lacks the config or the step"),
    "meta without step, resume": (_without("step"), TR, "its meta lacks the config or the step"),
    "meta from a newer version": (_edit(lambda m: {**m, "format_version": 99}), EV,
        "has format version 99, newer than this lenet-jax reads"),
    "meta config invalid": (
        _config_with(epochs=-1), EV, "records a config this lenet-jax cannot use (epochs must be at least 1"),
    "meta config from another version": (_config_with(wings=2), EV, "unknown config fields ['wings']"),
    "epoch that does not exist": (None, _evaluate("--epoch", "5"), "available epochs: 1, 2"),
    "only epoch 1 damaged": (_cut(1), _evaluate("--epoch", "1"), "no earlier epoch is there to fall back to"),
    "no checkpoints": (lambda r: [shutil.rmtree(p) for p in (r / "checkpoints").iterdir()], EV,
        "has no checkpoints: train first"),
    "damaged, with a report": (
        _meta_is("{not json"), _evaluate("--report", "{tmp}/report"), "the checkpoint of epoch 2 is damaged"),
    "other settings": (None, _resume("--optimizer", "adam"), "optimizer: checkpoint 'sgd', now 'adam'"),
    "restart without force": (None, _resume("--restart"), "already holds checkpoints (epochs 1, 2)"),
    "meta 4 GiB, sparse": (lambda r: os.truncate(_meta(r, 2), 4 * 2**30), EV,
        "damaged (its meta/metadata is 4.0 GiB, more than 16.0 MiB)"),
    "metadata a link to /dev/zero": (lambda r: _to_dev_zero(r / "checkpoints/2/_CHECKPOINT_METADATA"),
        EV, "damaged (its _CHECKPOINT_METADATA is not a regular file)"),
    "eval batch size 10^9 in the meta, evaluate": (_config_with(eval_batch_size=10**9), EV, None),
    # Not failures: an older damaged checkpoint blocks nothing; a newer one is only reported.
    "epoch 1 meta damaged, resume": (_meta_is("{not json", epoch=1), _resume(epochs=2), None),
    "epoch 1 damaged, evaluate newest": (_cut(1), EV, None),
}  # fmt: skip


def _to_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def _fill(argv, **values):
    return [str(a).format(**values) for a in argv]


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_fuzz_checkpoints(capsys, tmp_path, run, data, case):
    damage, argv, message = CHECKPOINT_CASES[case]
    if damage:  # else the run as trained
        damage(run)
    script, *argv = _fill(argv, run=run, data=data, tmp=tmp_path)
    if message:
        check(capsys, script, argv, 2, message, unchanged=[run], absent=[tmp_path / "report"])
        return
    before = snapshot(run / "checkpoints")
    code, out, err = run_cli(capsys, script, *argv)
    assert code == 0 and "Traceback" not in err and err.count("\n") <= 1, err
    assert snapshot(run / "checkpoints") == before and [row["epoch"] for row in read_metrics(run)] == [1, 2]


# ---- family: workdir contents ----
def _metrics(run: Path) -> Path:
    return run / "metrics.jsonl"


def _as_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("kept")


LOG_DAMAGE = {
    "metrics cut mid-line": lambda r: _metrics(r).write_bytes(_metrics(r).read_bytes()[:-40]),
    "metrics garbage bytes": lambda r: _metrics(r).write_bytes(b"\x00\xff\xfe garbage\n" * 3),
    "metrics a 42 line": lambda r: _metrics(r).write_text(_metrics(r).read_text() + "42\n"),
    "metrics a foreign row": lambda r: _metrics(r).write_text('{"foo": 1}\n' + _metrics(r).read_text()),
    "metrics a partial row": lambda r: _metrics(r).write_text('{"epoch": 1}\n'),
    "metrics a directory": lambda r: _as_directory(_metrics(r)),
    "metrics missing": lambda r: _metrics(r).unlink(),
    "config garbage": lambda r: (r / "config.json").write_text("{garbage"),
    "config a list": lambda r: (r / "config.json").write_text("[1]"),
    "config a directory": lambda r: _as_directory(r / "config.json"),
    "metrics a link to /dev/zero": lambda r: _to_dev_zero(_metrics(r)),
    "metrics 4 GiB, sparse": lambda r: os.truncate(_metrics(r), 4 * 2**30),
    "metrics a FIFO": lambda r: (_metrics(r).unlink(), os.mkfifo(_metrics(r))),
    "config a link to /dev/zero": lambda r: _to_dev_zero(r / "config.json"),
    "config 4 GiB, sparse": lambda r: os.truncate(r / "config.json", 4 * 2**30),
    "tensorboard a file": lambda r: (shutil.rmtree(r / "tensorboard"), (r / "tensorboard").write_text("x")),
    "event file garbage": lambda r: [p.write_bytes(b"garbage") for p in (r / "tensorboard").iterdir()],
}


REPORT_DAMAGE = ("metrics cut mid-line", "metrics a link to /dev/zero", "metrics 4 GiB, sparse")
WORKDIR_CASES = (
    [("resume", damage) for damage in LOG_DAMAGE]  # training reads (and repairs) them all
    + [("report", damage) for damage in REPORT_DAMAGE]
    + [("results", damage) for damage in LOG_DAMAGE if damage.startswith(("metrics", "config"))]
)


@pytest.mark.parametrize("command,damage", WORKDIR_CASES, ids=[f"{c}: {d}" for c, d in WORKDIR_CASES])
def test_fuzz_workdir_contents(capsys, tmp_path, run, data, damage, command):
    """A damaged log never blocks: resume repairs it (kept aside); --report and results.py read around it."""
    LOG_DAMAGE[damage](run)
    before, checkpoints = snapshot(run), snapshot(run / "checkpoints")
    # Never a copy of what a file claims to hold (traced only for gigabytes: tracing is slow).
    bounded = _python_memory_below if "GiB" in damage or "/dev/zero" in damage else contextlib.nullcontext
    report = ["--workdir", run, "--data-dir", data, "--report", tmp_path / "report"]
    scripts = {"resume": ("train.py", train_argv(run, data)), "report": ("evaluate.py", report)}
    script, argv = scripts.get(command, ("results.py", [run]))
    with bounded(2**26):
        code, out, err = run_cli(capsys, script, *argv)
    if command == "resume":
        assert code == 0 and err == "", err
        assert [row["epoch"] for row in read_metrics(run)] == [1, 2]
        assert json.loads((run / "config.json").read_text())["config"]["seed"] == 0
        assert (run / "tensorboard").is_dir() and snapshot(run / "checkpoints") == checkpoints
        contents = [value for value in snapshot(run).values() if isinstance(value, bytes)]
        assert [
            k for k, v in before.items() if isinstance(v, bytes) and v not in contents
        ] == []  # set aside, or in place
    else:
        assert code == 0 and "Traceback" not in err, err
        assert len([line for line in err.splitlines() if not line.startswith("Report for")]) <= 1, err
        assert snapshot(run) == before  # read only
        if command == "report":
            assert (tmp_path / "report" / "curves.png").is_file()
        else:
            assert json.loads(out.splitlines()[0])["epochs"] == 2


@contextlib.contextmanager
def _python_memory_below(limit: int):
    """Python's allocations peak below `limit` (RSS: test_unbounded_logs_keep_a_small_process)."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"Python allocated {peak / 2**20:.0f} MiB"


def _workdir(kind: str, run: Path, tmp: Path) -> Path:
    """The trained run, or tmp/kind made a symlink loop, a file (or a path under it), an empty folder."""
    if kind == "loop":
        (tmp / "loop").symlink_to(tmp / "loop")
    elif kind.startswith("file"):
        (tmp / "file").write_text("x")
    elif kind == "empty":
        (tmp / "empty").mkdir()
    return run if kind == "run" else tmp / kind


RESTART = ["--restart", "--force", "--data-dir"]
WORKDIR_FAILURES = {  # name: (the workdir (_workdir's kind); script; more argv; message)
    "restart --force, bad data": ("run", "train.py", [*RESTART, "{tmp}/nonexistent"], "does not exist"),
    "restart --force, 0 images": ("run", "train.py", [*RESTART, "{tmp}/empty-data"], "holds no images"),
    "restart --force, a bad flag": ("run", "train.py", [*RESTART, "{data}", "--lr", "inf"], "--lr must be"),
    "symlink loop, train": ("loop", "train.py", ["--data-dir", "{data}"], "cannot be resolved"),
    "symlink loop, evaluate": ("loop", "evaluate.py", [], "cannot be resolved"),
    "symlink loop, results": ("loop", "results.py", [], "not the workdir of"),
    "a file": ("file", "train.py", ["--data-dir", "{data}"], "is not writable"),
    "under a file": ("file/run", "train.py", ["--data-dir", "{data}"], "is not writable"),
    "empty, evaluate": ("empty", "evaluate.py", [], "does not exist: pass the --workdir"),
    "empty, results": ("empty", "results.py", [], "not the workdir of a training run"),
    "missing, results": ("nowhere", "results.py", [], "not the workdir of a training run"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(WORKDIR_FAILURES))
def test_fuzz_workdir_refusals(capsys, tmp_path, run, data, case):
    """What cannot be used is refused in one line, and the run there is left as it was."""
    kind, script, extra, message = WORKDIR_FAILURES[case]
    empty = make_idx_dir(tmp_path / "empty-data", n_train=0, n_test=0)
    workdir = _workdir(kind, run, tmp_path)
    extra = _fill(extra, tmp=tmp_path, data=data)
    if script == "train.py":
        argv = [*TRAIN, "--epochs", "2", "--workdir", workdir, *extra]
    elif script == "evaluate.py":
        argv = ["--workdir", workdir, "--data-dir", data, *extra]
    else:
        argv = [workdir]
    check(capsys, script, argv, 2, message, unchanged=[run, empty])


NET = REPO_ROOT / "tests/fixtures/torch_tutorial/net_3.pth"
WORKDIR_IN_USE = {  # name: (script and argv, exit code, message); the run's workdir held by another process
    "a second trainer": (TR, 2, "is in use by PID"),
    "restart --force": (_resume("--restart", "--force", epochs=2), 2, "is in use by"),
    "convert into it": (["convert.py", "from-torch", NET, "--workdir", "{run}"], 2,
        "wait until that run ends (or stop it), or pass another --workdir"),
    "evaluate reads it": (EV, 0, ""),
    "a killed holder's lock": (TR, 0, ""),
}  # fmt: skip


@pytest.mark.parametrize("case", list(WORKDIR_IN_USE))
def test_fuzz_workdir_in_use(capsys, tmp_path, run, data, case):
    """One writer per workdir, refused at once; readers go on; a killed holder's lock blocks nothing."""
    argv, code, message = WORKDIR_IN_USE[case]
    if argv[0] == "convert.py":  # a workdir a convert would take: an empty one
        (run := tmp_path / "new").mkdir()
    script, *argv = _fill(argv, run=run, data=data)
    if case == "a killed holder's lock":
        hold = f"import os, fcntl; fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
        hold += "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'PID 1 on elsewhere'); os.kill(os.getpid(), 9)"
        assert subprocess.run([sys.executable, "-c", hold]).returncode == -signal.SIGKILL
        run_ok(capsys, script, *argv)
        assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]
        return
    with workdir_lock(run):
        if code:
            _, err = check(capsys, script, argv, code, message, unchanged=[run])
            assert f"PID {os.getpid()} on {socket.gethostname()}" in err  # the holder
        else:
            assert json.loads(run_ok(capsys, script, *argv))["epoch"] == 2
    assert not (run / ".lock").exists()  # removed by its holder


def test_unbounded_logs_keep_a_small_process(run, tmp_path):
    """4 GiB sparse logs and a link to /dev/zero: results.py peaks below 300 MB RSS (6 GiB before)."""
    os.truncate(_metrics(run), 4 * 2**30)
    _to_dev_zero(run / "config.json")
    os.truncate(_meta(run, 1), 4 * 2**30)
    measure = (  # VmHWM: this process's peak RSS (ru_maxrss would keep the forking pytest's across exec)
        "import re, runpy, sys; from lenet_jax import cli; "
        "code = cli.run(runpy.run_path(sys.argv[1])['main'], sys.argv[2:]); "
        "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
        "open(sys.argv[2] + '.rss', 'w').write(peak); sys.exit(code)"
    )
    command = [sys.executable, "-c", measure, REPO_ROOT / "scripts/results.py", run]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["epochs"] == 2  # epoch 2 from its checkpoint
    peak = int(Path(f"{run}.rss").read_text()) / 1024  # kB
    assert peak < 300, f"peak RSS {peak:.0f} MB"


@pytest.mark.parametrize("value,message", [("abc", "invalid int value: 'abc'"), ("0", "must be 1 to 1024")])
def test_fuzz_launch_flags(value, message):
    """launch.py's errors in one line, like the other scripts (a real process: it reads sys.argv)."""
    launch = start_python(REPO_ROOT / "scripts/launch.py", "--num-processes", value, "--", "--epochs", "1")
    assert_one_line(launch.communicate(timeout=60)[1], launch.returncode, 2, message)


def test_fuzz_workdir_leftovers_of_a_crash(capsys, run, data):
    """A half-written checkpoint is never read; the trainer removes it, leaving the user's folders."""
    partial = run / "checkpoints" / "3.orbax-checkpoint-tmp-1234"
    shutil.copytree(run / "checkpoints" / "2", partial)
    _truncate_item(run, partial.name, "params")
    (run / "checkpoints" / "notes").mkdir()
    (run / "checkpoints" / "notes" / "mine.txt").write_text("mine")
    before = snapshot(run)
    assert json.loads(run_ok(capsys, "evaluate.py", "--workdir", run, "--data-dir", data))["epoch"] == 2
    assert snapshot(run) == before
    run_ok(capsys, "train.py", *train_argv(run, data))
    assert not partial.exists() and (run / "checkpoints" / "notes" / "mine.txt").read_text() == "mine"


# ---- family: faults ----
def _orbax_fails(error: BaseException, item: str = "meta") -> Callable:
    """The write of epoch 3's checkpoint item (meta: JSON; params: arrays) raises `error`."""
    handler = ocp.JsonCheckpointHandler if item == "meta" else ocp.StandardCheckpointHandler
    original = handler.async_save

    async def async_save(self, directory, *args, **kwargs):
        if "3.orbax-checkpoint-tmp" in str(directory) and (item == "meta" or "params" in str(directory)):
            raise error
        return await original(self, directory, *args, **kwargs)

    return lambda monkeypatch: monkeypatch.setattr(handler, "async_save", async_save)


def _no_room(monkeypatch) -> None:
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 300_000, 300_000))


TENSORSTORE_ENOSPC = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "conv1.kernel/0" in OCDBT database: Failed to write 145499 bytes: '
    "No space left on device [os_error_code='28']"
)


def _writes_fail(pattern: str, code: int) -> Callable:
    """Writes to `pattern` raise OSError(code): a full disk, or a denied write (root ignores modes)."""
    original = builtins.open

    def failing(file, mode="r", *args, **kwargs):
        if re.search(pattern, str(file)) and set(mode) & set("wax+"):
            raise OSError(code, os.strerror(code), str(file))
        return original(file, mode, *args, **kwargs)

    def inject(monkeypatch):
        monkeypatch.setattr(builtins, "open", failing)
        monkeypatch.setattr(io, "open", failing)

    return inject


ENOSPC, EACCES = OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EACCES, "Permission denied")
INTACT = "the checkpoint of epoch 2 is intact and the run resumes from it; "
OOM = "the device ran out of memory (asked for 85.9 GB): lower "
FAULT_CASES = {  # name: (inject the fault, exit code, message); each hits the resume of a 2-epoch run to 3
    "meta save, disk full": (_orbax_fails(ENOSPC), 4, f"(No space left on device): {INTACT}free some space"),
    "meta save, denied": (_orbax_fails(EACCES), 4, f"(Permission denied): {INTACT}fix the permissions"),
    "checkpoint arrays, disk full (tensorstore)": (_orbax_fails(TENSORSTORE_ENOSPC, "params"), 4,
        "(No space left on device): the checkpoint of epoch 2"),
    "checkpoint, no room left": (_no_room, 4, "MiB free, the checkpoint of epoch 3 needs about"),
    "checkpoint, second Ctrl-C": (_orbax_fails(KeyboardInterrupt()), 130,
        "stopped at once in epoch 3 (its checkpoint was not written); rerun the same command to resume "
        "from the checkpoint of epoch 2"),
    "metrics append, disk full": (
        _writes_fail(r"metrics\.jsonl$", errno.ENOSPC), 4, "the checkpoint of epoch 3 is intact"),
    "metrics append, permission denied": (
        _writes_fail(r"metrics\.jsonl$", errno.EACCES), 4, "metrics.jsonl (Permission denied)"),
    "metrics rewrite, disk full": (
        _writes_fail(r"metrics\.jsonl\.tmp$", errno.ENOSPC), 4, "the checkpoint of epoch 2 is intact"),
    "config write, disk full": (
        _writes_fail(r"config\.json\.tmp$", errno.ENOSPC), 4, "config.json.tmp (No space left on device)"),
    "config, read-only": (_writes_fail(r"config\.json\.tmp$", errno.EROFS), 4, "use a writable file system"),
    "events, disk full": (_writes_fail("tfevents", errno.ENOSPC), 4, "the checkpoint of epoch 2 is intact"),
    "workdir probe, disk full": (
        _writes_fail(r"\.write-test-", errno.ENOSPC), 4, "cannot be written; free some space"),
    "device OOM, training": (lambda mp: mp.setattr("lenet_jax.speed.train_call", lambda *a: _device_oom),
        5, f"{OOM}--batch-size (now 32)"),
    "device OOM, eval": (lambda mp: mp.setattr("lenet_jax.evaluation.Evaluator._on_device", _device_oom),
        5, f"{OOM}--eval-batch-size (now 64)"),
    "setting a damaged log aside, denied": (
        lambda mp: mp.setattr(os, "replace", _failing_replace(os.replace, r"metrics\.jsonl$", errno.EACCES)),
        4, "the checkpoint of epoch 2 is intact and the run resumes from it"),
}  # fmt: skip


def _device_oom(*args, **kwargs):
    """XLA's own RESOURCE_EXHAUSTED: a 64 GiB buffer, which the test machine cannot give."""
    return jax.jit(lambda: jnp.zeros(2**36 + 2**34, jnp.uint8))()


def _failing_replace(original, pattern, code):
    def replace(src, dst, *args, **kwargs):
        if re.search(pattern, os.fspath(src)):
            raise OSError(code, os.strerror(code), os.fspath(src))
        return original(src, dst, *args, **kwargs)

    return replace


@pytest.mark.parametrize("case", list(FAULT_CASES))
def test_fuzz_faults(capsys, monkeypatch, tmp_path, run, data, case):
    """A fault resuming to epoch 3: one line saying what is intact, nothing lost, and a rerun completes."""
    inject, code, message = FAULT_CASES[case]
    argv = [*TRAIN, "--epochs", "3", "--workdir", run, "--data-dir", data]
    if case == "workdir probe, disk full":
        argv[argv.index(run)] = tmp_path / "new" / "run"
    if case == "setting a damaged log aside, denied":
        _metrics(run).write_text("42\n")
    checkpoints = snapshot(run / "checkpoints")
    with monkeypatch.context() as patch:
        inject(patch)
        check(capsys, "train.py", argv, code, message)
    if case == "workdir probe, disk full":
        assert not (tmp_path / "new").exists()
        return
    after = snapshot(run / "checkpoints")
    assert {k: v for k, v in after.items() if not k.startswith("3")} == checkpoints  # epochs 1-2 untouched
    assert not [k for k in after if ".orbax-checkpoint-tmp" in k]
    run_ok(capsys, "train.py", *argv)  # the fault is gone: the run completes
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]


def _cut_test_records(folder: Path, monkeypatch) -> None:
    (folder / "arrays-test.npz").unlink()
    for path in folder.glob("*test.array_record*"):
        path.write_bytes(path.read_bytes()[:50])


def _unreadable(builder, split, *options):
    raise RuntimeError("ArrayRecord file should be at least 64KB big")


SHORT = "(ArrayRecord file should be at least 64KB big)"
TFDS_CACHE_DAMAGE = {  # name: (damage the prepared folder (or patch), exit code, text in stdout or stderr)
    "arrays cache garbage": (lambda d, mp: (d / "arrays-train.npz").write_bytes(b"PK\x03\x04garbage"), 0, ""),
    "array_record cut short": (_cut_test_records, 0, f"was damaged {SHORT}; preparing it again"),
    "dataset_info.json garbage": (
        lambda d, mp: (d / "dataset_info.json").write_text("{garbage"), 0, "preparing it again"),
    "unreadable anew": (lambda d, mp: mp.setattr("lenet_jax.mnist_idx._split_arrays", _unreadable), 2,
        f"cannot be read {SHORT}, even prepared anew: delete it"),
    "disk full while preparing": (None, 4, "to the tfds cache"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TFDS_CACHE_DAMAGE))
def test_fuzz_faults_tfds_cache(capsys, monkeypatch, tmp_path, run, data, case):
    """A damaged tfds cache is prepared again once; still unreadable or unwritable: one line."""
    monkeypatch.setattr(TFDS_DATA_DIR, str(tmp_path / "tfds"))
    argv = train_argv(run, data)
    damage, code, message = TFDS_CACHE_DAMAGE[case]
    if damage is None:

        def full(self, *args, **kwargs):
            raise RuntimeError("write() failed: No space left on device; writing x.array_record")

        adapter = "tensorflow_datasets.core.file_adapters.ArrayRecordFileAdapter"
        monkeypatch.setattr(f"{adapter}.write_examples", classmethod(full))
        check(capsys, "train.py", argv, code, message, unchanged=[run], absent=[tmp_path / "tfds"])
        return
    run_ok(capsys, "train.py", *argv)  # prepares the cache
    (prepared,) = (tmp_path / "tfds" / "mnist_idx").glob("idx_*/1.0.0")
    damage(prepared, monkeypatch)
    if code:
        check(capsys, "train.py", argv, code, message, unchanged=[run])
        return
    assert message in run_ok(capsys, "train.py", *argv)
    assert "preparing it again" not in run_ok(capsys, "train.py", *argv)  # repaired


def test_fuzz_faults_report_writes(capsys, monkeypatch, tmp_path, run, data):
    """evaluate.py --report: a full disk, a report folder that is a file."""
    argv, file = ["--workdir", run, "--data-dir", data, "--report"], _workdir("file", run, tmp_path)
    check(capsys, "evaluate.py", [*argv, file], 2, "cannot create the report folder", unchanged=[run, file])
    _writes_fail(r"\.png$", errno.ENOSPC)(monkeypatch)
    message = "curves.png (No space left on device): the command stopped there; free some space"
    check(capsys, "evaluate.py", [*argv, tmp_path / "report"], 4, message, unchanged=[run])


# ---- beyond one-liners ----
def test_resume_after_a_truncated_metrics_log_equals_an_uninterrupted_run(capsys, tmp_path, data):
    """Issue 16: a metrics.jsonl cut mid-line is repaired on resume; the run ends as an uninterrupted one."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    out = run_ok(capsys, "train.py", *train_argv(straight, data, "--epochs", "3"))
    assert "sigmoid plateau" not in out  # smoke: Flax's init, no plateau
    run_ok(capsys, "train.py", *train_argv(cut, data))
    _metrics(cut).write_bytes(_metrics(cut).read_bytes()[:-40])
    out = run_ok(capsys, "train.py", *train_argv(cut, data, "--epochs", "3"))
    assert "was damaged or not this project's" in out
    key = operator.itemgetter("epoch", "step", "test_accuracy", "test_total_loss", "train_loss")
    assert list(map(key, read_metrics(cut))) == list(map(key, read_metrics(straight)))  # epochs 1, 2, 3


@pytest.mark.e2e
def test_two_sigterms_during_a_save_stop_in_one_line_and_resume(tmp_path, data):
    """A real process, SIGTERM twice inside epoch 2's save: one line, exit 143, epoch 1 kept, resumes."""
    argv = [*TRAIN, "--epochs", "2", "--workdir", tmp_path / "run", "--data-dir", data]
    stopped = start_python(Path(__file__).parent / "helpers/signal_self.py", "SIGTERM", "save-twice:2", *argv)
    _, err = stopped.communicate(timeout=300)
    assert stopped.returncode == 128 + signal.SIGTERM, err
    assert err == (
        "stopped: SIGTERM received twice: stopped at once in epoch 2 (its checkpoint was not written); "
        "rerun the same command to resume from the checkpoint of epoch 1\n"
    )
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1"]
    resumed = start_python(REPO_ROOT / "scripts" / "train.py", *argv)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and err == "", err
    assert "Resuming from the checkpoint of epoch 1" in out


def test_a_recipe_run_tells_its_plateau_and_the_api_logs_no_library_warnings(
    capsys, caplog, monkeypatch, tmp_path, run, data
):
    """The recipe's plateau told once; the API logs none of tfds's or orbax's expected warnings."""
    argv = [*TRAIN, "--preset", "recipe", "--init", "torch", "--epochs=1", "--workdir", tmp_path / "recipe"]
    assert run_ok(capsys, "train.py", *argv, "--data-dir", data).count(PLATEAU_NOTE) == 1
    previous = absl_logging.get_verbosity()  # the scripts run in this process set it to ERROR
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        monkeypatch.setattr(TFDS_DATA_DIR, str(tmp_path / "tfds"))  # prepared anew: tfds's warnings
        with caplog.at_level("WARNING", logger="absl"):
            load_dataset(make_idx_dir(tmp_path / "other", seed=1))
            load_weights(run)
    finally:
        absl_logging.set_verbosity(previous)
    assert [r.getMessage()[:80] for r in caplog.records if r.name == "absl"] == []
