#!/usr/bin/env python
"""Evaluate a checkpoint on the test set: `python scripts/evaluate.py --workdir DIR [--epoch N]`.

The program is lenet_jax/commands/evaluate.py (installed as `lenet-evaluate`); see --help.
"""

import sys

from lenet_jax import cli
from lenet_jax.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
