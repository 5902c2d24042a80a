"""PyTorch files of the tutorial's LeNet: read them safely, import them, export ours back.

The tutorial saves `torch.save(net, "model/net_N.pth")` after every epoch: a zip archive whose
`data.pkl` pickles the whole `MyLeNet` module, with each tensor's bytes in a `data/<key>`
record. `torch.load` of such a file runs whatever code its pickle names. This module reads it
with a restricted unpickler instead: only the names such a file needs are allowed (tensor and
storage rebuilders, `OrderedDict`, `set`, torch.nn layer classes and the tutorial's
`model.MyLeNet` / `model.Reshape`), each mapped to a function or an inert stand-in of ours, and
tensors are built as numpy arrays from the archive's records. Any other name (`os.system`, an
unknown class) is refused before anything is called. PyTorch need not be installed.

Accepted: a pickled module (its layers are checked to be the tutorial's: sigmoid, average
pooling), a `state_dict` of the same network (the tutorial's keys `model.1.weight`, ...; a
`module.` prefix; or any naming whose five weight shapes are LeNet's), a checkpoint dict
holding exactly one of those, and `.safetensors` files. Layouts: PyTorch's conv weights are
OIHW and Flax's kernels HWIO; `Linear` weights are (out, in) and `Dense` kernels (in, out); and
PyTorch flattens the conv features in C,H,W order where `LeNet` flattens H,W,C, so the first
Dense kernel's rows are permuted.

`import_torch_checkpoint` writes a complete checkpoint of this project (the recipe's config and
optimizer) that `scripts/evaluate.py`, `predict.py` and `serve.py` read as their own;
`export_torch_checkpoint` writes a checkpoint's weights as a PyTorch state_dict with the
tutorial's keys (`.safetensors`, written here with numpy; `.pt` through torch.save when PyTorch
is installed). `scripts/convert.py` is the command line.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import re
import struct
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lenet_jax.errors import ConversionError

# The tutorial's layers with weights: (our module name, its key prefix in MyLeNet's state_dict,
# the PyTorch weight shape). The weight shapes are all different, which lets other namings of
# the same network be matched by shape.
LAYERS = (
    ("conv1", "model.1", (6, 1, 5, 5)),
    ("conv2", "model.4", (16, 6, 5, 5)),
    ("dense1", "model.8", (120, 400)),
    ("dense2", "model.9", (84, 120)),
    ("dense3", "model.10", (10, 84)),
)
# conv2's pooled output as PyTorch holds it, (C, H, W): what dense1's 400 inputs are.
CONV_FEATURES = (16, 5, 5)
# The tutorial's MyLeNet.model, layer by layer after its Reshape (the parameter-free ones too).
TUTORIAL_LAYER_TYPES = (
    "Conv2d", "Sigmoid", "AvgPool2d", "Conv2d", "Sigmoid", "AvgPool2d", "Flatten",
    "Linear", "Linear", "Linear",
)  # fmt: skip
# Hyperparameters of those layers that change the function (as nn.Module attributes).
_LAYER_ATTRIBUTES = {
    0: {"kernel_size": (5, 5), "stride": (1, 1), "padding": (2, 2), "dilation": (1, 1), "groups": 1},
    3: {"kernel_size": (5, 5), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1},
    2: {"kernel_size": 2, "stride": 2, "padding": 0, "ceil_mode": False},
    5: {"kernel_size": 2, "stride": 2, "padding": 0, "ceil_mode": False},
    6: {"start_dim": 1, "end_dim": -1},
}
# The Config fields of the architecture, which must be the recipe's for MyLeNet to hold it.
ARCHITECTURE_FIELDS = ("activation", "pool", "dense_activation", "feature_norm")
# The tutorial's training set and batch size: an imported epoch N counts N * 938 steps.
TUTORIAL_TRAIN_IMAGES = 60_000

# Far above LeNet's (4.4 KB pickle, 250 KB of weights): a bigger record is not this network,
# and is not read into memory.
_MAX_HEADER_BYTES = 16 << 20  # a pickle, or a safetensors header
_MAX_RECORD_BYTES = 64 << 20
_STATE_DICT_HINT = "save its state_dict instead (torch.save(net.state_dict(), PATH)) and convert that"


# ---------------------------------------------------------------------------------------------
# Reading torch.save's zip archives without running their pickle.


def _bfloat16() -> np.dtype:
    import ml_dtypes  # a dependency of jax; only bfloat16 files need it

    return np.dtype(ml_dtypes.bfloat16)


# torch's storage classes and dtypes (as pickled, `torch.<name>`) -> numpy dtype names.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",  # raw bytes; the tensor (_rebuild_tensor_v3) names its dtype
}
_TORCH_DTYPES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "short": "int16",
    "int8": "int8", "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "bool": "bool",
}  # fmt: skip


def _numpy_dtype(name: str, byteorder: str) -> np.dtype:
    dtype = _bfloat16() if name == "bfloat16" else np.dtype(name)
    return dtype.newbyteorder("<" if byteorder == "little" else ">") if dtype.itemsize > 1 else dtype


@dataclasses.dataclass(frozen=True)
class _DType:
    """What `torch.FloatStorage` or `torch.float32` unpickles to here: a dtype name."""

    name: str

    def __setstate__(self, state: Any) -> None:
        raise ConversionError("malformed pickle: it sets the state of a dtype")


class _Storage:
    """A storage record of the archive as a flat numpy array, and the archive's byte order."""

    __slots__ = ("array", "byteorder")

    def __init__(self, array: np.ndarray, byteorder: str):
        self.array, self.byteorder = array, byteorder

    def __setstate__(self, state: Any) -> None:
        raise ConversionError("malformed pickle: it sets the state of a storage")


