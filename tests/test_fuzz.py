"""Fuzz: bad input and faults against train.py, evaluate.py and results.py, one parameterized
test per family (data, flags, checkpoints, workdir contents, faults).

Every case runs a script's main in-process, as its __main__ does, and asserts the exit code, a
single stderr line without a traceback (for failures), that every flag the line names exists
for that script, and that nothing on disk changed that should not have (snapshots of files and
bytes before and after). Successes (a repaired log, a rebuilt cache) assert what was repaired
and that nothing was lost. Tiny synthetic IDX data: the whole file runs in well under a minute.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import re
import runpy
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, make_idx_dir, start_python, write_idx

from lenet_jax import cli
from lenet_jax.workdir import read_metrics

TRAIN = ["--preset", "smoke", "--train-size", "64", "--batch-size", "32"]


# ---- helpers ----


_SCRIPTS: dict[str, Callable] = {}
_FLAGS: dict[str, set[str]] = {}


def script_main(name: str):
    if name not in _SCRIPTS:
        _SCRIPTS[name] = runpy.run_path(str(REPO_ROOT / "scripts" / name))["main"]
    return _SCRIPTS[name]


def script_flags(name: str) -> set[str]:
    """The options a script accepts, read from its --help."""
    if name not in _FLAGS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            script_main(name)(["--help"])  # the options part of the help reads the same whatever prog is
        _FLAGS[name] = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.getvalue()))
    return _FLAGS[name]


def assert_flags_exist(script: str, message: str, argv=()) -> None:
    """Every --flag a message names is one of the script it names ("evaluate.py --epoch 1"),
    else of the script that printed it (or one the user gave, quoted back)."""
    named = re.compile(r"(\w+\.py)((?: --[a-z][\w-]*(?: [^\s;,()]+)?)+)")
    for other, flags in named.findall(message):
        for flag in re.findall(r"--[a-z][\w-]*", flags):
            assert flag in script_flags(other), f"{other} has no {flag}: {message}"
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", named.sub("", message)):
        given = flag in map(str, argv)
        assert given or flag in script_flags(script), f"{script} has no {flag}: {message}"


def run_cli(capsys, script: str, *argv) -> tuple[int, str, str]:
    """scripts/SCRIPT's main with argv, in-process, as its __main__ runs it."""
    program = sys.argv[0]
    sys.argv[0] = str(REPO_ROOT / "scripts" / script)  # argparse names the script by it
    try:
        code = cli.run(script_main(script), [str(a) for a in argv])
    finally:
        sys.argv[0] = program
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(root: Path) -> dict[str, object]:
    """Every path under root with its bytes (None for a folder, the target for a link)."""
    root = Path(root)
    if root.is_symlink():
        return {".": os.readlink(root)}
    if not root.exists():
        return {}
    if root.is_file():
        return {".": _contents(root)}
    tree: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        tree[key] = os.readlink(path) if path.is_symlink() else None if path.is_dir() else _contents(path)
    return tree


def _contents(path: Path) -> object:
    """A file's bytes; its kind and size for a FIFO or a file too large to read (a sparse 4 GiB)."""
    info = path.stat()
    if not path.is_file() or info.st_size > 2**26:
        return ("not read", info.st_mode, info.st_size)
    return path.read_bytes()


def assert_one_line(err: str, code: int, expected_code: int, message: str) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith(("error: ", "stopped: ")), err
    assert message in err, err


def check(capsys, script, argv, code, message, unchanged=(), absent=()):
    """Runs the script; asserts the one line, and that `unchanged` paths are byte for byte as
    they were and `absent` ones were not created. Returns (out, err)."""
    before = {path: snapshot(path) for path in unchanged}
    got, out, err = run_cli(capsys, script, *argv)
    assert_one_line(err, got, code, message)
    assert_flags_exist(script, err, argv)
    for path in unchanged:
        assert snapshot(path) == before[path], f"{path} changed"
    for path in absent:
        assert not os.path.lexists(path), f"{path} was left behind"
    return out, err


def fail_writes(monkeypatch, pattern: str, code: int) -> None:
    """open() for writing of a path matching `pattern` raises OSError(code): a full disk or a
    denied write, as root cannot be denied by permission bits."""
    original = builtins.open

    def failing(file, mode="r", *args, **kwargs):
        if (
            isinstance(file, (str, os.PathLike))
            and re.search(pattern, os.fspath(file))
            and set(mode) & set("wax+")
        ):
            raise OSError(code, os.strerror(code), os.fspath(file))
        return original(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing)
    monkeypatch.setattr(io, "open", failing)


def tfds_data_dir(monkeypatch, folder: Path) -> None:
    """tfds prepares datasets in `folder` (it reads $TFDS_DATA_DIR once, when imported)."""
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(folder))


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
    code = cli.run(
        script_main("train.py"), [*TRAIN, "--epochs", "2", "--workdir", str(workdir), "--data-dir", str(data)]
    )
    assert code == 0
    return workdir


@pytest.fixture
def run(trained_once, tmp_path) -> Path:
    return Path(shutil.copytree(trained_once, tmp_path / "run", symlinks=True))


def train_argv(workdir, data, *more) -> list:
    return [*TRAIN, "--epochs", "2", "--workdir", workdir, "--data-dir", data, *more]


# ---- family: data ----


def _replace_gz(folder: Path, stem: str, content: bytes, compress: bool = False) -> None:
    (folder / f"{stem}.gz").unlink()
    (folder / (f"{stem}.gz" if compress else stem)).write_bytes(content)


