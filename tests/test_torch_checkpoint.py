"""PyTorch files of the tutorial's LeNet: read without running them, imported, exported back.

The fixture (tests/fixtures/torch_tutorial, made by make_fixture.py with the tutorial's own
model and loop) holds PyTorch's accuracy and logits for its net_3.pth. Small archives in the
torch.save format are crafted here, opcode by opcode, so that no test needs PyTorch; those that
compare with PyTorch itself skip without it.
"""

import hashlib
import io
import json
import os
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
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
    export_torch_checkpoint,
    import_torch_checkpoint,
    lenet_params_from_torch,
    read_safetensors,
    read_torch_pickle,
    read_torch_weights,
    torch_state_dict_from_lenet,
    write_safetensors,
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
    attributes: dict = field(default_factory=dict)


class TorchPickle:
    """Builds the pickle torch.save writes (protocol 2) and its storage records, op by op."""

    def __init__(self, location="cpu", byteorder="little", rebuild="v2"):
        self.out = bytearray(pickle.PROTO + b"\x02")
        self.records: dict[str, bytes] = {}
        self.location, self.byteorder, self.rebuild = location, byteorder, rebuild

    def global_(self, module, name):
        self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode()

    def value(self, v):
        out = self.out
        if isinstance(v, np.ndarray):
            self.tensor(v.reshape(-1), 0, v.shape, [int(np.prod(v.shape[i + 1 :])) for i in range(v.ndim)])
        elif isinstance(v, Module):
            self.global_(*v.cls.rsplit(".", 1))
            out += pickle.EMPTY_TUPLE + pickle.NEWOBJ
            state = {"training": False, "_parameters": v.parameters, "_buffers": {}, "_modules": v.modules}
            self.value({**state, **v.attributes})
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
        elif isinstance(v, float):
            out += pickle.BINFLOAT + struct.pack(">d", v)
        elif isinstance(v, str):
            out += pickle.BINUNICODE + struct.pack("<I", len(v.encode())) + v.encode()
        elif isinstance(v, tuple):
            out += pickle.MARK
            for item in v:
                self.value(item)
            out += pickle.TUPLE
        elif isinstance(v, list):
            out += pickle.EMPTY_LIST + pickle.MARK
            for item in v:
                self.value(item)
            out += pickle.APPENDS
        else:
            raise TypeError(v)

    def tensor(self, storage, offset, size, stride):
        """A float32 tensor viewing `storage` (1-D) at offset with size and stride."""
        key = str(len(self.records))
        data = np.asarray(storage, "<f4" if self.byteorder == "little" else ">f4").tobytes()
        self.records[key] = data
        self.global_("torch._utils", f"_rebuild_tensor_{self.rebuild}")
        self.out += pickle.MARK + pickle.MARK
        self.value("storage")
        if self.rebuild == "v3":  # raw bytes; the tensor names its dtype
            self.global_("torch.storage", "UntypedStorage")
            self.value(key), self.value(self.location), self.value(len(data))
        else:
            self.global_("torch", "FloatStorage")
            self.value(key), self.value(self.location), self.value(len(storage))
        self.out += pickle.TUPLE + pickle.BINPERSID
        self.value(offset), self.value(tuple(size)), self.value(tuple(stride)), self.value(False)
        self.value({})  # backward hooks
        if self.rebuild == "v3":
            self.global_("torch", "float32")
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
CONV = {"kernel_size": (5, 5), "stride": (1, 1), "dilation": (1, 1), "groups": 1}
POOL = {"kernel_size": 2, "stride": 2, "padding": 0, "ceil_mode": False}
TUTORIAL_MODULES = [  # MyLeNet.model's layers, as in the fixture's model.py
    ("OWNER.Reshape", {}),
    (NN + "conv.Conv2d", {**CONV, "padding": (2, 2)}),
    (NN + "activation.Sigmoid", {}),
    (NN + "pooling.AvgPool2d", POOL),
    (NN + "conv.Conv2d", {**CONV, "padding": (0, 0)}),
    (NN + "activation.Sigmoid", {}),
    (NN + "pooling.AvgPool2d", POOL),
    (NN + "flatten.Flatten", {"start_dim": 1, "end_dim": -1}),
    (NN + "linear.Linear", {}),
    (NN + "linear.Linear", {}),
    (NN + "linear.Linear", {}),
]


