"""The README's orbax-only snippet runs as written and reads the weights this package restores."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO_ROOT

from lenet_jax.checkpoints import Checkpoints
from lenet_jax.config import get_preset
from lenet_jax.evaluation import restore_params
from lenet_jax.model import init_params, model_from_config
from lenet_jax.steps import TrainState

SNIPPET_FILE = REPO_ROOT / "README.md"  # its marked python block is the snippet users copy
MARKER = "<!-- test: orbax-only snippet"


def snippet() -> str:
    text = SNIPPET_FILE.read_text()
    assert MARKER in text, f"{SNIPPET_FILE} lost the marker before the snippet"
    match = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert match, f"no python block after the marker in {SNIPPET_FILE}"
    return match.group(1)


@pytest.fixture
def two_epochs(tmp_path):
    """Epochs 1 and 2 saved as training saves them (with averaged weights), and a cut-short save's folder."""
    config = get_preset("smoke").replace(ema_decay=0.9)
    # Random weights of the model's shapes: no init program to compile (seconds on 2 cores).
    abstract = jax.eval_shape(lambda: init_params(model_from_config(config), jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    workdir = tmp_path / "checkpoints" / "recipe"
    with Checkpoints(workdir) as checkpoints:
        for epoch in (1, 2):
            params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract)
            average = jax.tree_util.tree_map(lambda x: x / 2, params)
            opt_state = optax.adam(1e-3).init(params)
            state = TrainState(jnp.int32(10 * epoch), params, opt_state, jax.random.PRNGKey(epoch), average)
            checkpoints.save(epoch, state, {"epoch": epoch, "step": 10 * epoch, "config": config.to_dict()})
    (workdir / "checkpoints" / "3.orbax-checkpoint-tmp-1").mkdir()
    return workdir


def test_orbax_only_snippet_reads_the_newest_params(two_epochs, tmp_path, monkeypatch, capsys, caplog):
    from absl import logging as absl_logging

    code = snippet()
    assert "lenet_jax" not in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    previous = absl_logging.get_verbosity()  # scripts run in this process may have set ERROR
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        with caplog.at_level("WARNING"):
            exec(compile(code, str(SNIPPET_FILE), "exec"), namespace)
    finally:
        absl_logging.set_verbosity(previous)

    assert [r.getMessage()[:80] for r in caplog.records] == []  # e.g. "Metadata file does not exist"
    assert capsys.readouterr().out.split() == ["2", "sigmoid", "(5,", "5,", "1,", "6)"]
    params, expected = namespace["params"], restore_params(two_epochs, averaged=False)
    assert namespace["meta"]["epoch"] == expected.epoch == 2
    assert type(params) is dict and all(type(layer) is dict for layer in params.values())
    assert all(type(leaf) is np.ndarray for leaf in jax.tree_util.tree_leaves(params))
    chex.assert_trees_all_equal(params, dict(expected.params))
