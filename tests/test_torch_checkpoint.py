"""PyTorch files of the tutorial's LeNet: read without running them, imported, exported back.

The fixture holds PyTorch's own numbers for net_3.pth; other torch.save files are written here.
"""

import collections
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import chex
import numpy as np
import pytest
import safetensors.numpy
from conftest import run_cli
from PIL import Image

from lenet_jax import idx
from lenet_jax import torch_checkpoint as tc
from lenet_jax.checkpoints import Checkpoints
from lenet_jax.config import Config
from lenet_jax.errors import ConversionError
from lenet_jax.evaluation import restore_params
from lenet_jax.model import model_from_config
from lenet_jax.workdir import read_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "torch_tutorial"
NET = FIXTURE / "net_3.pth"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
TORCH_LOGITS = np.load(FIXTURE / "logits_100.npy")
TUTORIAL = tc.read_torch_weights(NET).state_dict
NN = "torch.nn.modules."


# --- torch.save's format, written without torch ----------------------------------------------

Module = collections.namedtuple("Module", "cls parameters modules")  # a torch.nn.Module: class, __dict__
View = collections.namedtuple("View", "storage offset size stride")  # a float32 tensor of a 1-D storage


class Storage(np.ndarray):
    """A tensor's storage: an archive record that the pickle names by a persistent id."""


class Name(str):
    """A global `module.name` the pickle names without importing it."""

    def __call__(self):  # pickle reduces only to callables
        raise NotImplementedError