def tutorial_module(state, owner="model", change=None):
    """The whole MyLeNet holding `state`, its classes from module `owner`; change: {index:
    (class, attributes)} replaces layers."""
    layers = {}
    for i, (cls, attributes) in enumerate(TUTORIAL_MODULES):
        cls, attributes = (change or {}).get(i, (cls, attributes))
        parameters = {n: state[f"model.{i}.{n}"] for n in ("weight", "bias") if f"model.{i}.{n}" in state}
        layers[str(i)] = Module(cls.replace("OWNER", owner), parameters, attributes=attributes)
    return Module(f"{owner}.MyLeNet", modules={"model": Module(NN + "container.Sequential", modules=layers)})


def random_state_dict(seed=0, prefix="model."):
    rng = np.random.default_rng(seed)
    state = {}
    for _, layer, shape in LAYERS:
        key = prefix + layer[len("model.") :]
        state[f"{key}.weight"] = rng.normal(size=shape).astype(np.float32)
        state[f"{key}.bias"] = rng.normal(size=shape[:1]).astype(np.float32)
    return state


def refusal(tmp_path, capsys, path):
    """Runs from-torch on path: exit 2, one line, no workdir made; returns the line."""
    code, err = run_cli(capsys, "convert.py", "from-torch", path, "--workdir", tmp_path / "run")
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


def our_logits(workdir, images, epoch=None):
    restored = restore_params(workdir, epoch)
    model = model_from_config(restored.config)
    return np.asarray(model.apply({"params": restored.params}, images.astype(np.float32) / 255))


def assert_logits_close(ours, theirs):
    """Within 1e-4 relative: each logit's error against the largest logit of its image."""
    scale = np.abs(theirs).max(axis=1, keepdims=True)
    assert np.max(np.abs(ours - theirs) / scale) < 1e-4


def test_evaluate_py_on_the_imported_tutorial_model_matches_pytorch(imported, mnist_dir, capsys):
    code = cli.run(script_main("evaluate.py"), ["--workdir", str(imported), "--data-dir", str(mnist_dir)])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["epoch"] == 3 and result["count"] == EXPECTED["test_count"] == 10_000
    assert abs(result["correct"] - EXPECTED["test_correct"]) <= 2
    np.testing.assert_allclose(result["test_total_loss"], EXPECTED["test_total_loss"], rtol=1e-4)


def test_logits_match_pytorchs(imported, first_test_images):
    assert_logits_close(our_logits(imported, first_test_images[0]), TORCH_LOGITS)


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
    assert Config.from_dict(meta["config"]) == Config()
    assert read_config(imported) == Config().to_record()
    assert meta["optimizer_source"] == {"kind": "config"} and "provenance" in meta
    assert sorted(p.name for p in (imported / "checkpoints" / "3").iterdir() if p.is_dir()) == [
        "meta",
        "params",
        "train_state",
    ]


