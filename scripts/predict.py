#!/usr/bin/env python
"""Recognise handwritten digits in image files: `python scripts/predict.py IMAGE... | DIR`.

The program is lenet_jax/commands/predict.py (installed as `lenet-predict`); see --help.
"""

import sys

from lenet_jax import cli
from lenet_jax.commands.predict import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
