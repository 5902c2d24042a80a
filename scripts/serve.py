#!/usr/bin/env python
"""Draw a digit in the browser: `python scripts/serve.py --workdir DIR [--port P]`.

The program is lenet_jax/commands/serve.py (installed as `lenet-serve`); see --help.
"""

import sys

from lenet_jax import cli
from lenet_jax.commands.serve import main

if __name__ == "__main__":
    sys.exit(cli.run(main))
