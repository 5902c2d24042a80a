#!/usr/bin/env python
"""Convert between the PyTorch tutorial's files and this project's checkpoints.

The program is lenet_jax/commands/convert.py (installed as `lenet-convert`); see --help.
"""

import sys

from lenet_jax import cli
from lenet_jax.commands.convert import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