class TorchPickler(pickle._Pickler):  # the Python pickler, whose save_global can be overridden
    """torch.save's pickle (protocol 2): modules rebuilt with REDUCE (torch's NEWOBJ reads the same)."""

    def __init__(self, location="cpu", byteorder="little"):
        self.out, self.records, self.location, self.byteorder = io.BytesIO(), {}, location, byteorder
        super().__init__(self.out, protocol=2)

    def save_global(self, obj, name=None):
        if not isinstance(obj, Name):
            return super().save_global(obj, name)
        module, name = obj.rsplit(".", 1)
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            order = "<" if self.byteorder == "little" else ">"
            self.records[key := str(len(self.records))] = obj.astype(f"{order}f4").tobytes()
            return "storage", Name("torch.FloatStorage"), key, self.location, len(obj)

    def reducer_override(self, obj):
        if isinstance(obj, Name):
            return str(obj)
        if isinstance(obj, np.ndarray):  # C-contiguous: its strides in items are torch's
            obj = View(obj.reshape(-1), 0, obj.shape, [stride // obj.itemsize for stride in obj.strides])
        if isinstance(obj, View):  # storage, offset, size, stride, requires_grad, backward hooks
            storage = obj.storage.view(Storage)
            args = (storage, obj.offset, *map(tuple, obj[2:]), False, collections.OrderedDict())
            return Name("torch._utils._rebuild_tensor_v2"), args
        if isinstance(obj, Module):
            return Name(obj.cls), (), {"_parameters": obj.parameters, "_buffers": {}, "_modules": obj.modules}
        return NotImplemented


def torch_save(path, obj, **options):
    """What torch.save(obj, path) writes for a module, a dict of float32 tensors or plain values."""
    pickler = TorchPickler(**options)
    pickler.dump(collections.OrderedDict(obj) if type(obj) is dict else obj)
    records = {"data.pkl": pickler.out.getvalue(), "byteorder": pickler.byteorder, "version": "3\n"}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {**records, **{f"data/{k}": v for k, v in pickler.records.items()}}.items():
            archive.writestr(f"archive/{name}", data)
    return path


TUTORIAL_MODULES = [  # MyLeNet.model's layers, as in the fixture's model.py
    "OWNER.Reshape", NN + "conv.Conv2d", NN + "activation.Sigmoid", NN + "pooling.AvgPool2d",
    NN + "conv.Conv2d", NN + "activation.Sigmoid", NN + "pooling.AvgPool2d", NN + "flatten.Flatten",
    NN + "linear.Linear", NN + "linear.Linear", NN + "linear.Linear",
]  # fmt: skip


def tutorial_module(state, owner="model", change=None):
    """The whole MyLeNet holding `state`, its classes from `owner`; change: {index: class}."""
    layers = {}
    for i, cls in enumerate(TUTORIAL_MODULES):
        weights = {n: state[f"model.{i}.{n}"] for n in ("weight", "bias") if f"model.{i}.{n}" in state}
        layers[str(i)] = Module((change or {}).get(i, cls).replace("OWNER", owner), weights, {})
    return Module(f"{owner}.MyLeNet", {}, {"model": Module(NN + "container.Sequential", {}, layers)})


def tutorial_state(**change):
    """The tutorial's state_dict, changed by `change` (a None value removes its key)."""
    return {k: v for k, v in {**TUTORIAL, **change}.items() if v is not None}


def convert(capsys, *argv, code=0):
    """Runs convert.py: exit `code`, and one line on stderr when it fails; returns that line."""
    result, _, err = run_cli(capsys, "convert.py", *argv)
    assert (result, err.count("\n")) == (code, code != 0) and err.startswith("error: " if code else ""), err
    return err


# --- the fixture, imported once ---------------------------------------------------------------


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tutorial") / "run"
    result = tc.import_torch_checkpoint(NET, workdir)
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
    """evaluate.py's and predict.py's numbers are PyTorch's, and the meta says where they came from."""
    code, out, _ = run_cli(capsys, "evaluate.py", "--workdir", imported, "--data-dir", mnist_dir)
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and result["epoch"] == 3 and result["count"] == EXPECTED["test_count"] == 10_000
    assert abs(result["correct"] - EXPECTED["test_correct"]) <= 2
    np.testing.assert_allclose(result["test_total_loss"], EXPECTED["test_total_loss"], rtol=1e-4)
    restored = restore_params(imported)
    images, labels = first_test_images
    logits = model_from_config(restored.config).apply({"params": restored.params}, images / np.float32(255))
    assert_logits_close(np.asarray(logits), TORCH_LOGITS)

    i = int(np.flatnonzero(TORCH_LOGITS.argmax(1) == labels)[0])  # predict.py: a digit PyTorch gets right
    Image.fromarray(images[i, ..., 0]).save(digit := imported.parent / "digit.png")
    code, out, _ = run_cli(capsys, "predict.py", digit, "--workdir", imported, "--json")
    assert code == 0 and json.loads(out.splitlines()[0])["prediction"] == labels[i]

    with Checkpoints(imported, read_only=True) as checkpoints:
        meta = checkpoints.restore_meta(3)
    sha256 = hashlib.sha256(NET.read_bytes()).hexdigest()
    assert meta["source"] == {"kind": "pytorch", "file": str(NET), "sha256": sha256, "format": "torch.save",
                              "contents": "pickled module model.MyLeNet"}  # fmt: skip
    assert {"epoch", "step", "config", "dataset", "metrics", "provenance"} <= set(meta)
    assert Config.from_dict(meta["config"]) == Config() and read_config(imported) == Config().to_record()
    assert meta["optimizer_source"] == {"kind": "config"}
    items = sorted(p.name for p in (imported / "checkpoints" / "3").iterdir() if p.is_dir())
    assert items == ["meta", "params", "train_state"]


def test_workdir_with_checkpoints_is_refused_unless_a_new_epoch_is_given(imported, tmp_path, capsys):
    workdir = shutil.copytree(imported, tmp_path / "run")
    for extra in ([], ["--epoch", "3"]):
        err = convert(capsys, "from-torch", NET, "--workdir", workdir, *extra, code=2)
        assert "already holds checkpoints (epochs 3)" in err
    assert os.listdir(workdir / "checkpoints") == ["3"]
    convert(capsys, "from-torch", NET, "--workdir", workdir, "--epoch", "5")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "5"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(Config(activation="relu").to_json())
    err = convert(capsys, "from-torch", NET, "--workdir", tmp_path / "other", code=2)
    assert "holds a run of another config" in err and os.listdir(tmp_path / "other") == ["config.json"]


# --- round trips ------------------------------------------------------------------------------


def test_export_then_import_is_bit_identical_and_keeps_epoch_and_step(tmp_path, capsys):
    path, recorded = tmp_path / "net_7.safetensors", {"epoch": "20", "step": "12345"}  # it wins over the name
    safetensors.numpy.save_file(TUTORIAL, path, recorded)
    run, out, back = tmp_path / "run", tmp_path / "lenet.safetensors", tmp_path / "back"
    convert(capsys, "from-torch", path, "--workdir", run)
    convert(capsys, "to-torch", "--workdir", run, "--out", out)
    chex.assert_trees_all_equal(safetensors.numpy.load_file(out), TUTORIAL)
    assert tc.read_torch_weights(out).metadata == {"format": "pt", "source": str(run), **recorded}
    convert(capsys, "from-torch", out, "--workdir", back)  # its name has no number: the metadata says 20
    chex.assert_trees_all_equal(restore_params(run).params, restore_params(back).params)
    with Checkpoints(back, read_only=True) as checkpoints:
        assert checkpoints.epochs() == [20] and checkpoints.restore_meta(20)["step"] == 12345
    assert "--force" in convert(capsys, "to-torch", "--workdir", run, "--out", out, code=2)


def test_the_epoch_and_step_a_file_records_and_their_bounds():
    path = Path("net_7.safetensors")
    weights = tc.TorchWeights(TUTORIAL, "safetensors", "state_dict", {"epoch": "20", "step": "12345"})
    recorded = [(20, 12345), (20, 12345), (2, 2 * 938)]
    assert [tc._epoch_and_step(weights, path, e) for e in (None, 20, 2)] == recorded
    weights.metadata["step"] = str(2**31)
    with pytest.raises(ConversionError, match="records epoch 20, step 2147483648, beyond a 32-bit step"):
        tc._epoch_and_step(weights, path, None)
    for absurd in ("9" * 5000, "\u0663"):  # not what export writes: ignored, the name's epoch (7) holds
        weights.metadata["epoch"] = absurd
        assert tc._epoch_and_step(weights, path, None) == (7, 7 * 938)


def test_safetensors_written_by_lenet_jax_0_2_read_back():
    """A file of the hand-written writer this package replaced reads to the same tensors."""
    weights = tc.read_torch_weights(FIXTURE / "written_by_0.2.safetensors")
    assert weights.format == "safetensors" and weights.metadata == {"format": "pt", "epoch": "20"}
    expected = {"model.10.bias": np.arange(10, dtype=np.float32) / 8, "c": np.array([1, -2], np.int8),
                "b": np.arange(6, dtype=np.float64).reshape(2, 3)}  # fmt: skip
    chex.assert_trees_all_equal(weights.state_dict, expected)
    chex.assert_trees_all_equal_dtypes(weights.state_dict, expected)


def test_layout_mapping_of_each_layer():
    state = tutorial_state()
    params = tc.lenet_params_from_torch(state)
    assert params["conv2"]["kernel"][1, 2, 3, 4] == state["model.4.weight"][4, 3, 1, 2]  # OIHW -> HWIO
    c, h, w, o = 11, 3, 2, 100  # dense1: PyTorch's input c*25 + h*5 + w is our h*80 + w*16 + c
    assert (
        params["dense1"]["kernel"][h * 80 + w * 16 + c, o] == state["model.8.weight"][o, c * 25 + h * 5 + w]
    )
    assert params["dense3"]["kernel"][7, 9] == state["model.10.weight"][9, 7]
    chex.assert_trees_all_equal(tc.torch_state_dict_from_lenet(params), state)


@pytest.mark.parametrize(
    "options, owner",
    [({}, None), ({"location": "mps"}, None), ({"location": "cuda:0"}, None), ({"byteorder": "big"}, None),
     ({}, "model"), ({}, "__main__")],
    ids=["cpu", "mps", "cuda", "big-endian", "module-model", "module-__main__"],
)  # fmt: skip
def test_crafted_archives_read(tmp_path, options, owner):
    state = tutorial_state()
    path = torch_save(tmp_path / "net.pth", tutorial_module(state, owner) if owner else state, **options)
    weights = tc.read_torch_weights(path)
    assert weights.contents == (f"pickled module {owner}.MyLeNet" if owner else "state_dict")
    chex.assert_trees_all_equal(weights.state_dict, state)


def test_pytorch_reads_the_export_and_its_files_import(imported, first_test_images, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    sys.path.insert(0, str(FIXTURE))
    try:
        from model import MyLeNet
    finally:
        sys.path.remove(str(FIXTURE))
    pt, st = tc.export_torch_checkpoint(imported, tmp_path / "net.pt").out, tmp_path / "net.safetensors"
    tc.export_torch_checkpoint(imported, st)
    images = torch.from_numpy(first_test_images[0].astype(np.float32) / 255).permute(0, 3, 1, 2)
    for state_dict in (torch.load(pt, weights_only=True), load_file(st)):
        net = MyLeNet()
        net.load_state_dict(state_dict)
        with torch.no_grad():
            assert_logits_close(net.eval()(images).numpy(), TORCH_LOGITS)
    torch.save(net, tmp_path / "module.pth")  # torch.save's own state_dict and module files
    for path in (pt, tmp_path / "module.pth"):
        chex.assert_trees_all_equal(tc.read_torch_weights(path).state_dict, TUTORIAL)


# --- refusals: one line, exit 2, nothing written ------------------------------------------------


class Call(tuple):
    """Pickles as a call of its first item with the others: what unpickling it would run."""

    def __reduce__(self):
        return self[0], self[1:]


def runs_a_command(path, how, protocol):
    """A state_dict whose tensor would run `touch MARKER` (next to path) through `how`."""
    touch = f"touch {path.with_name('MARKER')}"
    payload = Call((os.system, touch) if how == "system" else (eval, f"__import__('os').system('{touch}')"))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"model.1.weight": payload}, protocol=protocol))
    return path


