"""PyTorch files of the tutorial's LeNet: read without running them, imported, exported back.

The fixture (tests/fixtures/torch_tutorial, made by make_fixture.py with the tutorial's own
model and loop) holds PyTorch's accuracy and logits for its net_3.pth. Small archives in the
torch.save format are crafted here, opcode by opcode, so that no test needs PyTorch; those that
run PyTorch itself skip without it.
"""

import hashlib
import json
import os
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import chex
import numpy as np
import pytest
import safetensors.numpy
from conftest import run_cli, script_main
from PIL import Image

from lenet_jax import cli, idx
from lenet_jax.checkpoints import Checkpoints
from lenet_jax.config import Config
from lenet_jax.errors import ConversionError
from lenet_jax.evaluation import restore_params
from lenet_jax.model import model_from_config
from lenet_jax.torch_checkpoint import (
    LAYERS,
    _epoch_and_step,
    export_torch_checkpoint,
    import_torch_checkpoint,
    lenet_params_from_torch,
    read_torch_weights,
    torch_state_dict_from_lenet,
)
from lenet_jax.workdir import read_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "torch_tutorial"
NET = FIXTURE / "net_3.pth"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
TORCH_LOGITS = np.load(FIXTURE / "logits_100.npy")


# --- torch.save's format, written without torch ----------------------------------------------


@dataclass
class Module:
    """A torch.nn.Module as torch.save pickles it: its class, then its __dict__."""

    cls: str
    parameters: dict = field(default_factory=dict)
    modules: dict = field(default_factory=dict)


class TorchPickle:
    """Builds the pickle torch.save writes (protocol 2) and its storage records, op by op."""

    def __init__(self, location="cpu", byteorder="little"):
        self.out = bytearray(pickle.PROTO + b"\x02")
        self.records: dict[str, bytes] = {}
        self.location, self.byteorder = location, byteorder

    def global_(self, module, name):
        self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode()

    def value(self, v):
        out = self.out
        if isinstance(v, np.ndarray):
            self.tensor(v.reshape(-1), 0, v.shape, [int(np.prod(v.shape[i + 1 :])) for i in range(v.ndim)])
        elif isinstance(v, Module):
            self.global_(*v.cls.rsplit(".", 1))
            out += pickle.EMPTY_TUPLE + pickle.NEWOBJ
            self.value(
                {"training": False, "_parameters": v.parameters, "_buffers": {}, "_modules": v.modules}
            )
            out += pickle.BUILD
        elif isinstance(v, dict):
            self.global_("collections", "OrderedDict")
            out += pickle.EMPTY_TUPLE + pickle.REDUCE
            if v:
                out += pickle.MARK
                for key, item in v.items():
                    self.value(key)
                    self.value(item)
                out += pickle.SETITEMS
        elif isinstance(v, bool):
            out += pickle.NEWTRUE if v else pickle.NEWFALSE
        elif isinstance(v, int):
            out += pickle.BININT + struct.pack("<i", v)
        elif isinstance(v, str):
            out += pickle.BINUNICODE + struct.pack("<I", len(v.encode())) + v.encode()
        elif isinstance(v, tuple):
            out += pickle.MARK
            for item in v:
                self.value(item)
            out += pickle.TUPLE
        else:
            raise TypeError(v)

    def tensor(self, storage, offset, size, stride):
        """A float32 tensor viewing `storage` (1-D) at offset with size and stride."""
        key = str(len(self.records))
        self.records[key] = np.asarray(storage, "<f4" if self.byteorder == "little" else ">f4").tobytes()
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += pickle.MARK + pickle.MARK
        self.value("storage")
        self.global_("torch", "FloatStorage")
        self.value(key), self.value(self.location), self.value(len(storage))
        self.out += pickle.TUPLE + pickle.BINPERSID
        self.value(offset), self.value(tuple(size)), self.value(tuple(stride)), self.value(False)
        self.value({})  # backward hooks
        self.out += pickle.TUPLE + pickle.REDUCE

    def save(self, path, prefix="archive"):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"{prefix}/data.pkl", bytes(self.out + pickle.STOP))
            archive.writestr(f"{prefix}/byteorder", self.byteorder)
            for key, data in self.records.items():
                archive.writestr(f"{prefix}/data/{key}", data)
            archive.writestr(f"{prefix}/version", "3\n")
        return path


