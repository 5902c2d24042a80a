"""Runs scripts/train.py, but SIGKILLs the process in the middle of epoch KILL_EPOCH's save.

The kill happens inside orbax's write of the `meta` item, after the other items of that
checkpoint may already be on disk in orbax's temporary directory: the state a power cut or an
OOM kill during a save leaves behind.
Usage: python kill_during_save.py KILL_EPOCH <train.py arguments...>
"""

import os
import runpy
import signal
import sys

import orbax.checkpoint as ocp

kill_epoch = int(sys.argv.pop(1))
original = ocp.JsonCheckpointHandler.async_save


def async_save(self, directory, *args, **kwargs):
    # directory is <workdir>/checkpoints/<epoch>.orbax-checkpoint-tmp-*/meta while unfinished.
    if os.path.basename(os.path.dirname(str(directory))).startswith(f"{kill_epoch}."):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, directory, *args, **kwargs)


ocp.JsonCheckpointHandler.async_save = async_save
script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "train.py")
sys.argv = [script, *sys.argv[1:]]
runpy.run_path(script, run_name="__main__")
