"""What a run was made with (versions, device, CPU, git commit), recorded with it: figures traceable."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
VECTOR_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx2", "fma", "avx", "sse4_2", "neon", "asimd")


@functools.cache
def provenance() -> dict[str, Any]:
    """The versions, backend, device kind, CPU model and vector extensions, and git commit."""
    cpu, flags = cpu_description()
    return {
        "versions": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "cpu": cpu,
        "cpu_flags": flags,
        "git_commit": git_commit(),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_description() -> tuple[str, list[str]]:
    """(the CPU model, which of VECTOR_FLAGS it has), from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):  # no /proc/cpuinfo (macOS, Windows)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags.update(value.split())
    return model, [flag for flag in VECTOR_FLAGS if flag in flags]


def git_commit() -> str | None:
    """The commit of the checkout this code runs from ('+dirty' with changes); None if installed."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    git = functools.partial(subprocess.run, cwd=root, capture_output=True, text=True, timeout=5, check=True)
    try:
        commit = git(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = git(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")