def torch_save(path, obj, **options):
    """What torch.save(obj, path) writes for dicts of float32 tensors (and plain values)."""
    writer = TorchPickle(**options)
    writer.value(obj)
    return writer.save(path)


NN = "torch.nn.modules."
TUTORIAL_MODULES = [  # MyLeNet.model's layers, as in the fixture's model.py
    "OWNER.Reshape", NN + "conv.Conv2d", NN + "activation.Sigmoid", NN + "pooling.AvgPool2d",
    NN + "conv.Conv2d", NN + "activation.Sigmoid", NN + "pooling.AvgPool2d", NN + "flatten.Flatten",
    NN + "linear.Linear", NN + "linear.Linear", NN + "linear.Linear",
]  # fmt: skip


def tutorial_module(state, owner="model", change=None):
    """The whole MyLeNet holding `state`, its classes from `owner`; change: {index: class}."""
    layers = {}
    for i, cls in enumerate(TUTORIAL_MODULES):
        cls = (change or {}).get(i, cls).replace("OWNER", owner)
        layers[str(i)] = Module(
            cls, {n: state[f"model.{i}.{n}"] for n in ("weight", "bias") if f"model.{i}.{n}" in state}
        )
    return Module(f"{owner}.MyLeNet", modules={"model": Module(NN + "container.Sequential", modules=layers)})


def random_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    state = {}
    for _, prefix, shape in LAYERS:
        state[f"{prefix}.weight"] = rng.normal(size=shape).astype(np.float32)
        state[f"{prefix}.bias"] = rng.normal(size=shape[:1]).astype(np.float32)
    return state


def refusal(tmp_path, capsys, path, *flags):
    """Runs from-torch on path: exit 2, one line, no workdir made; returns the line."""
    code, err = run_cli(capsys, "convert.py", "from-torch", path, "--workdir", tmp_path / "run", *flags)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    return err


# --- the fixture, imported once ---------------------------------------------------------------


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tutorial") / "run"
    result = import_torch_checkpoint(NET, workdir)
    assert result.epoch == 3 and result.step == 3 * 938
    return workdir


@pytest.fixture(scope="module")
def first_test_images(mnist_dir):
    images, labels = idx.read_pair(*idx.split_paths(mnist_dir, "test"))
    return images[:100], labels[:100]


def assert_logits_close(ours, theirs):
    """Within 1e-4 relative: each logit's error against the largest logit of its image."""
    scale = np.abs(theirs).max(axis=1, keepdims=True)
    assert np.max(np.abs(ours - theirs) / scale) < 1e-4


def test_the_imported_tutorial_model_evaluates_as_in_pytorch(imported, mnist_dir, first_test_images, capsys):
    code = cli.run(script_main("evaluate.py"), ["--workdir", str(imported), "--data-dir", str(mnist_dir)])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["epoch"] == 3 and result["count"] == EXPECTED["test_count"] == 10_000
    assert abs(result["correct"] - EXPECTED["test_correct"]) <= 2
    np.testing.assert_allclose(result["test_total_loss"], EXPECTED["test_total_loss"], rtol=1e-4)
    restored = restore_params(imported)
    images = first_test_images[0].astype(np.float32) / 255
    logits = model_from_config(restored.config).apply({"params": restored.params}, images)
    assert_logits_close(np.asarray(logits), TORCH_LOGITS)


def test_imported_checkpoint_is_complete_and_says_where_it_came_from(imported):
    with Checkpoints(imported, read_only=True) as checkpoints:
        meta = checkpoints.restore_meta(3)
    assert meta["source"] == {
        "kind": "pytorch",
        "file": str(NET),
        "sha256": hashlib.sha256(NET.read_bytes()).hexdigest(),
        "format": "torch.save",
        "contents": "pickled module model.MyLeNet",
    }
    assert {"epoch", "step", "config", "dataset", "optimizer_source", "metrics"} <= set(meta)
    assert Config.from_dict(meta["config"]) == Config() and read_config(imported) == Config().to_record()
    assert meta["optimizer_source"] == {"kind": "config"} and "provenance" in meta
    items = sorted(p.name for p in (imported / "checkpoints" / "3").iterdir() if p.is_dir())
    assert items == ["meta", "params", "train_state"]