DATA_CASES = {
    # name: (damage the data folder, extra flags, message)
    "missing file": (
        lambda d: (d / "train-labels-idx1-ubyte.gz").unlink(),
        [],
        "has no train-labels-idx1-ubyte[.gz]",
    ),
    "wrong magic": (
        lambda d: write_idx(d / "train-images-idx3-ubyte", np.zeros((96, 28, 28), np.uint8), 0x801),
        [],
        "has magic number 0x00000801, expected 0x00000803",
    ),
    "truncated gzip": (
        lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(
            (d / "t10k-images-idx3-ubyte.gz").read_bytes()[:300]
        ),
        [],
        "the file is damaged, download it again",
    ),
    "not gzip at all": (
        lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(b"\x00" * 64),
        [],
        "the file is damaged, download it again",
    ),
    "empty file": (lambda d: _replace_gz(d, "t10k-labels-idx1-ubyte", b""), [], "not even a header"),
    "header promises more": (
        lambda d: _replace_gz(
            d, "t10k-images-idx3-ubyte", np.asarray([0x803, 50, 28, 28], ">u4").tobytes() + bytes(784)
        ),
        [],
        "its header promises 50 images but it holds 1",
    ),
    "counts disagree": (
        lambda d: write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(39, np.uint8), 0x801),
        [],
        "has 40 images but t10k-labels-idx1-ubyte.gz has 39 labels",
    ),
    "not 28x28": (
        lambda d: write_idx(d / "train-images-idx3-ubyte", np.zeros((96, 32, 32), np.uint8), 0x803),
        [],
        "holds 32x32 images, expected 28x28",
    ),
    "label out of range": (
        lambda d: write_idx(d / "train-labels-idx1-ubyte", np.full(96, 10, np.uint8), 0x801),
        [],
        "has label 10 at index 0, outside 0-9",
    ),
    "labels file as images": (
        lambda d: shutil.copy(d / "train-labels-idx1-ubyte.gz", d / "train-images-idx3-ubyte.gz"),
        [],
        "expected 0x00000803",
    ),
    "0 test images": (
        lambda d: (
            write_idx(d / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8), 0x803),
            write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8), 0x801),
        ),
        [],
        "t10k-images-idx3-ubyte.gz holds no images",
    ),
    "0 training images": (
        lambda d: (
            write_idx(d / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8), 0x803),
            write_idx(d / "train-labels-idx1-ubyte", np.zeros(0, np.uint8), 0x801),
        ),
        [],
        "train-images-idx3-ubyte.gz holds no images",
    ),
    "--train-size above the split": (
        lambda d: None,
        ["--train-size", "1000"],
        "--train-size 1000 is larger than",
    ),
    "--validation-size takes all": (lambda d: None, ["--validation-size", "96"], "leaves no training images"),
    "--batch-size above the split": (
        lambda d: None,
        ["--batch-size", "1000000000"],
        "--batch-size 1000000000 is larger than the 64 training images: use 64 or less",
    ),
    "folder missing": (lambda d: shutil.rmtree(d), [], "does not exist: pass --data-dir"),
    "folder is a file": (lambda d: (shutil.rmtree(d), d.write_text("x")), [], "is not a directory"),
    "folder is a symlink loop": (lambda d: (shutil.rmtree(d), d.symlink_to(d)), [], "cannot be resolved"),
    "folder empty": (lambda d: [p.unlink() for p in d.iterdir()], [], "has no train-images-idx3-ubyte[.gz]"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_fuzz_data(capsys, tmp_path, case):
    damage, flags, message = DATA_CASES[case]
    folder = make_idx_dir(tmp_path / "data")
    damage(folder)
    workdir = tmp_path / "new" / "run"
    check(
        capsys,
        "train.py",
        [*TRAIN, "--workdir", workdir, "--data-dir", folder, *flags],
        2,
        message,
        unchanged=[folder],
        absent=[tmp_path / "new"],  # the workdir the run would have created
    )


def test_fuzz_data_environment_and_offline(capsys, tmp_path, monkeypatch, run, data):
    """LENET_DATA_DIR pointing nowhere; no data folder at all, offline; evaluate.py with bad
    data (its workdir untouched)."""
    monkeypatch.setenv("LENET_DATA_DIR", str(tmp_path / "nowhere"))
    check(
        capsys,
        "train.py",
        [*TRAIN, "--workdir", tmp_path / "w1"],
        2,
        "(or LENET_DATA_DIR)",
        absent=[tmp_path / "w1"],
    )

    monkeypatch.delenv("LENET_DATA_DIR")
    tfds_data_dir(monkeypatch, tmp_path / "tfds")

    def offline(address, *args, **kwargs):
        raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))

    monkeypatch.setattr(socket, "create_connection", offline)
    out, _ = check(
        capsys,
        "train.py",
        [*TRAIN, "--workdir", tmp_path / "w2"],
        2,
        "offline? pass --data-dir DIR",
        absent=[tmp_path / "w2", tmp_path / "tfds"],
    )
    assert "Downloading and preparing" not in out and "Preparing" not in out
    check(
        capsys,
        "evaluate.py",
        ["--workdir", run, "--data-dir", tmp_path / "nowhere"],
        2,
        "does not exist",
        unchanged=[run],
    )


# ---- family: flags ----

