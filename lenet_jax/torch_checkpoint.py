"""The tutorial's PyTorch LeNet files: read safely (an allow-list unpickler, no torch), imported, exported."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from lenet_jax.errors import ConversionError

# The tutorial's layers with weights: (our name, its key prefix in MyLeNet's state_dict, the PyTorch shape).
LAYERS = (
    ("conv1", "model.1", (6, 1, 5, 5)),
    ("conv2", "model.4", (16, 6, 5, 5)),
    ("dense1", "model.8", (120, 400)),
    ("dense2", "model.9", (84, 120)),
    ("dense3", "model.10", (10, 84)),
)
# The Config fields of the architecture, which must be the recipe's for MyLeNet to hold it.
ARCHITECTURE_FIELDS = ("activation", "pool", "dense_activation", "feature_norm")
TUTORIAL_STEPS_PER_EPOCH = 938  # 60,000 images in batches of 64: an imported epoch N is step N * 938
MAX_STEP = 2**31 - 1  # the train state's step is an int32
MAX_EPOCH = MAX_STEP // TUTORIAL_STEPS_PER_EPOCH
MAX_FILE_BYTES = 64 << 20  # LeNet's file is 250 KB: a larger one (or record) is not read
_STATE_DICT_HINT = "save its state_dict instead (torch.save(net.state_dict(), PATH)) and convert that"


def _not_lenet(source: Any, why: str) -> ConversionError:
    return ConversionError(f"{source} is not the tutorial's LeNet: {why}")


class _Module:
    """An allowed torch.nn.Module, inert: the attribute dict its pickle sets, nothing run."""

    class_name: str  # "torch.nn.modules.conv.Conv2d": set in _ALLOWED, one subclass per allowed name
    state: dict[str, Any] = {}  # replaced by the pickle's, never mutated

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self, prefix: str = "", depth: int = 0) -> dict[str, Any]:
        """What torch's module.state_dict() returns: its parameters and its submodules', depth first."""
        if depth > 8:  # MyLeNet is 2 deep; a pickle can make a module contain itself
            raise ConversionError("malformed pickle: modules nested more than 8 deep (a cycle?)")
        state = {}
        for group in ("_parameters", "_buffers", "_modules"):
            for name, value in self.state.get(group, {}).items():
                if isinstance(value, _Module):
                    state.update(value.state_dict(f"{prefix}{name}.", depth + 1))
                elif value is not None:
                    state[f"{prefix}{name}"] = value
        return state


def _rebuild_tensor(storage, offset, size, stride, *_) -> np.ndarray:
    """The contiguous tensor of `size` at `offset` in storage (as torch.save writes parameters)."""
    ints = isinstance(size, tuple) and all(type(n) is int and n >= 0 for n in (offset, *size))
    if not (ints and stride == tuple(math.prod(size[i + 1 :]) for i in range(len(size)))):
        raise ConversionError(f"malformed tensor in the pickle: size {size}, stride {stride}")
    end = offset + math.prod(size)
    if end > len(storage):
        raise ConversionError(f"malformed tensor in the pickle: size {size} reaches past its storage")
    return storage[offset:end].reshape(size).copy()


_STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16"}
# The classes pickled by torch.save(net) of the tutorial's MyLeNet (its model.py, or __main__).
_MODULE_CLASSES = (
    ("torch.nn.modules.container", "Sequential"), ("torch.nn.modules.conv", "Conv2d"),
    ("torch.nn.modules.activation", "Sigmoid"), ("torch.nn.modules.pooling", "AvgPool2d"),
    ("torch.nn.modules.flatten", "Flatten"), ("torch.nn.modules.linear", "Linear"),
    *((owner, name) for owner in ("model", "__main__") for name in ("MyLeNet", "Reshape")),
)  # fmt: skip
# Every name the unpickler resolves, and what to (inert stand-ins); any other is refused before it runs.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{(builtins, "set"): set for builtins in ("builtins", "__builtin__")},  # protocol 2: Python 2's name
    **{("torch", name): dtype for name, dtype in _STORAGE_DTYPES.items()},
    **{key: type(key[1], (_Module,), {"class_name": ".".join(key)}) for key in _MODULE_CLASSES},
}  # fmt: skip


class _Unpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, source: Path):
        pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ConversionError(f"{source} is not a torch.save archive: {_STATE_DICT_HINT}")
        self._archive, self._prefix, self._source = archive, pickles[0].removesuffix("data.pkl"), source
        super().__init__(self._record("data.pkl"))
        byteorder = b"little"  # an archive without the record is little-endian
        if f"{self._prefix}byteorder" in archive.namelist():
            byteorder = self._record("byteorder").read().strip()
        self._order = "<" if byteorder == b"little" else ">"

    def _record(self, name: str) -> Any:
        name = self._prefix + name
        if name not in self._archive.namelist():
            raise ConversionError(f"{self._source} is not a torch.save archive of LeNet (no record {name})")
        if self._archive.getinfo(name).file_size > MAX_FILE_BYTES:
            raise _not_lenet(self._source, f"its record {name} is too large")
        return self._archive.open(name)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        raise ConversionError(
            f"refusing {self._source}: its pickle names {module}.{name}, which a PyTorch file of the "
            "tutorial's LeNet (its MyLeNet or its state_dict) never needs; nothing in the file was "
            f"run. If it is your own model, {_STATE_DICT_HINT}"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        # ("storage", dtype, record, location, numel); any location (cpu, cuda:0, mps): bytes are bytes
        match pid:
            case ("storage", str(dtype), str(key), _, int(numel)) if dtype in _STORAGE_DTYPES.values():
                dtype = np.dtype(dtype).newbyteorder(self._order)
            case _:
                raise ConversionError(f"malformed pickle: unknown persistent id {str(pid)[:80]}")
        return np.frombuffer(self._record(f"data/{key}").read(), dtype, numel)  # ValueError if short


# What a damaged or hostile pickle can raise in the unpickler or in the functions it calls.
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ArithmeticError, LookupError, TypeError, ValueError,
                  AttributeError, RecursionError, NotImplementedError)  # fmt: skip


@dataclasses.dataclass
class TorchWeights:
    """The state_dict in a PyTorch file, what it was found in, and safetensors metadata."""

    state_dict: dict[str, Any]
    format: str  # "torch.save" or "safetensors"
    contents: str  # "pickled module model.MyLeNet" or "state_dict"
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)


def read_torch_weights(path: str | os.PathLike) -> TorchWeights:
    """The state_dict in a PyTorch file (torch.save zip archive or safetensors), unconverted."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConversionError(f"{path} does not exist or is not a file: pass the .pth file to convert")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise _not_lenet(path, "it is larger than 64 MiB")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if head[8:9] == b"{":  # a safetensors header; a zip archive starts "PK"
            return _read_safetensors(path)
        with zipfile.ZipFile(path) as archive:
            obj = _Unpickler(archive, path).load()
        if isinstance(obj, _Module):
            return TorchWeights(obj.state_dict(), "torch.save", f"pickled module {obj.class_name}")
    except zipfile.BadZipFile:
        damaged = head.startswith(b"PK")
        what = "is damaged (truncated?)" if damaged else "is neither a torch.save archive nor safetensors"
        raise ConversionError(f"{path} {what}: pass the .pth file torch.save wrote") from None
    except _PICKLE_ERRORS as e:
        why = f"{type(e).__name__}: {str(e)[:80]}"
        raise ConversionError(f"{path} is damaged ({why}): save it again") from None
    except OSError as e:
        raise ConversionError(f"cannot read {path} ({e.strerror or e}): check its permissions") from e
    if isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return TorchWeights(dict(obj), "torch.save", "state_dict")
    kind = "dict" if isinstance(obj, dict) else type(obj).__name__
    keys = f" (keys {', '.join(repr(k)[:40] for k in list(obj)[:6])})" if isinstance(obj, dict) else ""
    raise ConversionError(f"{path} holds a {kind}{keys}, not a LeNet or its state_dict: {_STATE_DICT_HINT}")


def _read_safetensors(path: Path) -> TorchWeights:
    try:
        with safetensors.safe_open(path, framework="np") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
            return TorchWeights(tensors, "safetensors", "state_dict", f.metadata() or {})
    except (safetensors.SafetensorError, ValueError) as e:
        raise ConversionError(f"{path} is not a valid safetensors file ({e})") from None


# dense1's inputs (conv2's 16x5x5): row i of our kernel (H,W,C) is column _DENSE1_ORDER[i] of torch's (C,H,W)
_DENSE1_ORDER = np.arange(16 * 5 * 5).reshape(16, 5, 5).transpose(1, 2, 0).reshape(-1)


def flax_kernel(layer: str, weight: np.ndarray) -> np.ndarray:
    """A PyTorch weight of `layer` (conv1, ..., dense3) as its Flax kernel."""
    if weight.ndim == 4:
        return weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    return (weight[:, _DENSE1_ORDER] if layer == "dense1" else weight).T  # (out, in) -> (in, out)


def torch_weight(layer: str, kernel: np.ndarray) -> np.ndarray:
    """A Flax kernel of `layer` as its PyTorch weight: `flax_kernel` undone."""
    if kernel.ndim == 4:
        return kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    return (kernel[np.argsort(_DENSE1_ORDER)] if layer == "dense1" else kernel).T


def lenet_params_from_torch(state_dict: dict[str, Any], source: str | os.PathLike = "the file") -> dict:
    """LeNet's Flax params (numpy, float32) from a state_dict of the tutorial's MyLeNet."""
    expected = {f"{prefix}.{name}": shape if name == "weight" else shape[:1]
                for _, prefix, shape in LAYERS for name in ("weight", "bias")}  # fmt: skip
    for key, want in expected.items():
        value = state_dict.get(key)
        if value is None:
            keys = ", ".join(map(str, list(state_dict)[:8]))
            why = f"its state_dict has no {key!r} (shape {want}; its keys: {keys})"
            raise _not_lenet(source, f"{why}: convert the file torch.save wrote")
        if not isinstance(value, np.ndarray) or value.shape != want or value.dtype.kind != "f":
            got = f"shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
            raise _not_lenet(source, f"{key!r} has {got}, the tutorial's MyLeNet has {want} (floating point)")
    if extra := [str(k) for k in state_dict if k not in expected]:
        raise _not_lenet(source, f"its state_dict has keys MyLeNet does not have ({', '.join(extra[:6])})")
    f32 = {key: value.astype(np.float32) for key, value in state_dict.items()}
    kernels = {ours: np.ascontiguousarray(flax_kernel(ours, f32[f"{p}.weight"])) for ours, p, _ in LAYERS}
    return {ours: {"kernel": kernels[ours], "bias": f32[f"{p}.bias"]} for ours, p, _ in LAYERS}


def torch_state_dict_from_lenet(params: Any) -> dict[str, np.ndarray]:
    """The tutorial MyLeNet's state_dict (keys model.1.weight, ...; float32) from LeNet's params."""
    state_dict = {}
    for ours, prefix, _ in LAYERS:
        kernel = np.asarray(params[ours]["kernel"], np.float32)
        state_dict[f"{prefix}.weight"] = np.ascontiguousarray(torch_weight(ours, kernel))
        state_dict[f"{prefix}.bias"] = np.array(params[ours]["bias"], np.float32)  # writable, for torch
    return state_dict


@dataclasses.dataclass
class ImportResult:
    workdir: Path
    epoch: int
    step: int
    source: dict[str, Any]  # the file, its sha256, format and contents, as the checkpoint's meta records


def _epoch_and_step(weights: TorchWeights, path: Path, epoch: int | None) -> tuple[int, int]:
    """The epoch (given, else the file's metadata or name, else 1) and its step, both bounded."""
    written = [weights.metadata.get(k, "") for k in ("epoch", "step")]  # by export_torch_checkpoint
    recorded = all(re.fullmatch(r"[0-9]{1,19}", v) for v in written)  # else not export's (an int64): ignored
    if recorded and epoch in (None, int(written[0])):
        epoch, step = map(int, written)
        if epoch > MAX_EPOCH or step > MAX_STEP:
            beyond = f"records epoch {epoch}, step {step}, beyond a 32-bit step"
            raise ConversionError(f"{path} {beyond}: pass --epoch between 0 and {MAX_EPOCH}")
        return epoch, step
    if epoch is None:
        epoch = int(re.search(r"\d*$", path.stem)[0] or 0) or 1  # the tutorial's net_3.pth: 3
    if not 0 <= epoch <= MAX_EPOCH:
        bounds = f"between 0 and {MAX_EPOCH} (its step, epoch x 938, is a 32-bit integer)"
        raise ConversionError(f"--epoch must be {bounds}, not {epoch}")
    return epoch, epoch * TUTORIAL_STEPS_PER_EPOCH


def import_torch_checkpoint(
    path: str | os.PathLike, workdir: str | os.PathLike, epoch: int | None = None
) -> ImportResult:
    """Writes `path`'s weights as a recipe checkpoint of `epoch` in `workdir`, overwriting nothing."""
    import jax  # here: reading a file needs numpy only, writing a checkpoint needs JAX
    import jax.numpy as jnp

    from lenet_jax.checkpoints import Checkpoints
    from lenet_jax.config import Config
    from lenet_jax.model import model_from_config
    from lenet_jax.optimizers import build_optimizer
    from lenet_jax.provenance import provenance
    from lenet_jax.steps import create_train_state
    from lenet_jax.workdir import CONFIG_FILE, IMPORTED_DATASET, workdir_lock, write_config

    path = Path(path).expanduser().resolve()
    weights = read_torch_weights(path)
    params = lenet_params_from_torch(weights.state_dict, path)
    workdir = Path(workdir).expanduser().resolve()
    given = epoch is not None
    epoch, step = _epoch_and_step(weights, path, epoch)
    config = Config()
    _check_workdir_takes(workdir, epoch, given, config)
    optimizer = build_optimizer(config, TUTORIAL_STEPS_PER_EPOCH)
    state = create_train_state(model_from_config(config), optimizer, jax.random.PRNGKey(config.seed))
    state = state.replace(step=jnp.asarray(step, jnp.int32), params=jax.tree.map(jnp.asarray, params))
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()  # at most 64 MiB: read_torch_weights checked
    source = {"kind": "pytorch", "file": str(path), "sha256": sha256, "format": weights.format,
              "contents": weights.contents}  # fmt: skip
    record = {"config": config.to_record(), "optimizer_source": {"kind": "config"}}
    meta = {"epoch": epoch, "step": step, **record, "dataset": IMPORTED_DATASET}
    meta = {**meta, "metrics": {}, "source": source, "provenance": provenance()}
    with workdir_lock(workdir), Checkpoints(workdir) as checkpoints:  # never into a run training there
        checkpoints.save(epoch, state, meta)
        if not (workdir / CONFIG_FILE).is_file():
            write_config(workdir, {**record, "source": source})
    return ImportResult(workdir=workdir, epoch=epoch, step=step, source=source)


def _check_workdir_takes(workdir: Path, epoch: int, given: bool, config: Any) -> None:
    """Creates `workdir` if it can take epoch `epoch` of `config`'s run, else ConversionError."""
    from lenet_jax.checkpoints import Checkpoints, checkpoint_dir
    from lenet_jax.workdir import CONFIG_FILE, prepare_workdir, read_config

    existing = []
    if checkpoint_dir(workdir).is_dir():
        with Checkpoints(workdir, read_only=True) as held:
            existing = held.epochs()
    if existing and (not given or epoch in existing):
        fix = f"epoch {epoch} is taken; pass --epoch with another number" if given else (
            "pass --epoch N with a number it does not hold to add this file next to them")  # fmt: skip
        held = f"{workdir} already holds checkpoints (epochs {', '.join(map(str, existing))})"
        raise ConversionError(f"{held}: {fix}, or another --workdir")
    if (workdir / CONFIG_FILE).is_file() and read_config(workdir) != config.to_record():
        other = f"{workdir} holds a run of another config ({CONFIG_FILE})"
        raise ConversionError(f"{other}: imports are the tutorial's recipe; pass another --workdir")
    prepare_workdir(workdir)


@dataclasses.dataclass
class ExportResult:
    out: Path
    epoch: int
    format: str  # "safetensors", "pt" or "pth"
    averaged: bool  # the run's moving average of the weights


def export_torch_checkpoint(
    workdir: str | os.PathLike, out: str | os.PathLike, epoch: int | None = None, force: bool = False
) -> ExportResult:
    """Writes an epoch's evaluated weights (default: newest) as MyLeNet's state_dict (.safetensors, .pt)."""
    from lenet_jax.checkpoints import load_weights
    from lenet_jax.config import Config

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
    ours, recipe = vars(restored.config), vars(Config())
    differences = [f"{n} {ours[n]!r}, not {recipe[n]!r}" for n in ARCHITECTURE_FIELDS if ours[n] != recipe[n]]
    if differences:
        unlike = f"is not the tutorial's architecture ({'; '.join(differences)})"
        why = "its MyLeNet could not hold it; only checkpoints of the recipe's architecture export"
        raise ConversionError(f"epoch {restored.epoch} of {workdir} {unlike}: {why}")
    state_dict = torch_state_dict_from_lenet(restored.params)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        if suffix == ".safetensors":
            metadata = {"format": "pt", "source": str(Path(workdir).resolve()),
                        "epoch": str(restored.epoch), "step": str(restored.meta.get("step", ""))}  # fmt: skip
            safetensors.numpy.save_file(state_dict, tmp, metadata)
        else:
            torch.save(collections.OrderedDict((k, torch.from_numpy(v)) for k, v in state_dict.items()), tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise ConversionError(f"cannot write {out} ({e.strerror}): pass another --out") from e
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out=out, epoch=restored.epoch, format=suffix[1:], averaged=restored.averaged)