class StandIn:
    """An object of an allowed class (a torch.nn layer, the tutorial's MyLeNet or Reshape).

    Holds the attribute dict the pickle gives it and runs nothing: no __init__ of the real
    class, no forward. `class_name` is the pickled `module.Class`.
    """

    class_name = ""
    # Until the pickle sets them (NEWOBJ creates the object without calling __init__); never
    # mutated, only replaced.
    attributes: Mapping[str, Any] = types.MappingProxyType({})

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise ConversionError(f"malformed pickle: the state of a {self.class_name} is not a dict")
        self.attributes = dict(state)

    @property
    def type_name(self) -> str:
        return self.class_name.rsplit(".", 1)[-1]

    def mapping(self, name: str) -> Mapping[Any, Any]:
        """The attribute `name` (_parameters, _modules, ...), checked to be a dict."""
        value = self.attributes.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConversionError(
                f"malformed pickle: {name} of a {self.class_name} is a {type(value).__name__}"
            )
        return value

    def children(self) -> list[tuple[str, StandIn]]:
        modules = self.mapping("_modules")
        return [(str(name), child) for name, child in modules.items() if isinstance(child, StandIn)]


def _check_ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise ConversionError(f"malformed tensor in the pickle: its {what} is {value!r}")
    return tuple(value)


