"""python signal_self.py SIGNAL POINT <train.py arguments>: train.py sending itself SIGNAL at POINT,
the same point every run: `line:PREFIX` (a stdout line starting with PREFIX), `save:EPOCH` (inside
orbax's write of that epoch's meta: a power cut's leftovers), `save-twice:EPOCH` (there, twice).
"""

import os
import runpy
import signal
import sys
import time

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


original = ocp.JsonCheckpointHandler.async_save


async def async_save(self, directory, *args, **kwargs):
    """directory is <workdir>/checkpoints/<epoch>.orbax-checkpoint-tmp-*/meta while unfinished."""
    if os.path.basename(os.path.dirname(str(directory))).startswith(f"{where}."):
        for _ in range(2 if kind == "save-twice" else 1):
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # the handler runs in the main thread between bytecodes
    return await original(self, directory, *args, **kwargs)


if kind == "line":
    sys.stdout = SignalAfterLine(sys.stdout, where)
else:
    ocp.JsonCheckpointHandler.async_save = async_save

script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "train.py")
sys.argv = [script, *sys.argv[1:]]
runpy.run_path(script, run_name="__main__")
