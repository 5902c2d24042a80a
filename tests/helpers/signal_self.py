"""Runs scripts/train.py, sending itself SIGNAL at a chosen point (the resume tests' stops).

Usage: python signal_self.py SIGNAL POINT <train.py arguments...>
POINT: `line:PREFIX`: once a stdout line starting with PREFIX is written (e.g. `line:step 45:`),
at the same point every run, where a signal from outside would race the training.
`save:EPOCH`: inside orbax's write of epoch EPOCH's `meta` item, after the checkpoint's other
items may be on disk in orbax's temporary folder (what a power cut or an OOM kill leaves).
"""

import os
import runpy
import signal
import sys

import orbax.checkpoint as ocp

signum = signal.Signals[sys.argv.pop(1)]
kind, _, where = sys.argv.pop(1).partition(":")


class SignalAfterLine:
    def __init__(self, stream, prefix):
        self.stream, self.prefix = stream, prefix

    def write(self, text):
        written = self.stream.write(text)
        if any(line.startswith(self.prefix) for line in text.splitlines()):
            self.stream.flush()
            os.kill(os.getpid(), signum)
        return written

    def __getattr__(self, name):
        return getattr(self.stream, name)


if kind == "line":
    sys.stdout = SignalAfterLine(sys.stdout, where)
else:
    original = ocp.JsonCheckpointHandler.async_save

    def async_save(self, directory, *args, **kwargs):
        # directory is <workdir>/checkpoints/<epoch>.orbax-checkpoint-tmp-*/meta while unfinished.
        if os.path.basename(os.path.dirname(str(directory))).startswith(f"{where}."):
            os.kill(os.getpid(), signum)
        return original(self, directory, *args, **kwargs)

    ocp.JsonCheckpointHandler.async_save = async_save

script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "train.py")
sys.argv = [script, *sys.argv[1:]]
runpy.run_path(script, run_name="__main__")