def _rebuild_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None = None
) -> np.ndarray:
    """The tensor `storage[offset:]` viewed with size and stride (in elements), copied."""
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise ConversionError("malformed tensor in the pickle: bad storage or offset")
    size, stride = _check_ints(size, "size"), _check_ints(stride, "stride")
    array = storage.array
    if dtype is not None:  # an untyped (byte) storage viewed as `dtype`
        target = _numpy_dtype(dtype, storage.byteorder)
        if len(array) % target.itemsize:
            raise ConversionError(f"malformed tensor in the pickle: {len(array)} bytes is no whole {dtype}")
        array = array.view(target)
    if len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise ConversionError(f"malformed tensor in the pickle: size {size}, stride {stride}")
    if math.prod(size) * array.itemsize > _MAX_RECORD_BYTES:  # e.g. a huge broadcast view
        raise ConversionError(f"malformed tensor in the pickle: size {size} is far beyond LeNet's")
    if 0 in size:
        return np.zeros(size, array.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= len(array):
        raise ConversionError(
            f"malformed tensor in the pickle: size {size} and stride {stride} at offset {offset} "
            f"reach past its storage of {len(array)} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        array[offset:], size, [s * array.itemsize for s in stride], writeable=False
    )
    return np.array(view)  # a copy: contiguous, independent of the archive's bytes


def _rebuild_tensor_v1(storage, offset, size, stride):
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(
    storage, offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):  # fmt: skip
    if not isinstance(dtype, _DType):
        raise ConversionError(f"malformed tensor in the pickle: dtype {dtype!r}")
    return _rebuild_tensor(storage, offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    if not isinstance(data, np.ndarray):
        raise ConversionError("malformed parameter in the pickle: its data is not a tensor")
    return data


_TORCH_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v1,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol 2 names builtins the Python 2 way
}
# The tutorial's own classes, importable as `model.X` or pickled from a script as `__main__.X`.
_TUTORIAL_CLASSES = {(module, name) for module in ("model", "__main__") for name in ("MyLeNet", "Reshape")}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch.save pickle with only the names it needs (see the module docstring)."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, byteorder: str, source: Path):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder, self._source = archive, prefix, byteorder, source
        self._storages: dict[str, _Storage] = {}
        self._stand_ins: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TORCH_FUNCTIONS:
            return _TORCH_FUNCTIONS[(module, name)]
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _DType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _DType(_TORCH_DTYPES[name])
        # Every torch.nn layer class becomes an inert stand-in: nothing of the real class runs,
        # and the architecture check afterwards names any layer LeNet does not have.
        is_layer = module.startswith("torch.nn.modules.") and _IDENTIFIER.match(name)
        if is_layer or (module, name) in _TUTORIAL_CLASSES:
            key = (module, name)
            if key not in self._stand_ins:
                self._stand_ins[key] = type(name, (StandIn,), {"class_name": f"{module}.{name}"})
            return self._stand_ins[key]
        raise ConversionError(
            f"refusing {self._source}: its pickle names {module}.{name}, which a PyTorch checkpoint "
            "of the tutorial's LeNet never needs (only torch tensors, torch.nn layers and "
            "model.MyLeNet / model.Reshape); nothing in the file was run. If it is your own "
            f"model class, {_STATE_DICT_HINT}"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ConversionError(f"malformed pickle: unknown persistent id {str(pid)[:80]}")
        _, dtype, key, _location, numel = pid  # any location (cpu, cuda:0, mps): bytes are bytes
        if not isinstance(dtype, _DType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise ConversionError(f"malformed pickle: storage id {str(pid)[:80]}")
        if key not in self._storages:
            dtype = _numpy_dtype(dtype.name, self._byteorder)
            data = _read_record(self._archive, f"{self._prefix}data/{key}", self._source)
            if len(data) < numel * dtype.itemsize:
                raise ConversionError(
                    f"{self._source} is damaged: storage {key} holds {len(data)} bytes, its "
                    f"tensor needs {numel * dtype.itemsize}"
                )
            self._storages[key] = _Storage(np.frombuffer(data, dtype, numel), self._byteorder)
        return self._storages[key]


def _read_record(archive: zipfile.ZipFile, name: str, source: Path) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ConversionError(f"{source} is damaged: its archive has no record {name}") from None
    limit = _MAX_HEADER_BYTES if name.endswith(".pkl") else _MAX_RECORD_BYTES
    if info.file_size > limit:
        raise ConversionError(
            f"{source} is not the tutorial's LeNet: its record {name} holds {info.file_size:,} bytes "
            f"(LeNet's weights are 250 KB)"
        )
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise ConversionError(f"{source} is damaged ({e}): copy or save it again") from None


# torch.save's format before PyTorch 1.6 (and with _use_new_zipfile_serialization=False): a
# pickled magic number, then pickles of its own.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _open_zip(path: Path) -> zipfile.ZipFile:
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head.startswith(_LEGACY_MAGIC):
        raise ConversionError(
            f"{path} is in torch.save's legacy format (PyTorch < 1.6, or "
            "_use_new_zipfile_serialization=False), which is not read: save it again with a "
            "current PyTorch (torch.save(net.state_dict(), PATH)) and convert that"
        )
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        if head.startswith(b"PK"):
            raise ConversionError(
                f"{path} is damaged: a zip archive without its end (truncated?): copy or save it again"
            ) from None
        raise ConversionError(
            f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a "
            "safetensors file): pass a .pth / .pt file written by torch.save"
        ) from None


# What a damaged or hostile pickle can raise in the unpickler or in the functions it calls.
_PICKLE_ERRORS = (
    pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, KeyError, IndexError,
    OverflowError, RecursionError, struct.error, UnicodeDecodeError,
)  # fmt: skip


def read_torch_pickle(path: str | os.PathLike) -> Any:
    """The object torch.save pickled into the zip archive at path, read without running it:
    tensors as numpy arrays, modules as StandIn objects."""
    path = Path(path)
    with _open_zip(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            torchscript = any(n.endswith("constants.pkl") or "/code/" in n for n in names)
            what = "a TorchScript archive (torch.jit.save)" if torchscript else "not a torch.save archive"
            raise ConversionError(f"{path} is {what}: {_STATE_DICT_HINT}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = _read_record(archive, f"{prefix}byteorder", path).decode(errors="replace").strip()
            if byteorder not in ("little", "big"):
                raise ConversionError(f"{path} is damaged: unknown byte order {byteorder[:20]!r}")
        data = _read_record(archive, pickles[0], path)
        unpickler = _RestrictedUnpickler(io.BytesIO(data), archive, prefix, byteorder, path)
        try:
            return unpickler.load()
        except ConversionError:
            raise
        except _PICKLE_ERRORS as e:
            raise ConversionError(
                f"{path} is damaged or not a PyTorch checkpoint (its pickle: {type(e).__name__}: "
                f"{str(e)[:100]}): copy or save it again"
            ) from None


# ---------------------------------------------------------------------------------------------
# safetensors: an 8-byte little-endian header length, a JSON header, the tensors' bytes.

_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
    "U64": "uint64", "BOOL": "bool",
}  # fmt: skip


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return size <= _MAX_HEADER_BYTES


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors of a .safetensors file (in the order of their bytes) and its metadata."""
    path = Path(path)
    data = path.read_bytes()
    damaged = f"{path} is not a valid safetensors file"
    if len(data) < 8:
        raise ConversionError(f"{damaged}: it is {len(data)} bytes long")
    (size,) = struct.unpack("<Q", data[:8])
    if 8 + size > len(data):
        raise ConversionError(f"{damaged}: its header claims {size:,} bytes, the file is shorter")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{damaged}: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{damaged}: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(data)[8 + size :]
    entries = []
    for name, entry in header.items():
        try:
            dtype = _numpy_dtype(_SAFETENSORS_DTYPES[entry["dtype"]], "little")
            shape = _check_ints(entry["shape"], f"{name} shape")
            begin, end = _check_ints(entry["data_offsets"], f"{name} offsets")
        except (KeyError, TypeError, ValueError, ConversionError):
            raise ConversionError(f"{damaged}: bad header entry for {name!r}") from None
        if not 0 <= begin <= end <= len(body) or end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise ConversionError(
                f"{damaged}: {name!r}'s bytes {begin}-{end} fit neither its shape nor the file"
            )
        entries.append((begin, name, np.frombuffer(body[begin:end], dtype).reshape(shape).copy()))
    return {name: array for _, name, array in sorted(entries, key=lambda e: e[0])}, metadata


def write_safetensors(
    path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str]
) -> None:
    """Writes tensors (in this order) as a .safetensors file, little-endian, as the format says."""
    names = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    chunks, offset = [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        chunk = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": names[array.dtype.name],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(chunk)],
        }
        chunks.append(chunk)
        offset += len(chunk)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to keep the data aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in chunks:
            f.write(chunk)


# ---------------------------------------------------------------------------------------------
# From whatever the file holds to LeNet's parameters.


@dataclasses.dataclass
class TorchWeights:
    """The state_dict found in a PyTorch file, and what it was found in."""

    state_dict: dict[str, np.ndarray]
    format: str  # "torch.save" or "safetensors"
    contents: str  # e.g. "pickled module model.MyLeNet" or "state_dict"


# Far beyond any LeNet: a pickle can make a module contain itself, or one module many times.
_MAX_MODULE_DEPTH = 32
_MAX_MODULES = 1000


def _walk(module: StandIn) -> list[tuple[str, StandIn]]:
    """(qualified name, module) of module and all its submodules, depth first, as named_modules."""
    found: list[tuple[str, StandIn]] = []
    stack = [("", module, 0)]
    while stack:
        path, sub, depth = stack.pop()
        if depth > _MAX_MODULE_DEPTH or len(found) >= _MAX_MODULES:
            raise ConversionError(
                f"malformed pickle: modules nested deeper than {_MAX_MODULE_DEPTH} or more than "
                f"{_MAX_MODULES} of them (a cycle?)"
            )
        found.append((path, sub))
        children = [(f"{path}.{name}" if path else name, child, depth + 1) for name, child in sub.children()]
        stack.extend(reversed(children))
    return found


def _module_state_dict(module: StandIn) -> dict[str, np.ndarray]:
    """What module.state_dict() would return: parameters and persistent buffers, depth first."""
    state: dict[str, np.ndarray] = {}
    for path, sub in _walk(module):
        prefix = f"{path}." if path else ""
        skipped = sub.attributes.get("_non_persistent_buffers_set")
        skipped = skipped if isinstance(skipped, (set, frozenset)) else set()
        for group in ("_parameters", "_buffers"):
            for name, value in sub.mapping(group).items():
                if value is not None and not (group == "_buffers" and name in skipped):
                    state[f"{prefix}{name}"] = value
    return state


def _leaf_layers(module: StandIn) -> list[tuple[str, StandIn]]:
    return [(path, sub) for path, sub in _walk(module) if not sub.children()]


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def check_tutorial_module(module: StandIn, source: Path) -> None:
    """Raises ConversionError unless the pickled module computes the tutorial's LeNet."""
    layers = [(name, layer) for name, layer in _leaf_layers(module) if layer.type_name != "Reshape"]
    kinds = [layer.type_name for _, layer in layers]
    expected = " -> ".join(TUTORIAL_LAYER_TYPES)
    for i, (name, layer) in enumerate(layers):
        want = TUTORIAL_LAYER_TYPES[i] if i < len(TUTORIAL_LAYER_TYPES) else None
        if layer.type_name != want:
            where = f"layer {name or '(top)'} is {layer.type_name}"
            where += f" where the tutorial's is {want}" if want else ""
            raise ConversionError(
                f"{source} is not the tutorial's LeNet ({expected}): {where}. Only that "
                f"architecture converts; if yours computes the same function, {_STATE_DICT_HINT}"
            )
        for attribute, value in _LAYER_ATTRIBUTES.get(i, {}).items():
            actual = _as_tuple(layer.attributes.get(attribute, value))
            if actual != value and not (isinstance(value, int) and actual == (value, value)):
                raise ConversionError(
                    f"{source} is not the tutorial's LeNet: layer {name} ({layer.type_name}) has "
                    f"{attribute}={actual!r} where the tutorial's has {value!r}"
                )
    if len(kinds) < len(TUTORIAL_LAYER_TYPES):
        raise ConversionError(
            f"{source} is not the tutorial's LeNet ({expected}): its layers are "
            f"{' -> '.join(kinds) or 'none'}"
        )


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items())
    )


def read_torch_weights(path: str | os.PathLike) -> TorchWeights:
    """The state_dict in a PyTorch file (torch.save zip archive or safetensors), unconverted.

    A pickled module must be the tutorial's architecture (checked layer by layer); a dict that
    is not itself a state_dict (e.g. {"epoch": ..., "model_state_dict": ...}) must hold exactly
    one module or state_dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConversionError(f"{path} does not exist or is not a file: pass the .pth file to convert")
    try:
        if _is_safetensors(path):
            tensors, _ = read_safetensors(path)
            return TorchWeights(tensors, "safetensors", "state_dict")
        obj = read_torch_pickle(path)
    except OSError as e:
        raise ConversionError(f"cannot read {path} ({e.strerror or e}): check its permissions") from e
    where = ""
    if isinstance(obj, dict) and not _is_state_dict(obj):
        found = [(k, v) for k, v in obj.items() if isinstance(v, StandIn) or _is_state_dict(v)]
        if len(found) != 1:
            keys = ", ".join(repr(k)[:40] for k in list(obj)[:8])
            what = "none" if not found else f"{len(found)} ({', '.join(repr(k) for k, _ in found)})"
            raise ConversionError(
                f"{path} holds a dict (keys {keys}) with {what} of state_dicts or models where one "
                "is needed: save just the model's state_dict (torch.save(net.state_dict(), PATH))"
            )
        where = f" in entry {found[0][0]!r}"
        obj = found[0][1]
    if isinstance(obj, StandIn):
        check_tutorial_module(obj, path)
        return TorchWeights(_module_state_dict(obj), "torch.save", f"pickled module {obj.class_name}{where}")
    if _is_state_dict(obj):
        return TorchWeights(dict(obj), "torch.save", f"state_dict{where}")
    raise ConversionError(
        f"{path} holds a {type(obj).__name__}, not a model or a state_dict: save the model's "
        "state_dict (torch.save(net.state_dict(), PATH)) and convert that"
    )


def _layer_prefixes(state_dict: dict[str, np.ndarray], source: Path) -> dict[str, str]:
    """Our layer name -> its key prefix in state_dict (the tutorial's, else matched by shape)."""
    keys = list(state_dict)
    # nn.DataParallel saves its wrapped module's keys under "module.".
    lead = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    if any(k.startswith(f"{lead}model.") for k in keys):
        return {ours: lead + prefix for ours, prefix, _ in LAYERS}
    by_shape = {shape: ours for ours, _, shape in LAYERS}
    prefixes: dict[str, str] = {}
    for key in keys:
        if not key.endswith(".weight"):
            continue
        shape = tuple(state_dict[key].shape)
        ours = by_shape.get(shape)
        if ours is None or ours in prefixes:
            raise ConversionError(
                f"{source} is not the tutorial's LeNet: its weight {key!r} has shape {shape}, "
                f"which {'another weight has too' if ours else 'none of LeNet weights has'} (LeNet: "
                f"{', '.join(f'{p}.weight {s}' for _, p, s in LAYERS)})"
            )
        prefixes[ours] = key[: -len(".weight")]
    return prefixes


def lenet_params_from_torch(
    state_dict: dict[str, np.ndarray], source: str | os.PathLike = "the file"
) -> dict:
    """LeNet's Flax params (numpy, float32) from a PyTorch state_dict of the tutorial's network."""
    source = Path(source)
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise ConversionError(f"{source}: its state_dict entry {key!r} is not a tensor")
    prefixes = _layer_prefixes(state_dict, source)
    expected_keys = {}
    for ours, _, shape in LAYERS:
        prefix = prefixes.get(ours)
        if prefix is None:
            raise ConversionError(
                f"{source} is not the tutorial's LeNet: no weight of shape {shape} ({ours}) in its "
                f"state_dict (keys: {', '.join(list(state_dict)[:12])})"
            )
        expected_keys[f"{prefix}.weight"] = shape
        expected_keys[f"{prefix}.bias"] = shape[:1]
    for key, shape in expected_keys.items():
        if key not in state_dict:
            raise ConversionError(
                f"{source} is not a complete LeNet state_dict: key {key!r} (shape {shape}) is "
                "missing: convert the file torch.save wrote, unedited"
            )
        actual = tuple(state_dict[key].shape)
        if actual != shape:
            raise ConversionError(
                f"{source} is not the tutorial's LeNet: {key!r} has shape {actual}, the tutorial's "
                f"MyLeNet has {shape}"
            )
        dtype = state_dict[key].dtype
        if not np.issubdtype(dtype, np.floating) and dtype.name != "bfloat16":
            raise ConversionError(f"{source}: {key!r} holds {dtype}, not floating-point weights")
    extra = [k for k in state_dict if k not in expected_keys]
    if extra:
        raise ConversionError(
            f"{source} is not the tutorial's LeNet: its state_dict has keys LeNet does not have "
            f"({', '.join(extra[:6])}{', ...' if len(extra) > 6 else ''})"
        )

    def weights(ours: str) -> tuple[np.ndarray, np.ndarray]:
        prefix = prefixes[ours]
        return (
            np.asarray(state_dict[f"{prefix}.weight"], np.float32),
            np.asarray(state_dict[f"{prefix}.bias"], np.float32),
        )

    params = {}
    for ours in ("conv1", "conv2"):
        w, b = weights(ours)
        kernel = np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        params[ours] = {"kernel": kernel, "bias": b.copy()}
    w, b = weights("dense1")
    # (out, C*H*W) -> rows in our H,W,C flatten order -> (H*W*C, out)
    kernel = w.T.reshape(*CONV_FEATURES, -1).transpose(1, 2, 0, 3).reshape(w.shape[1], w.shape[0])
    params["dense1"] = {"kernel": np.ascontiguousarray(kernel), "bias": b.copy()}
    for ours in ("dense2", "dense3"):
        w, b = weights(ours)
        params[ours] = {"kernel": np.ascontiguousarray(w.T), "bias": b.copy()}
    return params


def torch_state_dict_from_lenet(params: Any) -> dict[str, np.ndarray]:
    """The tutorial MyLeNet's state_dict (keys model.1.weight, ...; float32) from LeNet's params."""
    p = {layer: {name: np.asarray(value, np.float32) for name, value in values.items()}
         for layer, values in params.items()}  # fmt: skip
    expected = {"conv1", "conv2", "dense1", "dense2", "dense3"}
    if set(p) != expected:
        raise ConversionError(
            f"the checkpoint's params have layers {sorted(p)}, not the tutorial's {sorted(expected)}"
        )
    dense1 = p["dense1"]["kernel"]  # (H*W*C, out) -> (out, C*H*W)
    c, h, w = CONV_FEATURES
    dense1 = dense1.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1).T
    torch_weights = {
        "conv1": p["conv1"]["kernel"].transpose(3, 2, 0, 1),  # HWIO -> OIHW
        "conv2": p["conv2"]["kernel"].transpose(3, 2, 0, 1),
        "dense1": dense1,
        "dense2": p["dense2"]["kernel"].T,
        "dense3": p["dense3"]["kernel"].T,
    }
    state_dict = {}
    for ours, prefix, shape in LAYERS:
        weight = np.ascontiguousarray(torch_weights[ours])
        if weight.shape != shape:
            raise ConversionError(f"the checkpoint's {ours} has PyTorch shape {weight.shape}, not {shape}")
        state_dict[f"{prefix}.weight"] = weight
        state_dict[f"{prefix}.bias"] = np.ascontiguousarray(p[ours]["bias"])
    return state_dict


# ---------------------------------------------------------------------------------------------
# Into a workdir of this project, and back out.


@dataclasses.dataclass
class ImportResult:
    """Where import_torch_checkpoint wrote the checkpoint, and the source it recorded."""

    workdir: Path
    epoch: int
    step: int
    source: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def epoch_from_name(path: str | os.PathLike) -> int | None:
    """The epoch in a file name as the tutorial writes them (net_3.pth -> 3), else None."""
    match = re.search(r"(\d+)$", Path(path).stem)
    return int(match.group(1)) if match else None


def import_torch_checkpoint(
    path: str | os.PathLike, workdir: str | os.PathLike, epoch: int | None = None
) -> ImportResult:
    """Writes the tutorial's weights in `path` as epoch `epoch` of a checkpoint in `workdir`.

    The checkpoint is complete, like one of training: the recipe's config (the tutorial's
    model and optimizer), a fresh optimizer state, step = epoch x 938 (the tutorial's batches
    per epoch), the imported params; its meta records the source file and its sha256. epoch
    defaults to the number ending the file name (net_3.pth: 3), else 1. A workdir holding
    checkpoints is refused unless an epoch it does not hold is given; nothing is overwritten.
    A run resumed from it trains on this project's data (its `dataset` says it was imported).
    """
    from lenet_jax.checkpoints import Checkpoints
    from lenet_jax.config import Config
    from lenet_jax.provenance import provenance
    from lenet_jax.workdir import CONFIG_FILE, IMPORTED_DATASET, workdir_lock, write_config

    path = Path(path).expanduser().resolve()
    weights = read_torch_weights(path)
    params = lenet_params_from_torch(weights.state_dict, path)
    workdir = Path(workdir).expanduser().resolve()
    given = epoch is not None
    epoch = epoch if given else (epoch_from_name(path) or 1)
    if epoch < 0:
        raise ConversionError(f"--epoch must be >= 0, not {epoch}")
    config = Config()
    _check_workdir_takes(workdir, epoch, given, config)
    state = _imported_state(config, params, epoch)
    source = {
        "kind": "pytorch",
        "file": str(path),
        "sha256": _sha256(path),
        "format": weights.format,
        "contents": weights.contents,
    }
    record = {"config": config.to_record(), "optimizer_source": {"kind": "config"}}
    meta = {"epoch": epoch, "step": int(state.step), **record, "dataset": IMPORTED_DATASET}
    meta = {**meta, "metrics": {}, "source": source, "provenance": provenance()}
    with workdir_lock(workdir):  # never into a run that is training there
        with Checkpoints(workdir) as checkpoints:
            checkpoints.save(epoch, state, meta)
        if not (workdir / CONFIG_FILE).is_file():
            write_config(workdir, {**record, "source": source})
    return ImportResult(workdir=workdir, epoch=epoch, step=int(state.step), source=source)


def _check_workdir_takes(workdir: Path, epoch: int, given: bool, config: Any) -> None:
    """ConversionError unless `workdir` can take epoch `epoch` of `config`'s run (created)."""
    from lenet_jax.checkpoints import Checkpoints, checkpoint_dir
    from lenet_jax.workdir import CONFIG_FILE, read_config

    existing = []
    if checkpoint_dir(workdir).is_dir():
        with Checkpoints(workdir, read_only=True) as held:
            existing = held.epochs()
    if existing and (not given or epoch in existing):
        fix = (
            f"epoch {epoch} is taken; pass --epoch with another number"
            if given
            else "pass --epoch N with a number it does not hold to add this file next to them"
        )
        raise ConversionError(
            f"{workdir} already holds checkpoints (epochs {', '.join(map(str, existing))}): {fix}, "
            "or another --workdir"
        )
    if (workdir / CONFIG_FILE).is_file() and _read_json(workdir / CONFIG_FILE) is not None:
        if read_config(workdir) != config.to_record():
            raise ConversionError(
                f"{workdir} holds a run of another config ({CONFIG_FILE}): imports are the "
                "tutorial's recipe; pass another --workdir"
            )
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(
            f"cannot create workdir {workdir} ({e.strerror}): pass another --workdir"
        ) from e


def _imported_state(config: Any, params: Any, epoch: int) -> Any:
    """A complete train state of the recipe with the imported params, at the tutorial's step."""
    # Imported here: reading the file needs numpy only, writing the checkpoint needs JAX.
    import jax
    import jax.numpy as jnp

    from lenet_jax.data import num_batches
    from lenet_jax.model import init_params, model_from_config
    from lenet_jax.optimizers import build_optimizer
    from lenet_jax.steps import create_train_state

    model = model_from_config(config)
    steps_per_epoch = num_batches(TUTORIAL_TRAIN_IMAGES, config.batch_size)
    optimizer = build_optimizer(config, steps_per_epoch)
    abstract = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
    shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), abstract)
    assert jax.tree_util.tree_map(lambda a: a.shape, params) == shapes, "conversion bug: params mismatch"
    state = create_train_state(model, optimizer, jax.random.PRNGKey(config.seed))
    step = jnp.asarray(epoch * steps_per_epoch, jnp.int32)
    return state.replace(step=step, params=jax.tree_util.tree_map(jnp.asarray, params))


