#!/usr/bin/env python
"""Benchmarks against PyTorch: `python scripts/benchmark.py speed|time-to-99|augmentation-cost`.

The same as `python -m benchmarks ...` from the repository root (benchmarks/__main__.py, which
documents the subcommands); needs the `bench` extra (PyTorch) for the PyTorch side.
"""

import runpy
import sys
from pathlib import Path

# The benchmarks package sits beside scripts/ and is not installed: run it the way `python -m`
# run from the repository root would (its folder first on the path, in place of scripts/).
sys.path[0] = str(Path(__file__).resolve().parent.parent)
runpy.run_module("benchmarks", run_name="__main__", alter_sys=True)
