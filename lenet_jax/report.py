"""The report of an evaluation: its figures drawn by `lenet_jax.figures` in a process without JAX
(matplotlib beside JAX would take the report past 300 MB: docs/performance.md)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lenet_jax.errors import LenetError, storage_fault
from lenet_jax.run_log import read_rows

# -P and the path appended: this lenet_jax, never a folder of that name where the command runs.
_DRAW = "import sys; sys.path.append({root!r}); import lenet_jax.figures as f; f.main()"


def report_folder(out_dir: str | os.PathLike) -> Path:
    """out_dir, created (before the evaluation: a folder that cannot be made fails at once)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as e:
        if storage_fault(e) is not None:
            raise
        raise LenetError(
            f"cannot create the report folder {out} ({getattr(e, 'strerror', None) or e}): pass "
            "another --report folder"
        ) from None
    return out


def draw_report(out: Path, workdirs: Sequence[str | os.PathLike], epoch: int, **arrays: Any) -> list[str]:
    """Writes the report's files into out, once all are drawn; returns their names. arrays: the test
    images, labels and probabilities, and conv1's kernel; the curves: each workdir's metrics rows."""
    runs, note = {}, lambda line: print(line, file=sys.stderr)  # noqa: E731
    for path in map(Path, workdirs):  # legend names: the folder's, or its path where two share one
        runs[str(path) if path.name in runs else path.name] = read_rows(path, note)
    inputs = io.BytesIO()
    np.savez(inputs, runs=json.dumps(runs), workdir=str(workdirs[0]), epoch=epoch, **arrays)
    command = [sys.executable, "-P", "-c", _DRAW.format(root=str(Path(__file__).parents[1]))]
    drawn = subprocess.run(command, input=inputs.getbuffer(), stdout=subprocess.PIPE, check=False)
    if drawn.returncode:  # its traceback went to stderr
        raise RuntimeError(f"the process drawing the report failed (exit status {drawn.returncode})")
    files = np.load(io.BytesIO(drawn.stdout))
    for name in files.files:
        (out / name).write_bytes(files[name].tobytes())
    return sorted(files.files)