def _read_json(path: Path) -> Any:
    from lenet_jax.small_files import read_small_file

    try:
        return json.loads(read_small_file(path))
    except (OSError, ValueError):  # FileRefused is a ValueError
        return None


def architecture_differences(config: Any) -> list[str]:
    """The architecture fields in which config differs from the tutorial's (the recipe's)."""
    from lenet_jax.config import Config

    recipe = Config()
    return [
        f"{name} {getattr(config, name)!r}, not {getattr(recipe, name)!r}"
        for name in ARCHITECTURE_FIELDS
        if getattr(config, name) != getattr(recipe, name)
    ]


@dataclasses.dataclass
class ExportResult:
    """What export_torch_checkpoint wrote: the file, the epoch, its format, averaged weights."""

    out: Path
    epoch: int
    format: str
    averaged: bool


def export_torch_checkpoint(
    workdir: str | os.PathLike, out: str | os.PathLike, epoch: int | None = None, force: bool = False
) -> ExportResult:
    """Writes one epoch's weights (newest by default) as the tutorial MyLeNet's state_dict.

    `.safetensors` needs nothing more; `.pt` / `.pth` is written with torch.save and needs
    PyTorch. The weights are those evaluate.py evaluates (a run's moving average when it kept
    one). Checkpoints of another architecture than the tutorial's are refused.
    """
    import jax

    from lenet_jax.checkpoints import load_weights

    out = Path(out).expanduser()
    suffix = out.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise ConversionError(f"--out {out} must end in .safetensors, .pt or .pth (the format to write)")
    if out.exists() and not force:
        raise ConversionError(f"{out} exists: pass another --out, or --force to replace it")
    if suffix != ".safetensors":
        try:
            import torch
        except ImportError:
            raise ConversionError(
                f"writing {out} needs PyTorch, which is not installed: install it (pip install "
                "torch), or write a .safetensors file (loaded with safetensors.torch.load_file)"
            ) from None
    restored = load_weights(workdir, epoch, averaged=True)
    differences = architecture_differences(restored.config)
    if differences:
        raise ConversionError(
            f"epoch {restored.epoch} of {workdir} is not the tutorial's architecture "
            f"({'; '.join(differences)}): its MyLeNet could not hold it; only checkpoints of the "
            "recipe's architecture export"
        )
    state_dict = torch_state_dict_from_lenet(jax.device_get(restored.params))
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        if suffix == ".safetensors":
            metadata = {"format": "pt", "source": str(Path(workdir).resolve()), "epoch": str(restored.epoch)}
            write_safetensors(tmp, state_dict, metadata)
        else:
            tensors = collections.OrderedDict((k, torch.from_numpy(v.copy())) for k, v in state_dict.items())
            torch.save(tensors, tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise ConversionError(f"cannot write {out} ({e.strerror}): pass another --out") from e
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out=out, epoch=restored.epoch, format=suffix[1:], averaged=restored.averaged)