def contains_itself():
    module = Module(NN + "container.Sequential", {}, {})
    module.modules["0"] = module
    return module


LEGACY = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + b"\0" * 100  # torch.save before 1.6
NOT_AN_ARCHIVE = "is neither a torch.save archive nor safetensors"
# fmt: off
REFUSALS = {  # name: (the file's bytes, or a function writing it at a path, or an object torch.save writes
    #                   there, or None: no file, or a flag given with net_3.pth; a part of the one line)
    "os.system-2": (lambda p: runs_a_command(p, "system", 2), "posix.system, which a PyTorch file"),
    "os.system-5": (lambda p: runs_a_command(p, "system", 5), "posix.system, which a PyTorch file"),
    "eval-2": (lambda p: runs_a_command(p, "eval", 2), "__builtin__.eval, which a PyTorch file"),
    "eval-5": (lambda p: runs_a_command(p, "eval", 5), "builtins.eval, which a PyTorch file"),
    "truncated": (NET.read_bytes()[:100_000], "is damaged (truncated?)"),
    "missing-key": (tutorial_state(**{"model.4.bias": None}), "has no 'model.4.bias'"),
    "mis-shaped": (tutorial_state(**{"model.8.weight": np.zeros((120, 256), "f4")}),
                   "'model.8.weight' has shape (120, 256), the tutorial's MyLeNet has (120, 400)"),
    "extra-key": (tutorial_state(**{"model.11.weight": np.zeros(3, "f4")}),
                  "has keys MyLeNet does not have (model.11.weight)"),
    "another-network": ({"fc1.weight": np.zeros((128, 784), "f4")}, "has no 'model.1.weight'"),
    "checkpoint-dict": ({"epoch": 3, "model_state_dict": tutorial_state()},
                        "holds a dict (keys 'epoch', 'model_state_dict'), not a LeNet"),
    "max-pool": (tutorial_module(TUTORIAL, change={6: NN + "pooling.MaxPool2d"}), "pooling.MaxPool2d"),
    "relu": (tutorial_module(TUTORIAL, change={2: NN + "activation.ReLU"}), "activation.ReLU"),
    "contains-itself": (contains_itself(), "nested more than 8 deep"),
    "strided-view": (View(np.arange(20, dtype="f4"), 3, (2, 3), (1, 5)), "malformed tensor in the pickle"),
    "past-storage": (View(np.arange(20, dtype="f4"), 15, (2, 3), (3, 1)), "reaches past its storage"),
    "legacy": (LEGACY, NOT_AN_ARCHIVE),
    "text": (b"hello", NOT_AN_ARCHIVE),
    "bad-safetensors": (struct.pack("<Q", 2) + b"{x", "is not a valid safetensors file"),
    "nothing": (None, "does not exist"),
    "epoch-too-large": ("--epoch=1000000000000", "--epoch must be between 0 and 2289428"),
    "epoch-negative": ("--epoch=-1", "not -1"),
    "epoch-not-a-number": ("--epoch=x", "--epoch"),
}
# fmt: on