FLAG_CASES = {
    # name: (script, argv, message)
    "seed too large": ("train.py", ["--seed", "99999999999999999999999"], "--seed must fit in 64 bits"),
    "seed too small": ("train.py", ["--seed", "-99999999999999999999999"], "--seed must fit in 64 bits"),
    "seed not a number": ("train.py", ["--seed", "1e3"], "expected int, got '1e3'"),
    "lr inf": ("train.py", ["--lr", "inf"], "--lr must be a finite number, not inf"),
    "lr nan": ("train.py", ["--lr", "nan"], "--lr must be a finite number, not nan"),
    "lr zero": ("train.py", ["--lr", "0"], "--lr must be greater than 0"),
    "lr beyond float32 (no numpy warnings first)": (
        "train.py",
        ["--lr", "1e308"],
        "--lr must be at most 3.4e+38 (a float32), not 1e+308",
    ),
    "rotate beyond float32": ("train.py", ["--augment-rotate=1e39"], "--augment-rotate must be at most"),
    "epochs beyond the bound": ("train.py", ["--epochs", "1000000000000"], "--epochs must be at most 10,000"),
    "weight decay inf": ("train.py", ["--weight-decay", "inf"], "--weight-decay must be a finite number"),
    "translate inf": (
        "train.py",
        ["--augment-translate", "inf"],
        "--augment-translate must be a finite number",
    ),
    "momentum 1": ("train.py", ["--momentum", "1"], "--momentum must be in [0, 1)"),
    "label smoothing 1": ("train.py", ["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    "ema decay -1": ("train.py", ["--ema-decay", "-1"], "--ema-decay must be in [0, 1)"),
    "grad clip -1": ("train.py", ["--grad-clip", "-1"], "--grad-clip must be greater than 0"),
    "epochs 0": ("train.py", ["--epochs", "0"], "--epochs must be at least 1"),
    "epochs 1.5": ("train.py", ["--epochs", "1.5"], "expected int, got '1.5'"),
    "batch size -1": ("train.py", ["--batch-size", "-1"], "--batch-size must be at least 1"),
    "eval batch size 0": ("train.py", ["--eval-batch-size", "0"], "--eval-batch-size must be at least 1"),
    "speed": ("train.py", ["--speed", "fastest"], "--speed must be one of auto, plain"),
    "train size 0": ("train.py", ["--train-size", "0"], "--train-size must be at least 1"),
    "keep 0": ("train.py", ["--keep", "0"], "--keep must be at least 1"),
    "optimizer": ("train.py", ["--optimizer", "adamax2"], "--optimizer must be one of sgd, momentum"),
    "activation": ("train.py", ["--activation", "gelu"], "--activation must be one of sigmoid, tanh, relu"),
    "preset": ("train.py", ["--preset", "turbo"], "unknown preset 'turbo'"),
    "unknown flag": ("train.py", ["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    "force alone": ("train.py", ["--force"], "--force only goes with --restart"),
    "distributed with coordinator": (
        "train.py",
        ["--distributed", "--coordinator", "h:1"],
        "--distributed takes no --coordinator",
    ),
    "process id alone": ("train.py", ["--process-id", "1"], "give all of --coordinator, --num-processes"),
    "num processes 0": (
        "train.py",
        ["--coordinator", "localhost:1234", "--num-processes", "0", "--process-id", "0"],
        "--num-processes must be at least 1",
    ),
    "process id out of range": (
        "train.py",
        ["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "5"],
        "--process-id must be in 0..1, not 5",
    ),
    "coordinator without port": (
        "train.py",
        ["--coordinator", "notahost", "--num-processes", "1", "--process-id", "0"],
        "--coordinator must be HOST:PORT",
    ),
    "coordinator port 70000": (
        "train.py",
        ["--coordinator", "localhost:70000", "--num-processes", "1", "--process-id", "0"],
        "--coordinator must be HOST:PORT with a port in 1-65535",
    ),
    "coordinator host unknown": (
        "train.py",
        ["--coordinator", "notahost.invalid:1234", "--num-processes", "2", "--process-id", "1"],
        "--coordinator host 'notahost.invalid' cannot be resolved",
    ),
    "evaluate without --workdir": ("evaluate.py", [], "the following arguments are required: --workdir"),
    "evaluate --epoch text": (
        "evaluate.py",
        ["--workdir", "x", "--epoch", "last"],
        "invalid int value: 'last'",
    ),
    "evaluate --compare alone": (
        "evaluate.py",
        ["--workdir", "x", "--compare", "y"],
        "--compare only goes with --report",
    ),
    "results without workdirs": ("results.py", [], "the following arguments are required: workdirs"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_fuzz_flags(capsys, tmp_path, monkeypatch, case):
    script, argv, message = FLAG_CASES[case]
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # an unknown name, without waiting for a resolver
        if host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    workdir = ["--workdir", tmp_path / "run"] if script == "train.py" else []
    check(capsys, script, [*workdir, *argv], 2, message, unchanged=[tmp_path], absent=[tmp_path / "run"])


def test_fuzz_flags_distributed_outside_a_cluster(capsys, tmp_path):
    """--distributed where no cluster is detected: one line naming the flags to pass instead
    (jax's CPU collectives setting is put back: the process stays single-process)."""
    import jax

    previous = jax.config.jax_cpu_collectives_implementation
    try:
        check(
            capsys,
            "train.py",
            ["--workdir", tmp_path / "run", "--distributed"],
            2,
            "outside a detected cluster",
            absent=[tmp_path / "run"],
        )
    finally:
        jax.config.update("jax_cpu_collectives_implementation", previous)


# ---- family: checkpoints ----


def _meta(run: Path, epoch: int) -> Path:
    return run / "checkpoints" / str(epoch) / "meta" / "metadata"


def _edit_meta(run: Path, epoch: int, edit: Callable[[dict], object]) -> None:
    meta = json.loads(_meta(run, epoch).read_text())
    _meta(run, epoch).write_text(json.dumps(edit(meta)))


def _truncate_item(run: Path, epoch: int, item: str) -> None:
    for path in (run / "checkpoints" / str(epoch) / item).rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@dataclass
class Case:
    damage: Callable[[Path], object]
    script: str
    argv: list = field(default_factory=list)
    code: int = 2
    message: str = ""


def _evaluate(*more):
    return ["--workdir", "{run}", "--data-dir", "{data}", *more]


def _resume(*more, epochs=3):
    return [*TRAIN, "--epochs", str(epochs), "--workdir", "{run}", "--data-dir", "{data}", *more]


CHECKPOINT_CASES = {
    "params truncated, evaluate": Case(
        lambda r: _truncate_item(r, 2, "params"),
        "evaluate.py",
        _evaluate(),
        message="the checkpoint of epoch 2 is damaged",
    ),
    "params truncated, resume": Case(
        lambda r: _truncate_item(r, 2, "params"),
        "train.py",
        _resume(),
        message="the checkpoint of epoch 2 is damaged",
    ),
    "params missing": Case(
        lambda r: shutil.rmtree(r / "checkpoints/2/params"),
        "evaluate.py",
        _evaluate(),
        message="no params in it",
    ),
    "train_state missing, resume": Case(
        lambda r: shutil.rmtree(r / "checkpoints/2/train_state"),
        "train.py",
        _resume(),
        message="no train_state in it",
    ),
    "meta garbage": Case(
        lambda r: _meta(r, 2).write_text("{not json"), "evaluate.py", _evaluate(), message="is damaged"
    ),
    "meta a list": Case(
        lambda r: _meta(r, 2).write_text("[1, 2]"), "evaluate.py", _evaluate(), message="is damaged"
    ),
    "meta without config": Case(
        lambda r: _edit_meta(r, 2, lambda m: {k: v for k, v in m.items() if k != "config"}),
        "evaluate.py",
        _evaluate(),
        message="its meta lacks the config or the step",
    ),
    "meta without step, resume": Case(
        lambda r: _edit_meta(r, 2, lambda m: {k: v for k, v in m.items() if k != "step"}),
        "train.py",
        _resume(),
        message="its meta lacks the config or the step",
    ),
    "meta from a newer version": Case(
        lambda r: _edit_meta(r, 2, lambda m: {**m, "format_version": 99}),
        "evaluate.py",
        _evaluate(),
        message="has format version 99, newer than this lenet-jax reads",
    ),
    "meta config invalid": Case(
        lambda r: _edit_meta(r, 2, lambda m: {**m, "config": {**m["config"], "epochs": -1}}),
        "evaluate.py",
        _evaluate(),
        message="records a config this lenet-jax cannot use (epochs must be at least 1",
    ),
    "meta config from another version": Case(
        lambda r: _edit_meta(r, 2, lambda m: {**m, "config": {**m["config"], "wings": 2}}),
        "evaluate.py",
        _evaluate(),
        message="unknown config fields ['wings']",
    ),
    "epoch that does not exist": Case(
        lambda r: None, "evaluate.py", _evaluate("--epoch", "5"), message="available epochs: 1, 2"
    ),
    "only epoch 1 damaged": Case(
        lambda r: _truncate_item(r, 1, "params"),
        "evaluate.py",
        _evaluate("--epoch", "1"),
        message="no earlier epoch is there to fall back to",
    ),
    "no checkpoints": Case(
        lambda r: [shutil.rmtree(p) for p in (r / "checkpoints").iterdir()],
        "evaluate.py",
        _evaluate(),
        message="has no checkpoints: train first",
    ),
    "damaged, with a report": Case(
        lambda r: _meta(r, 2).write_text("{not json"),
        "evaluate.py",
        _evaluate("--report", "{tmp}/report"),
        message="the checkpoint of epoch 2 is damaged",
    ),
    "other settings, resume": Case(
        lambda r: None,
        "train.py",
        _resume("--optimizer", "adam"),
        message="optimizer: checkpoint 'sgd', now 'adam'",
    ),
    "restart without force": Case(
        lambda r: None, "train.py", _resume("--restart"), message="already holds checkpoints (epochs 1, 2)"
    ),
    "meta 4 GiB, sparse": Case(
        lambda r: os.truncate(_meta(r, 2), 4 * 2**30),
        "evaluate.py",
        _evaluate(),
        message="damaged (its meta/metadata is 4.0 GiB, more than 16.0 MiB)",
    ),
    "checkpoint metadata a link to /dev/zero": Case(
        lambda r: _to_dev_zero(r / "checkpoints/2/_CHECKPOINT_METADATA"),
        "evaluate.py",
        _evaluate(),
        message="damaged (its _CHECKPOINT_METADATA is not a regular file)",
    ),
    "eval batch size 10^9 in the meta, evaluate": Case(
        lambda r: _edit_meta(r, 2, lambda m: {**m, "config": {**m["config"], "eval_batch_size": 10**9}}),
        "evaluate.py",
        _evaluate(),
        code=0,
    ),
    # Not failures: an older damaged checkpoint blocks nothing; a newer one is only reported.
    "epoch 1 meta damaged, resume": Case(
        lambda r: _meta(r, 1).write_text("{not json"),
        "train.py",
        _resume(epochs=2),
        code=0,
    ),
    "epoch 1 damaged, evaluate newest": Case(
        lambda r: _truncate_item(r, 1, "params"), "evaluate.py", _evaluate(), code=0
    ),
}


def _to_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def _fill(argv, **values):
    return [str(a).format(**values) for a in argv]


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_fuzz_checkpoints(capsys, tmp_path, run, data, case):
    spec = CHECKPOINT_CASES[case]
    spec.damage(run)
    argv = _fill(spec.argv, run=run, data=data, tmp=tmp_path)
    if spec.code:
        check(
            capsys, spec.script, argv, spec.code, spec.message, unchanged=[run], absent=[tmp_path / "report"]
        )
        return
    before = snapshot(run / "checkpoints")
    code, out, err = run_cli(capsys, spec.script, *argv)
    assert code == 0 and "Traceback" not in err and err.count("\n") <= 1, err
    assert snapshot(run / "checkpoints") == before
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]


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


def _kept(run: Path, before: dict[str, object]) -> None:
    """Whatever the damaged files held is still in the workdir (set aside, or in place)."""
    now = snapshot(run)
    contents = [value for value in now.values() if isinstance(value, bytes)]
    for key, value in before.items():
        if isinstance(value, bytes):
            assert value in contents, f"{key}'s bytes were lost"


REPORT_DAMAGE = ("metrics cut mid-line", "metrics a link to /dev/zero", "metrics 4 GiB, sparse")
WORKDIR_CASES = (
    [("resume", damage) for damage in LOG_DAMAGE]  # training reads (and repairs) them all
    + [("report", damage) for damage in REPORT_DAMAGE]
    + [("results", damage) for damage in LOG_DAMAGE if damage.startswith(("metrics", "config"))]
)


@pytest.mark.parametrize("command,damage", WORKDIR_CASES, ids=[f"{c}: {d}" for c, d in WORKDIR_CASES])
def test_fuzz_workdir_contents(capsys, tmp_path, run, data, damage, command):
    """A damaged or foreign log never blocks: resume repairs it (damaged file kept aside, one
    note), evaluate --report and results.py read around it (and change nothing)."""
    LOG_DAMAGE[damage](run)
    before, checkpoints = snapshot(run), snapshot(run / "checkpoints")
    if command == "resume":
        with _python_memory_below(2**26):  # never a copy of what a file claims to hold
            code, out, err = run_cli(capsys, "train.py", *train_argv(run, data))
        assert code == 0 and err == "", err
        assert [row["epoch"] for row in read_metrics(run)] == [1, 2]
        assert json.loads((run / "config.json").read_text())["config"]["seed"] == 0
        assert (run / "tensorboard").is_dir()
        assert snapshot(run / "checkpoints") == checkpoints
        _kept(run, before)
    else:
        argv = ["--workdir", run, "--data-dir", data, "--report", tmp_path / "report"]
        with _python_memory_below(2**26):
            code, out, err = run_cli(
                capsys,
                "evaluate.py" if command == "report" else "results.py",
                *(argv if command == "report" else [run]),
            )
        assert code == 0 and "Traceback" not in err, err
        assert len([line for line in err.splitlines() if not line.startswith("Report for")]) <= 1, err
        assert snapshot(run) == before  # read only
        if command == "report":
            assert (tmp_path / "report" / "curves.png").is_file()
        else:
            assert json.loads(out.splitlines()[0])["epochs"] == 2


@contextlib.contextmanager
def _python_memory_below(limit: int):
    """Python's allocations inside the block peak below `limit` bytes (tracemalloc: the reads of
    the logs; the process's RSS is measured by test_unbounded_logs_keep_a_small_process)."""
    import tracemalloc

    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"Python allocated {peak / 2**20:.0f} MiB"


def _loop(tmp: Path) -> Path:
    (tmp / "loop").symlink_to(tmp / "loop")
    return tmp / "loop"


def _file(tmp: Path) -> Path:
    (tmp / "file").write_text("x")
    return tmp / "file"


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


WORKDIR_FAILURES = {
    # name: (the workdir to pass, from (the trained run, tmp_path); script; more argv; message)
    "restart --force, bad data": (
        lambda r, t: r,
        "train.py",
        ["--restart", "--force", "--data-dir", "{tmp}/nonexistent"],
        "does not exist",
    ),
    "restart --force, 0 images": (
        lambda r, t: r,
        "train.py",
        ["--restart", "--force", "--data-dir", "{tmp}/empty-data"],
        "holds no images",
    ),
    "restart --force, a bad flag": (
        lambda r, t: r,
        "train.py",
        ["--restart", "--force", "--lr", "inf", "--data-dir", "{data}"],
        "--lr must be",
    ),
    "symlink loop, train": (
        lambda r, t: _loop(t),
        "train.py",
        ["--data-dir", "{data}"],
        "cannot be resolved",
    ),
    "symlink loop, evaluate": (lambda r, t: _loop(t), "evaluate.py", [], "cannot be resolved"),
    "symlink loop, results": (lambda r, t: _loop(t), "results.py", [], "not the workdir of"),
    "a file": (lambda r, t: _file(t), "train.py", ["--data-dir", "{data}"], "is not writable"),
    "under a file": (lambda r, t: _file(t) / "run", "train.py", ["--data-dir", "{data}"], "is not writable"),
    "empty, evaluate": (lambda r, t: _empty(t), "evaluate.py", [], "does not exist: pass the --workdir"),
    "empty, results": (lambda r, t: _empty(t), "results.py", [], "not the workdir of a training run"),
    "missing, results": (lambda r, t: t / "nowhere", "results.py", [], "not the workdir of a training run"),
}


@pytest.mark.parametrize("case", list(WORKDIR_FAILURES))
def test_fuzz_workdir_refusals(capsys, tmp_path, run, data, case):
    """What cannot be used is refused in one line, and the run there is left as it was."""
    prepare, script, extra, message = WORKDIR_FAILURES[case]
    empty = make_idx_dir(tmp_path / "empty-data", n_train=0, n_test=0)
    workdir = prepare(run, tmp_path)
    extra = _fill(extra, tmp=tmp_path, data=data)
    if script == "train.py":
        argv = [*TRAIN, "--epochs", "2", "--workdir", workdir, *extra]
    elif script == "evaluate.py":
        argv = ["--workdir", workdir, "--data-dir", data, *extra]
    else:
        argv = [workdir]
    check(capsys, script, argv, 2, message, unchanged=[run, empty])


WORKDIR_IN_USE = {
    # name: (script, argv, exit code, message); the run's workdir held by another process
    "a second trainer": ("train.py", train_argv("{run}", "{data}", "--epochs", "3"), 2, "is in use by PID"),
    "restart --force": ("train.py", train_argv("{run}", "{data}", "--restart", "--force"), 2, "is in use by"),
    "convert into it": (
        "convert.py",
        ["from-torch", REPO_ROOT / "tests/fixtures/torch_tutorial/net_3.pth", "--workdir", "{run}"],
        2,
        "wait until that run ends (or stop it), or pass another --workdir",
    ),
    "evaluate reads it": ("evaluate.py", _evaluate(), 0, ""),
    "a killed holder's lock": ("train.py", train_argv("{run}", "{data}", "--epochs", "3"), 0, ""),
}


@pytest.mark.parametrize("case", list(WORKDIR_IN_USE))
def test_fuzz_workdir_in_use(capsys, tmp_path, run, data, case):
    """One writer per workdir: while a process holds the lock, a trainer, a --restart or a
    convert into it is refused at once and changes nothing; readers go on; the lock of a
    process that was killed blocks nothing (the OS released it)."""
    import subprocess

    from lenet_jax.workdir import workdir_lock

    script, argv, code, message = WORKDIR_IN_USE[case]
    if script == "convert.py":  # a workdir a convert would take: an empty one
        run = tmp_path / "new"
        run.mkdir()
    argv = _fill(argv, run=run, data=data)
    if case == "a killed holder's lock":
        hold = f"import os, fcntl; fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
        hold += "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'PID 1 on elsewhere'); os.kill(os.getpid(), 9)"
        assert subprocess.run([sys.executable, "-c", hold]).returncode == -signal.SIGKILL
        got, out, err = run_cli(capsys, script, *argv)
        assert got == 0 and err == "", err
        assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]
        return
    with workdir_lock(run):
        if code:
            _, err = check(capsys, script, argv, code, message, unchanged=[run])
            assert f"PID {os.getpid()} on {socket.gethostname()}" in err  # the holder
        else:
            got, out, err = run_cli(capsys, script, *argv)
            assert got == 0 and err == "" and json.loads(out)["epoch"] == 2, err
    assert not (run / ".lock").exists()  # removed by its holder


def test_a_half_written_epoch_is_never_read(capsys, run, data):
    """orbax writes an epoch into a temporary folder renamed when complete: a reader while
    training sees the epochs before it, never a half-written one."""
    partial = run / "checkpoints" / "3.orbax-checkpoint-tmp-1234"
    shutil.copytree(run / "checkpoints" / "2", partial)
    _truncate_item(run, partial.name, "params")
    before = snapshot(run)
    code, out, err = run_cli(capsys, "evaluate.py", "--workdir", run, "--data-dir", data)
    assert code == 0 and err == "" and json.loads(out)["epoch"] == 2, err
    assert snapshot(run) == before  # a reader cleans nothing up: the writer's folder stays


def test_unbounded_logs_keep_a_small_process(run, tmp_path):
    """A 4 GiB sparse metrics.jsonl, config.json a link to /dev/zero, an epoch's meta a 4 GiB
    sparse file: results.py reads the run around them and its whole process peaks below
    300 MB of RSS (it grew until killed, 6 GiB, before)."""
    import subprocess

    os.truncate(_metrics(run), 4 * 2**30)
    _to_dev_zero(run / "config.json")
    os.truncate(_meta(run, 1), 4 * 2**30)
    # VmHWM: this process's peak RSS (ru_maxrss would keep the forking pytest's across exec)
    measure = (
        "import re, runpy, sys; from lenet_jax import cli; "
        "code = cli.run(runpy.run_path(sys.argv[1])['main'], sys.argv[2:]); "
        "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
        "open(sys.argv[2] + '.rss', 'w').write(peak); sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", measure, REPO_ROOT / "scripts/results.py", run],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["epochs"] == 2  # epoch 2 from its checkpoint
    peak = int(Path(f"{run}.rss").read_text()) / 1024  # kB
    assert peak < 300, f"peak RSS {peak:.0f} MB"


@pytest.mark.parametrize("value,message", [("abc", "invalid int value: 'abc'"), ("0", "must be 1 to 1024")])
def test_fuzz_launch_flags(value, message):
    """launch.py's errors in one line, like the other scripts (a real process: it reads sys.argv)."""
    import subprocess

    command = [
        sys.executable,
        REPO_ROOT / "scripts/launch.py",
        "--num-processes",
        value,
        "--",
        "--epochs",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert_one_line(done.stderr, done.returncode, 2, message)


def test_fuzz_workdir_leftovers_of_a_crash(capsys, run, data):
    """A half-written checkpoint (a crash mid-save) is cleaned up; a folder of the user's in
    checkpoints/ is left alone; the run resumes."""
    partial = run / "checkpoints" / "3.orbax-checkpoint-tmp-1234"
    shutil.copytree(run / "checkpoints" / "2", partial)
    (run / "checkpoints" / "notes").mkdir()
    (run / "checkpoints" / "notes" / "mine.txt").write_text("mine")
    code, out, err = run_cli(capsys, "train.py", *train_argv(run, data))
    assert code == 0 and err == "", err
    assert not partial.exists() and (run / "checkpoints" / "notes" / "mine.txt").read_text() == "mine"


# ---- family: faults ----


def _orbax_fault(monkeypatch, error: BaseException, item: str = "meta") -> None:
    """The write of a checkpoint item (meta: JSON; params: arrays) raises `error`."""
    import orbax.checkpoint as ocp

    handler = ocp.JsonCheckpointHandler if item == "meta" else ocp.StandardCheckpointHandler
    original = handler.async_save

    async def async_save(self, directory, *args, **kwargs):
        if "3.orbax-checkpoint-tmp" in str(directory) and (item == "meta" or "params" in str(directory)):
            raise error
        return await original(self, directory, *args, **kwargs)

    monkeypatch.setattr(handler, "async_save", async_save)


def _no_room(monkeypatch) -> None:
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 300_000, 300_000))


TENSORSTORE_ENOSPC = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "conv1.kernel/0" in OCDBT database: Failed to write 145499 bytes: '
    "No space left on device [os_error_code='28']"
)

FAULT_CASES = {
    # name: (inject the fault, exit code, message); each hits the resume of a 2-epoch run to 3
    "checkpoint save, disk full": (
        lambda mp: _orbax_fault(mp, OSError(errno.ENOSPC, "No space left on device")),
        4,
        "(No space left on device): the checkpoint of epoch 2 is intact and the run resumes from it; "
        "free some space",
    ),
    "checkpoint save, permission denied": (
        lambda mp: _orbax_fault(mp, OSError(errno.EACCES, "Permission denied")),
        4,
        "(Permission denied): the checkpoint of epoch 2 is intact and the run resumes from it; "
        "fix the permissions",
    ),
    "checkpoint arrays, disk full (tensorstore)": (
        lambda mp: _orbax_fault(mp, TENSORSTORE_ENOSPC, "params"),
        4,
        "(No space left on device): the checkpoint of epoch 2",
    ),
    "checkpoint, no room left": (_no_room, 4, "MiB free, the checkpoint of epoch 3 needs about"),
    "checkpoint, second Ctrl-C": (
        lambda mp: _orbax_fault(mp, KeyboardInterrupt()),
        130,
        "stopped at once in epoch 3 (its checkpoint was not written); rerun the same command to resume "
        "from the checkpoint of epoch 2",
    ),
    "metrics append, disk full": (
        lambda mp: fail_writes(mp, r"metrics\.jsonl$", errno.ENOSPC),
        4,
        "the checkpoint of epoch 3 is intact",
    ),
    "metrics append, permission denied": (
        lambda mp: fail_writes(mp, r"metrics\.jsonl$", errno.EACCES),
        4,
        "metrics.jsonl (Permission denied)",
    ),
    "metrics rewrite, disk full": (
        lambda mp: fail_writes(mp, r"metrics\.jsonl\.tmp$", errno.ENOSPC),
        4,
        "the checkpoint of epoch 2 is intact",
    ),
    "config write, disk full": (
        lambda mp: fail_writes(mp, r"config\.json\.tmp$", errno.ENOSPC),
        4,
        "config.json.tmp (No space left on device)",
    ),
    "config write, read-only": (
        lambda mp: fail_writes(mp, r"config\.json\.tmp$", errno.EROFS),
        4,
        "use a writable file system",
    ),
    "tensorboard, disk full": (
        lambda mp: fail_writes(mp, r"tfevents", errno.ENOSPC),
        4,
        "the checkpoint of epoch 2 is intact",
    ),
    "workdir probe, disk full": (
        lambda mp: fail_writes(mp, r"\.write-test-", errno.ENOSPC),
        4,
        "cannot be written; free some space",
    ),
    "device out of memory, training": (
        lambda mp: mp.setattr("lenet_jax.speed.train_call", lambda *a: _device_oom),
        5,
        "the device ran out of memory (asked for 85.9 GB): lower --batch-size (now 32)",
    ),
    "device out of memory, evaluation": (
        lambda mp: mp.setattr("lenet_jax.evaluation.Evaluator._on_device", _device_oom),
        5,
        "the device ran out of memory (asked for 85.9 GB): lower --eval-batch-size (now 64)",
    ),
    "setting a damaged log aside, denied": (
        lambda mp: (
            mp.setattr(os, "replace", _failing_replace(os.replace, r"metrics\.jsonl$", errno.EACCES)),
        ),
        4,
        "the checkpoint of epoch 2 is intact and the run resumes from it",
    ),
}


def _device_oom(*args, **kwargs):
    """XLA's own RESOURCE_EXHAUSTED: a 64 GiB buffer, which the test machine cannot give."""
    import jax
    import jax.numpy as jnp

    return jax.jit(lambda: jnp.zeros(2**36 + 2**34, jnp.uint8))()


def _failing_replace(original, pattern, code):
    def replace(src, dst, *args, **kwargs):
        if re.search(pattern, os.fspath(src)):
            raise OSError(code, os.strerror(code), os.fspath(src))
        return original(src, dst, *args, **kwargs)

    return replace


@pytest.mark.parametrize("case", list(FAULT_CASES))
def test_fuzz_faults(capsys, monkeypatch, tmp_path, run, data, case):
    """A full disk, a denied write, a second Ctrl-C while saving epoch 3 of a 2-epoch run: one
    line saying what is intact; the checkpoints before are untouched, no half-written one is
    left, and rerunning the same command resumes and completes the run."""
    inject, code, message = FAULT_CASES[case]
    argv = [*TRAIN, "--epochs", "3", "--workdir", run, "--data-dir", data]
    if case == "workdir probe, disk full":
        argv[argv.index(run)] = tmp_path / "new" / "run"
    if case == "setting a damaged log aside, denied":
        _metrics(run).write_text("42\n")
    checkpoints = snapshot(run / "checkpoints")
    with monkeypatch.context() as patch:
        inject(patch)
        got, _, err = run_cli(capsys, "train.py", *argv)
    assert_one_line(err, got, code, message)
    assert_flags_exist("train.py", err)
    if case == "workdir probe, disk full":
        assert not (tmp_path / "new").exists()
        return
    after = snapshot(run / "checkpoints")
    assert {k: v for k, v in after.items() if not k.startswith("3")} == checkpoints  # epochs 1-2 untouched
    assert not [k for k in after if ".orbax-checkpoint-tmp" in k]
    got, _, err = run_cli(capsys, "train.py", *argv)  # the fault is gone: the run completes
    assert got == 0 and err == "", err
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]


TFDS_CACHE_DAMAGE = {
    # name: (damage the prepared folder (or patch), expected code, text in stdout or stderr)
    "arrays cache garbage": (lambda d, mp: (d / "arrays-train.npz").write_bytes(b"PK\x03\x04garbage"), 0, ""),
    "array_record cut short": (
        lambda d, mp: [
            (p.write_bytes(p.read_bytes()[:50]), (d / "arrays-test.npz").unlink())
            for p in d.glob("*test.array_record*")
        ],
        0,
        "was damaged (ArrayRecord file should be at least 64KB big); preparing it again",
    ),
    "dataset_info.json garbage": (
        lambda d, mp: (d / "dataset_info.json").write_text("{garbage"),
        0,
        "preparing it again",
    ),
    "unreadable even prepared anew": (
        lambda d, mp: mp.setattr(
            "lenet_jax.data._split_arrays",
            lambda builder, split, *options: (_ for _ in ()).throw(
                RuntimeError("ArrayRecord file should be at least 64KB big")
            ),
        ),
        2,
        "cannot be read (ArrayRecord file should be at least 64KB big), even prepared anew: delete it",
    ),
    "disk full while preparing": (None, 4, "to the tfds cache"),
}


@pytest.mark.parametrize("case", list(TFDS_CACHE_DAMAGE))
def test_fuzz_faults_tfds_cache(capsys, monkeypatch, tmp_path, run, data, case):
    """The prepared tfds dataset is derived data: damaged, it is prepared again once; still
    unreadable, or impossible to write, one line naming the folder."""
    tfds_data_dir(monkeypatch, tmp_path / "tfds")
    argv = train_argv(run, data)
    damage, code, message = TFDS_CACHE_DAMAGE[case]
    if damage is None:
        import tensorflow_datasets as tfds

        def full(self, *args, **kwargs):
            raise RuntimeError("write() failed: No space left on device; writing x.array_record")

        monkeypatch.setattr(
            tfds.core.file_adapters.ArrayRecordFileAdapter, "write_examples", classmethod(full)
        )
        check(capsys, "train.py", argv, code, message, unchanged=[run], absent=[tmp_path / "tfds"])
        return
    assert run_cli(capsys, "train.py", *argv)[0] == 0  # prepares the cache
    (prepared,) = (tmp_path / "tfds" / "mnist_idx").glob("idx_*/1.0.0")
    damage(prepared, monkeypatch)
    if code:
        check(capsys, "train.py", argv, code, message, unchanged=[run])
        return
    got, out, err = run_cli(capsys, "train.py", *argv)
    assert got == 0 and err == "" and message in out, out + err
    assert got == 0 and run_cli(capsys, "train.py", *argv)[1].count("preparing it again") == 0  # repaired


def test_fuzz_faults_report_writes(capsys, monkeypatch, tmp_path, run, data):
    """evaluate.py --report: a full disk, a report folder that is a file."""
    (tmp_path / "file").write_text("x")
    check(
        capsys,
        "evaluate.py",
        ["--workdir", run, "--data-dir", data, "--report", tmp_path / "file"],
        2,
        "cannot create the report folder",
        unchanged=[run, tmp_path / "file"],
    )
    fail_writes(monkeypatch, r"\.png$", errno.ENOSPC)
    check(
        capsys,
        "evaluate.py",
        ["--workdir", run, "--data-dir", data, "--report", tmp_path / "report"],
        4,
        "curves.png (No space left on device): the command stopped there; free some space",
        unchanged=[run],
    )


# ---- beyond one-liners ----


def test_resume_after_a_truncated_metrics_log_equals_an_uninterrupted_run(capsys, tmp_path, data):
    """Issue 16, done when: a metrics.jsonl cut mid-line (a crash, a full disk) is repaired on
    resume, and the run ends with the same epochs, test accuracy and total loss per epoch as an
    uninterrupted one."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    code, out, _ = run_cli(capsys, "train.py", *train_argv(straight, data, "--epochs", "3"))
    assert code == 0 and "sigmoid plateau" not in out  # smoke: Flax's init, no plateau
    assert run_cli(capsys, "train.py", *train_argv(cut, data))[0] == 0
    _metrics(cut).write_bytes(_metrics(cut).read_bytes()[:-40])
    code, out, err = run_cli(capsys, "train.py", *train_argv(cut, data, "--epochs", "3"))
    assert code == 0 and err == "" and "was damaged or not this project's" in out, err

    def key(rows):
        return [
            (r["epoch"], r["step"], r["test_accuracy"], r["test_total_loss"], r["train_loss"]) for r in rows
        ]

    assert key(read_metrics(cut)) == key(read_metrics(straight))
    assert [r["epoch"] for r in read_metrics(cut)] == [1, 2, 3]


@pytest.mark.e2e
def test_two_sigterms_during_a_save_stop_in_one_line_and_resume(tmp_path, data):
    """A real process: SIGTERM twice inside epoch 2's checkpoint write. One `stopped:` line with
    the resume hint, exit 143, no orbax traceback at exit; epoch 1 intact, and the same command
    resumes."""
    helper = Path(__file__).parent / "helpers" / "signal_during_save.py"
    argv = [*TRAIN, "--epochs", "2", "--workdir", tmp_path / "run", "--data-dir", data]
    stopped = start_python(helper, "SIGTERM", 2, *argv)
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
    """The recipe's sigmoid plateau is told in one line at the start; the Python API (data,
    checkpoints) logs none of tfds's and orbax's expected warnings, as the scripts show none."""
    from absl import logging as absl_logging

    from lenet_jax.checkpoints import load_weights
    from lenet_jax.data import load_dataset
    from lenet_jax.resume import PLATEAU_NOTE

    argv = [
        *TRAIN,
        "--preset",
        "recipe",
        "--init",
        "torch",
        "--epochs",
        "1",
        "--workdir",
        tmp_path / "recipe",
    ]
    code, out, err = run_cli(capsys, "train.py", *argv, "--data-dir", data)
    assert code == 0 and err == "" and out.count(PLATEAU_NOTE) == 1
    previous = absl_logging.get_verbosity()  # the scripts run in this process set it to ERROR
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        tfds_data_dir(monkeypatch, tmp_path / "tfds")  # prepared anew: tfds's warnings
        with caplog.at_level("WARNING", logger="absl"):
            load_dataset(make_idx_dir(tmp_path / "other", seed=1))
            load_weights(run)
    finally:
        absl_logging.set_verbosity(previous)
    assert [r.getMessage()[:80] for r in caplog.records if r.name == "absl"] == []
