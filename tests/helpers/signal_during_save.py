"""Runs scripts/train.py, but sends the process SIGNAL twice in the middle of epoch EPOCH's save.

The signals arrive inside orbax's write of the `meta` item, while the other items of that
checkpoint are being written: the first asks for a stop, the second stops at once (what an
impatient Ctrl-C Ctrl-C, or a scheduler's repeated SIGTERM, does during a save).
Usage: python signal_during_save.py SIGNAL EPOCH <train.py arguments...>
"""

import os
import runpy
import signal
import sys
import time

import orbax.checkpoint as ocp

signum = signal.Signals[sys.argv.pop(1)]
epoch = int(sys.argv.pop(1))
original = ocp.JsonCheckpointHandler.async_save


async def async_save(self, directory, *args, **kwargs):
    # directory is <workdir>/checkpoints/<epoch>.orbax-checkpoint-tmp-*/meta while unfinished.
    if os.path.basename(os.path.dirname(str(directory))).startswith(f"{epoch}."):
        for _ in range(2):
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # the handler runs in the main thread between bytecodes
    return await original(self, directory, *args, **kwargs)


ocp.JsonCheckpointHandler.async_save = async_save
script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "train.py")
sys.argv = [script, *sys.argv[1:]]
runpy.run_path(script, run_name="__main__")