@pytest.mark.parametrize("name", REFUSALS)
def test_what_is_not_the_tutorials_lenet_is_refused_in_one_line(tmp_path, capsys, name):
    made, message = REFUSALS[name]
    path, flags = (NET, [made]) if isinstance(made, str) else (tmp_path / "n.pth", [])
    if isinstance(made, bytes):
        path.write_bytes(made)
    elif callable(made):
        made(path)
    elif made is not None and not flags:
        torch_save(path, made)
    err = convert(capsys, "from-torch", path, "--workdir", tmp_path / "run", *flags, code=2)
    assert not (tmp_path / "run").exists()
    assert message in err and ("nothing in the file was run" in err) == err.startswith("error: refusing")
    assert not (tmp_path / "MARKER").exists()


def test_export_refuses_other_architectures_and_what_it_cannot_write(imported, tmp_path, capsys, monkeypatch):
    import jax
    import optax

    from lenet_jax.steps import TrainState

    config = Config(activation="relu", pool="max", feature_norm=False)
    params = restore_params(imported).params
    state = TrainState(jax.numpy.int32(0), params, optax.sgd(0.1).init(params), jax.random.PRNGKey(0))
    with Checkpoints(tmp_path / "relu") as checkpoints:
        checkpoints.save(1, state, {"epoch": 1, "step": 0, "config": config.to_dict(), "metrics": {}})
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    for workdir, out, message in [
        (tmp_path / "relu", "x.safetensors", "activation 'relu', not 'sigmoid'; pool 'max', not 'avg'"),
        (imported, "net.pt", "needs PyTorch, which is not installed"),
        (imported, "net.npz", "must end in"),
    ]:
        assert message in convert(capsys, "to-torch", "--workdir", workdir, "--out", tmp_path / out, code=2)
        assert not (tmp_path / out).exists()