def test_predict_uses_the_imported_checkpoint(imported, first_test_images, tmp_path, capsys):
    images, labels = first_test_images
    i = int(np.flatnonzero(TORCH_LOGITS.argmax(1) == labels)[0])  # a digit PyTorch gets right
    Image.fromarray(images[i, ..., 0]).save(tmp_path / "digit.png")
    argv = [str(tmp_path / "digit.png"), "--workdir", str(imported), "--json"]
    assert cli.run(script_main("predict.py"), argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["prediction"] == labels[i]


def test_workdir_with_checkpoints_is_refused_unless_a_new_epoch_is_given(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(capsys, "convert.py", "from-torch", NET, "--workdir", workdir) == (0, "")
    for extra in ([], ["--epoch", "3"]):
        code, err = run_cli(capsys, "convert.py", "from-torch", NET, "--workdir", workdir, *extra)
        assert code == 2 and err.count("\n") == 1 and "already holds checkpoints (epochs 3)" in err
    assert os.listdir(workdir / "checkpoints") == ["3"]
    assert run_cli(capsys, "convert.py", "from-torch", NET, "--workdir", workdir, "--epoch", "5") == (0, "")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "5"]

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(Config(activation="relu").to_json())
    code, err = run_cli(capsys, "convert.py", "from-torch", NET, "--workdir", other)
    assert code == 2 and "holds a run of another config" in err and os.listdir(other) == ["config.json"]


# --- round trips ------------------------------------------------------------------------------


def test_export_then_import_is_bit_identical_and_keeps_epoch_and_step(imported, tmp_path, capsys):
    run = tmp_path / "run"  # epoch 5 of a name without a number: only the metadata can say 5
    assert import_torch_checkpoint(NET, run, epoch=5).step == 5 * 938
    out = tmp_path / "lenet.safetensors"
    assert run_cli(capsys, "convert.py", "to-torch", "--workdir", run, "--out", out) == (0, "")
    tensors = safetensors.numpy.load_file(out)
    chex.assert_trees_all_equal(tensors, read_torch_weights(NET).state_dict)  # the tutorial's own
    metadata = {"format": "pt", "source": str(run), "epoch": "5", "step": "4690"}
    assert read_torch_weights(out).metadata == metadata

    assert run_cli(capsys, "convert.py", "from-torch", out, "--workdir", tmp_path / "back") == (0, "")
    chex.assert_trees_all_equal(restore_params(run).params, restore_params(tmp_path / "back").params)
    with Checkpoints(tmp_path / "back", read_only=True) as checkpoints:
        assert checkpoints.epochs() == [5] and checkpoints.restore_meta(5)["step"] == 4690

    code, err = run_cli(capsys, "convert.py", "to-torch", "--workdir", run, "--out", out)
    assert code == 2 and "exists" in err and "--force" in err


def test_metadata_step_is_kept_and_an_epoch_of_its_own_resets_it(tmp_path):
    path = tmp_path / "net_7.safetensors"
    safetensors.numpy.save_file(random_state_dict(), path, {"epoch": "20", "step": "12345"})
    result = import_torch_checkpoint(path, tmp_path / "run")
    with Checkpoints(tmp_path / "run", read_only=True) as checkpoints:
        assert (result.epoch, checkpoints.restore_meta(20)["step"]) == (20, 12345)
    weights = read_torch_weights(path)
    assert _epoch_and_step(weights, path, 20) == (20, 12345)
    assert _epoch_and_step(weights, path, 2) == (2, 2 * 938)
    weights.metadata["step"] = str(2**31)
    with pytest.raises(ConversionError, match="records epoch 20, step 2147483648, beyond a 32-bit step"):
        _epoch_and_step(weights, path, None)
    for absurd in ("9" * 5000, "\u0663"):  # not what export writes: ignored, the name's epoch (7) holds
        weights.metadata["epoch"] = absurd
        assert _epoch_and_step(weights, path, None) == (7, 7 * 938)


def test_safetensors_written_by_lenet_jax_0_2_read_back():
    """A file of the hand-written writer this package replaced reads to the same tensors."""
    weights = read_torch_weights(FIXTURE / "written_by_0.2.safetensors")
    assert weights.format == "safetensors" and weights.metadata == {"format": "pt", "epoch": "20"}
    expected = {
        "model.10.bias": np.arange(10, dtype=np.float32) / 8,
        "b": np.arange(6, dtype=np.float64).reshape(2, 3),
        "c": np.array([1, -2], np.int8),
    }
    chex.assert_trees_all_equal(weights.state_dict, expected)
    chex.assert_trees_all_equal_dtypes(weights.state_dict, expected)


def test_layout_mapping_of_each_layer():
    state = random_state_dict()
    params = lenet_params_from_torch(state)
    assert params["conv2"]["kernel"][1, 2, 3, 4] == state["model.4.weight"][4, 3, 1, 2]  # OIHW -> HWIO
    c, h, w, o = 11, 3, 2, 100  # dense1: PyTorch's input c*25 + h*5 + w is our h*80 + w*16 + c
    assert (
        params["dense1"]["kernel"][h * 80 + w * 16 + c, o] == state["model.8.weight"][o, c * 25 + h * 5 + w]
    )
    assert params["dense3"]["kernel"][7, 9] == state["model.10.weight"][9, 7]
    chex.assert_trees_all_equal(torch_state_dict_from_lenet(params), state)


@pytest.mark.parametrize(
    "options, module",
    [({}, None), ({"location": "mps"}, None), ({"location": "cuda:0"}, None), ({"byteorder": "big"}, None),
     ({}, "model"), ({}, "__main__")],
    ids=["cpu", "mps", "cuda", "big-endian", "module-model", "module-__main__"],
)  # fmt: skip
def test_crafted_archives_read(tmp_path, options, module):
    state = random_state_dict()
    obj = tutorial_module(state, module) if module else state
    weights = read_torch_weights(torch_save(tmp_path / "net.pth", obj, **options))
    assert weights.contents == (f"pickled module {module}.MyLeNet" if module else "state_dict")
    chex.assert_trees_all_equal(weights.state_dict, state)


def test_pytorch_reads_the_export_and_its_files_import(imported, first_test_images, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    sys.path.insert(0, str(FIXTURE))
    try:
        from model import MyLeNet
    finally:
        sys.path.remove(str(FIXTURE))
    pt, st = tmp_path / "net.pt", tmp_path / "net.safetensors"
    export_torch_checkpoint(imported, pt)
    export_torch_checkpoint(imported, st)
    images = torch.from_numpy(first_test_images[0].astype(np.float32) / 255).permute(0, 3, 1, 2)
    for state_dict in (torch.load(pt, weights_only=True), load_file(st)):
        net = MyLeNet()
        net.load_state_dict(state_dict)
        with torch.no_grad():
            assert_logits_close(net.eval()(images).numpy(), TORCH_LOGITS)
    # torch.save's own state_dict and module files read to the same tensors
    torch.save(net, tmp_path / "module.pth")
    for path in (pt, tmp_path / "module.pth"):
        chex.assert_trees_all_equal(read_torch_weights(path).state_dict, read_torch_weights(NET).state_dict)


# --- refusals: one line, exit 2, nothing written ------------------------------------------------


class RunsCommand:
    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("how", ["os.system", "eval"])
def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path, capsys, protocol, how):
    marker = tmp_path / "MARKER"
    if how == "os.system":
        payload = RunsCommand(os.system, f"touch {marker}")
    else:
        payload = RunsCommand(eval, f"__import__('os').system('touch {marker}')")
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:  # inside what looks like a state_dict
        archive.writestr("archive/data.pkl", pickle.dumps({"model.1.weight": payload}, protocol=protocol))
    err = refusal(tmp_path, capsys, path)
    named = {"os.system": "posix.system", "eval": f"{'builtins' if protocol > 2 else '__builtin__'}.eval"}
    assert err.startswith("error: refusing ") and named[how] in err and "nothing in the file was run" in err
    assert not marker.exists()


def _self_containing_module(path):
    writer = TorchPickle()
    writer.global_(NN + "container", "Sequential")
    writer.out += pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.BINPUT + b"\x00" + pickle.EMPTY_DICT
    writer.out += pickle.MARK
    writer.value("_modules")
    writer.out += pickle.EMPTY_DICT + pickle.MARK
    writer.value("0")
    writer.out += pickle.BINGET + b"\x00" + pickle.SETITEMS + pickle.SETITEMS + pickle.BUILD
    return writer.save(path)


def _write(path, data):
    path.write_bytes(data)
    return path


def _state_dict(path, change):
    state = {**random_state_dict(), **change}
    return torch_save(path, {k: v for k, v in state.items() if v is not None})


def _module(path, index, layer):
    return torch_save(path, tutorial_module(random_state_dict(), change={index: NN + layer}))


def _view(path, offset, size, stride):
    writer = TorchPickle()
    writer.tensor(np.arange(20, dtype=np.float32), offset, size, stride)
    return writer.save(path)


LEGACY = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + b"\0" * 100  # torch.save before 1.6
CHECKPOINT = {"epoch": 3, "model_state_dict": random_state_dict()}
NOT_AN_ARCHIVE = "is neither a torch.save archive nor safetensors"
# fmt: off
REFUSALS = {  # name: (makes the file from a path p (n.pth in a temporary folder), a part of the one line)
    "truncated": (lambda p: _write(p, NET.read_bytes()[:100_000]), "is damaged (truncated?)"),
    "missing-key": (lambda p: _state_dict(p, {"model.4.bias": None}), "has no 'model.4.bias'"),
    "mis-shaped": (lambda p: _state_dict(p, {"model.8.weight": np.zeros((120, 256), "f4")}),
                   "'model.8.weight' has shape (120, 256), the tutorial's MyLeNet has (120, 400)"),
    "extra-key": (lambda p: _state_dict(p, {"model.11.weight": np.zeros(3, "f4")}),
                  "has keys MyLeNet does not have (model.11.weight)"),
    "another-network": (
        lambda p: torch_save(p, {"fc1.weight": np.zeros((128, 784), "f4")}), "has no 'model.1.weight'"),
    "checkpoint-dict": (
        lambda p: torch_save(p, CHECKPOINT), "holds a dict (keys 'epoch', 'model_state_dict'), not a LeNet"),
    "max-pool": (lambda p: _module(p, 6, "pooling.MaxPool2d"), "names torch.nn.modules.pooling.MaxPool2d"),
    "relu": (lambda p: _module(p, 2, "activation.ReLU"), "names torch.nn.modules.activation.ReLU"),
    "contains-itself": (_self_containing_module, "nested more than 8 deep"),
    "strided-view": (lambda p: _view(p, 3, (2, 3), (1, 5)), "malformed tensor in the pickle"),
    "past-storage": (lambda p: _view(p, 15, (2, 3), (3, 1)), "reaches past its storage"),
    "legacy": (lambda p: _write(p, LEGACY), NOT_AN_ARCHIVE),
    "text": (lambda p: _write(p, b"hello"), NOT_AN_ARCHIVE),
    "bad-safetensors": (
        lambda p: _write(p.with_suffix(".safetensors"), struct.pack("<Q", 2) + b"{x"),
        "is not a valid safetensors file"),
    "nothing": (lambda p: p.with_name("nothing.pth"), "does not exist"),
}
# fmt: on


@pytest.mark.parametrize("name", REFUSALS)
def test_what_is_not_the_tutorials_lenet_is_refused_in_one_line(tmp_path, capsys, name):
    make, message = REFUSALS[name]
    assert message in refusal(tmp_path, capsys, make(tmp_path / "n.pth"))


@pytest.mark.parametrize(
    "epoch, message",
    [("1000000000000", "--epoch must be between 0 and 2289428"), ("-1", "not -1"), ("x", "--epoch")],
)
def test_epoch_out_of_range_is_refused(tmp_path, capsys, epoch, message):
    assert message in refusal(tmp_path, capsys, NET, "--epoch", epoch)


def test_export_refuses_other_architectures_and_what_it_cannot_write(imported, tmp_path, capsys, monkeypatch):
    import jax
    import optax

    from lenet_jax.steps import TrainState

    config = Config(activation="relu", pool="max", feature_norm=False)
    params = restore_params(imported).params
    state = TrainState(
        jax.numpy.zeros((), jax.numpy.int32), params, optax.sgd(0.1).init(params), jax.random.PRNGKey(0)
    )
    with Checkpoints(tmp_path / "relu") as checkpoints:
        checkpoints.save(1, state, {"epoch": 1, "step": 0, "config": config.to_dict(), "metrics": {}})
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    for workdir, out, message in [
        (tmp_path / "relu", "x.safetensors", "activation 'relu', not 'sigmoid'; pool 'max', not 'avg'"),
        (imported, "net.pt", "needs PyTorch, which is not installed"),
        (imported, "net.npz", "must end in"),
    ]:
        code, err = run_cli(capsys, "convert.py", "to-torch", "--workdir", workdir, "--out", tmp_path / out)
        assert code == 2 and err.count("\n") == 1 and message in err
        assert not (tmp_path / out).exists()
