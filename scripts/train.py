#!/usr/bin/env python
"""Train LeNet on MNIST: `python scripts/train.py [--preset NAME] [--FIELD VALUE ...]`.

The program is lenet_jax/commands/train.py (installed as `lenet-train`); see --help.
"""

import sys

from lenet_jax import cli
from lenet_jax.commands.train import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