def test_predict_and_serve_use_the_imported_checkpoint(imported, first_test_images, tmp_path, capsys):
    from lenet_jax.predict import load_predictor
    from lenet_jax.serve import predict_image_bytes

    images, labels = first_test_images
    expected = TORCH_LOGITS.argmax(1)
    i = int(np.flatnonzero(expected == labels)[0])  # a digit PyTorch gets right
    Image.fromarray(images[i, ..., 0]).save(tmp_path / "digit.png")
    code = cli.run(
        script_main("predict.py"), [str(tmp_path / "digit.png"), "--workdir", str(imported), "--json"]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["prediction"] == labels[i]
    buffer = io.BytesIO()
    Image.fromarray(images[i, ..., 0]).save(buffer, format="PNG")
    assert (
        predict_image_bytes(load_predictor(imported), buffer.getvalue())["prediction"]
        == labels[i]
    )


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


def test_export_then_import_is_bit_identical(imported, tmp_path, capsys):
    out = tmp_path / "net.safetensors"
    code, err = run_cli(capsys, "convert.py", "to-torch", "--workdir", imported, "--out", out)
    assert code == 0, err
    tensors, metadata = read_safetensors(out)
    original = read_torch_weights(NET).state_dict
    assert list(tensors) == list(original) and metadata["format"] == "pt"
    for key in original:  # the tutorial's own tensors come back exactly
        assert tensors[key].dtype == np.float32
        np.testing.assert_array_equal(tensors[key], original[key])

    code, err = run_cli(
        capsys, "convert.py", "from-torch", out, "--workdir", tmp_path / "back", "--epoch", "3"
    )
    assert code == 0, err
    a, b = restore_params(imported).params, restore_params(tmp_path / "back").params
    for layer in a:
        for name in a[layer]:
            np.testing.assert_array_equal(np.asarray(a[layer][name]), np.asarray(b[layer][name]))

    code, err = run_cli(capsys, "convert.py", "to-torch", "--workdir", imported, "--out", out)
    assert code == 2 and "exists" in err and "--force" in err


def test_safetensors_file_reads_with_the_safetensors_package(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    state = random_state_dict()
    write_safetensors(tmp_path / "a.safetensors", state, {"format": "pt"})
    loaded = safetensors_numpy.load_file(tmp_path / "a.safetensors")
    assert set(loaded) == set(state)
    for key in state:
        np.testing.assert_array_equal(loaded[key], state[key])
    safetensors_numpy.save_file(state, tmp_path / "b.safetensors")  # and theirs reads here
    tensors, _ = read_safetensors(tmp_path / "b.safetensors")
    for key in state:
        np.testing.assert_array_equal(tensors[key], state[key])


def test_safetensors_writer_layout(tmp_path):
    tensors = {
        "b": np.arange(3, dtype=np.float32),
        "a": np.ones((2, 2), np.float64),
        "c": np.zeros(0, np.int8),
    }
    write_safetensors(tmp_path / "x.safetensors", tensors, {"k": "v"})
    data = (tmp_path / "x.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    assert size % 8 == 0 and header["__metadata__"] == {"k": "v"}
    assert header["b"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
    assert header["a"] == {"dtype": "F64", "shape": [2, 2], "data_offsets": [12, 44]}
    assert len(data) == 8 + size + 44
    back, metadata = read_safetensors(tmp_path / "x.safetensors")
    assert list(back) == ["b", "a", "c"] and metadata == {"k": "v"}
    for key in tensors:
        np.testing.assert_array_equal(back[key], tensors[key])


def test_pytorch_loads_the_export_into_the_tutorials_model(imported, first_test_images, tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    sys.path.insert(0, str(FIXTURE))
    try:
        from model import MyLeNet
    finally:
        sys.path.remove(str(FIXTURE))
    pt, st = tmp_path / "net.pt", tmp_path / "net.safetensors"
    export_torch_checkpoint(imported, pt)
    export_torch_checkpoint(imported, st)
    images = torch.from_numpy(first_test_images[0].astype(np.float32) / 255).permute(0, 3, 1, 2)
    for state_dict in (torch.load(pt, weights_only=True), safetensors_torch.load_file(st)):
        net = MyLeNet()
        net.load_state_dict(state_dict)
        with torch.no_grad():
            assert_logits_close(net.eval()(images).numpy(), TORCH_LOGITS)
    # torch.save's state_dict (a real one, not crafted) imports back to the same params
    import_torch_checkpoint(pt, tmp_path / "from-pt", epoch=3)
    a, b = restore_params(imported).params, restore_params(tmp_path / "from-pt").params
    for layer in a:
        for name in a[layer]:
            np.testing.assert_array_equal(np.asarray(a[layer][name]), np.asarray(b[layer][name]))


def test_pytorch_modules_of_other_layouts(tmp_path):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:
        from benchmarks.torch_lenet import lenet
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    plain = lenet()  # the tutorial's layers in a bare nn.Sequential (keys 0, 3, 7, 8, 9)
    torch.save(plain, tmp_path / "plain.pth")
    ours = lenet_params_from_torch(read_torch_weights(tmp_path / "plain.pth").state_dict)
    theirs = {k: v.numpy() for k, v in plain.state_dict().items()}
    np.testing.assert_array_equal(torch_state_dict_from_lenet(ours)["model.8.weight"], theirs["7.weight"])
    torch.save(lenet("relu", "max"), tmp_path / "relu.pth")
    with pytest.raises(ConversionError, match=r"layer 1 is ReLU where the tutorial's is Sigmoid"):
        read_torch_weights(tmp_path / "relu.pth")


# --- layouts and variants, on crafted archives -------------------------------------------------


def test_layout_mapping_of_each_layer():
    state = random_state_dict()
    params = lenet_params_from_torch(state)
    # conv: OIHW -> HWIO
    assert params["conv2"]["kernel"][1, 2, 3, 4] == state["model.4.weight"][4, 3, 1, 2]
    # dense1: PyTorch's input c*25 + h*5 + w is our h*80 + w*16 + c
    c, h, w, o = 11, 3, 2, 100
    assert (
        params["dense1"]["kernel"][h * 80 + w * 16 + c, o] == state["model.8.weight"][o, c * 25 + h * 5 + w]
    )
    assert params["dense3"]["kernel"][7, 9] == state["model.10.weight"][9, 7]
    back = torch_state_dict_from_lenet(params)
    assert list(back) == list(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])


@pytest.mark.parametrize(
    "options",
    [{}, {"location": "mps"}, {"location": "cuda:0"}, {"byteorder": "big"}, {"rebuild": "v3"}],
    ids=["cpu", "mps", "cuda", "big-endian", "untyped-storage"],
)
def test_crafted_state_dict_archives_read(tmp_path, options):
    state = random_state_dict()
    weights = read_torch_weights(torch_save(tmp_path / "sd.pth", state, **options))
    assert weights.contents == "state_dict" and list(weights.state_dict) == list(state)
    for key in state:
        np.testing.assert_array_equal(weights.state_dict[key], state[key])


def test_strides_and_offsets_are_honoured(tmp_path):
    writer = TorchPickle()
    storage = np.arange(20, dtype=np.float32)
    writer.out += pickle.MARK
    writer.tensor(storage, 3, (2, 3), (1, 5))  # a transposed view at offset 3
    writer.tensor(storage, 0, (4,), (0,))  # a broadcast (expanded) view
    writer.out += pickle.TUPLE
    array, broadcast = read_torch_pickle(writer.save(tmp_path / "v.pth"))
    np.testing.assert_array_equal(array, [[3, 8, 13], [4, 9, 14]])
    np.testing.assert_array_equal(broadcast, [0, 0, 0, 0])
    writer = TorchPickle()
    writer.tensor(storage, 15, (2, 3), (1, 5))  # reaches element 26 of 20
    with pytest.raises(ConversionError, match="reach past its storage of 20 elements"):
        read_torch_pickle(writer.save(tmp_path / "w.pth"))


@pytest.mark.parametrize("variant", ["module.", "sequential", "named", "checkpoint-dict"])
def test_state_dict_variants_give_the_same_params(tmp_path, variant):
    state = random_state_dict()
    if variant == "module.":  # saved from nn.DataParallel
        other = {f"module.{k}": v for k, v in state.items()}
    elif variant == "sequential":  # a bare nn.Sequential without the Reshape: 0, 3, 7, 8, 9
        renumber = {"1": "0", "4": "3", "8": "7", "9": "8", "10": "9"}
        other = {f"{renumber[k.split('.')[1]]}.{k.split('.')[2]}": v for k, v in state.items()}
    elif variant == "named":  # conv1 ... fc3, in another order
        names = {"1": "conv1", "4": "conv2", "8": "fc1", "9": "fc2", "10": "fc3"}
        other = {f"{names[k.split('.')[1]]}.{k.split('.')[2]}": v for k, v in reversed(state.items())}
    else:  # the usual training checkpoint dict
        optimizer = {"state": {}, "param_groups": [{"lr": 0.05, "params": list(range(10))}]}
        other = {"epoch": 3, "model_state_dict": state, "optimizer_state_dict": optimizer}
    expected = lenet_params_from_torch(state)
    params = lenet_params_from_torch(read_torch_weights(torch_save(tmp_path / "x.pth", other)).state_dict)
    for layer in expected:
        for name in expected[layer]:
            np.testing.assert_array_equal(params[layer][name], expected[layer][name])


@pytest.mark.parametrize("owner", ["model", "__main__"])
def test_a_crafted_tutorial_module_reads(tmp_path, owner):
    state = random_state_dict()
    weights = read_torch_weights(torch_save(tmp_path / "net.pth", tutorial_module(state, owner)))
    assert weights.contents == f"pickled module {owner}.MyLeNet"
    assert list(weights.state_dict) == list(state)
    for key in state:
        np.testing.assert_array_equal(weights.state_dict[key], state[key])


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {6: (NN + "pooling.MaxPool2d", POOL)},
            "layer model.6 is MaxPool2d where the tutorial's is AvgPool2d",
        ),
        ({1: (NN + "conv.Conv2d", {**CONV, "padding": (1, 1)})}, "layer model.1 (Conv2d) has padding=(1, 1)"),
        ({9: (NN + "linear.Linear", {}), 10: (NN + "activation.ReLU", {})}, "layer model.10 is ReLU"),
        ({3: ("net.Pool", {})}, "its pickle names net.Pool, which a PyTorch checkpoint"),
    ],
    ids=["max-pool", "padding", "relu", "unknown-class"],
)
def test_a_module_of_another_architecture_is_refused(tmp_path, capsys, change, message):
    module = tutorial_module(random_state_dict(), change=change)
    assert message in refusal(tmp_path, capsys, torch_save(tmp_path / "net.pth", module))


def test_a_module_that_contains_itself_is_refused(tmp_path, capsys):
    writer = TorchPickle()
    writer.global_(NN + "container", "Sequential")
    writer.out += (
        pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.BINPUT + b"\x00" + pickle.EMPTY_DICT + pickle.MARK
    )
    writer.value("_modules")
    writer.out += pickle.EMPTY_DICT + pickle.MARK
    writer.value("0")
    writer.out += pickle.BINGET + b"\x00" + pickle.SETITEMS + pickle.SETITEMS + pickle.BUILD
    assert "nested deeper than" in refusal(tmp_path, capsys, writer.save(tmp_path / "cycle.pth"))


# --- refusals ---------------------------------------------------------------------------------


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
    evil = {"model.1.weight": payload}  # inside what looks like a state_dict
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(evil, protocol=protocol))
        archive.writestr("archive/version", "3\n")
    code, err = run_cli(capsys, "convert.py", "from-torch", path, "--workdir", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1
    named = {"os.system": "posix.system", "eval": f"{'builtins' if protocol > 2 else '__builtin__'}.eval"}[
        how
    ]
    assert err.startswith("error: refusing ") and named in err and "nothing in the file was run" in err
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_a_truncated_file_is_refused(tmp_path, capsys):
    path = tmp_path / "net_3.pth"
    path.write_bytes(NET.read_bytes()[: NET.stat().st_size // 2])
    assert "is damaged: a zip archive without its end" in refusal(tmp_path, capsys, path)


def test_a_missing_key_is_refused(tmp_path, capsys):
    state = random_state_dict()
    del state["model.4.bias"]
    err = refusal(tmp_path, capsys, torch_save(tmp_path / "sd.pth", state))
    assert "key 'model.4.bias' (shape (16,)) is missing" in err


def test_a_mis_shaped_key_is_refused(tmp_path, capsys):
    state = random_state_dict()
    state["model.8.weight"] = np.zeros((120, 256), np.float32)
    err = refusal(tmp_path, capsys, torch_save(tmp_path / "sd.pth", state))
    assert "'model.8.weight' has shape (120, 256), the tutorial's MyLeNet has (120, 400)" in err


def test_a_state_dict_of_another_network_is_refused(tmp_path, capsys):
    mlp = {"fc1.weight": np.zeros((128, 784), np.float32), "fc1.bias": np.zeros(128, np.float32)}
    err = refusal(tmp_path, capsys, torch_save(tmp_path / "mlp.pth", mlp))
    assert "is not the tutorial's LeNet: its weight 'fc1.weight' has shape (128, 784)" in err


def test_legacy_and_foreign_files_are_refused(tmp_path, capsys):
    legacy = tmp_path / "old.pth"
    legacy.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + b"\0" * 100)
    assert "legacy format" in refusal(tmp_path, capsys, legacy)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    assert "is not a PyTorch checkpoint" in refusal(tmp_path, capsys, text)
    assert "does not exist" in refusal(tmp_path, capsys, tmp_path / "nothing.pth")


def test_export_refuses_other_architectures(imported, tmp_path, capsys):
    import jax
    import optax

    from lenet_jax.steps import TrainState

    config = Config(activation="relu", pool="max", feature_norm=False)
    params = restore_params(imported).params
    state = TrainState(
        jax.numpy.zeros((), jax.numpy.int32), params, optax.sgd(0.1).init(params), jax.random.PRNGKey(0)
    )
    checkpoints = Checkpoints(tmp_path / "relu")
    try:
        checkpoints.save(1, state, {"epoch": 1, "step": 0, "config": config.to_dict(), "metrics": {}})
    finally:
        checkpoints.close()
    out = tmp_path / "x.safetensors"
    code, err = run_cli(capsys, "convert.py", "to-torch", "--workdir", tmp_path / "relu", "--out", out)
    assert code == 2 and err.count("\n") == 1
    assert "activation 'relu', not 'sigmoid'; pool 'max', not 'avg'" in err
    assert not out.exists()


def test_export_refuses_what_it_cannot_write(imported, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    for out, message in [("net.pt", "needs PyTorch, which is not installed"), ("net.npz", "must end in")]:
        code, err = run_cli(capsys, "convert.py", "to-torch", "--workdir", imported, "--out", tmp_path / out)
        assert code == 2 and err.count("\n") == 1 and message in err
        assert not (tmp_path / out).exists()
