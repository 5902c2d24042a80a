import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lenet_jax import speed
from lenet_jax.config import get_preset
from lenet_jax.model import model_from_config
from lenet_jax.optimizers import build_optimizer
from lenet_jax.steps import create_train_state, make_train_step


@pytest.fixture
def fresh_support_check():
    speed._cpu_options_supported.cache_clear()
    yield
    speed._cpu_options_supported.cache_clear()


def test_cpu_gets_the_measured_options_and_other_backends_none(monkeypatch, fresh_support_check):
    assert speed.training_compiler_options() == speed.CPU_OPTIONS  # the installed jaxlib knows them
    speed.training_compiler_options()["xla_cpu_experimental_ynn_fusion_type"] = "changed"  # a copy
    assert speed.training_compiler_options() == speed.CPU_OPTIONS
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert speed.training_compiler_options() == {}


def test_xla_defaults_empties_the_options_inside_only():
    with speed.xla_defaults():
        assert speed.training_compiler_options() == {}
    assert speed.training_compiler_options() == speed.CPU_OPTIONS


def test_options_a_jaxlib_rejects_are_dropped(monkeypatch, fresh_support_check):
    monkeypatch.setattr(speed, "CPU_OPTIONS", {"xla_cpu_no_such_option_in_any_version": "1"})
    assert speed.training_compiler_options() == {}


@pytest.mark.parametrize("preset", ["recipe", "fast"])
def test_training_with_and_without_the_options_agrees(preset):
    """The options change how XLA:CPU runs the products, not what they compute: 20 steps on the
    same batches give the same losses and weights up to float rounding."""
    config = get_preset(preset)
    model = model_from_config(config)
    optimizer = build_optimizer(config, 20)
    step = make_train_step(
        model, optimizer, label_smoothing=config.label_smoothing, ema_decay=config.ema_decay
    )
    key = jax.random.PRNGKey(0)
    batches = [
        {
            "image": jax.random.uniform(jax.random.fold_in(key, i), (32, 28, 28, 1)),
            "label": jnp.arange(32) % 10,
            "mask": jnp.ones(32),
        }
        for i in range(20)
    ]
    results = []
    for options in (speed.training_compiler_options(), {}):
        jitted = jax.jit(step, compiler_options=options)
        state = create_train_state(model, optimizer, key, config.averages_weights)
        losses = []
        for batch in batches:
            state, metrics = jitted(state, batch)
            losses.append(float(metrics["loss"]))
        results.append((losses, state.params))
    (losses_a, params_a), (losses_b, params_b) = results
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    # atol 1e-4: rounding differences carried through 20 momentum updates; far below what one
    # update of the fast preset (lr 0.2) changes.
    chex.assert_trees_all_close(params_a, params_b, rtol=1e-4, atol=1e-4)


def test_choose_is_the_one_per_backend_choice_and_the_config_overrides_it():
    assert jax.default_backend() == "cpu"
    assert speed.choose() == speed.Speed("toeplitz", 16, speed.training_compiler_options())
    assert speed.choose("xla").steps_per_call == 1  # no loop around lax.conv on CPU
    assert speed.choose("auto", steps_per_call=3).steps_per_call == 3
    with speed.xla_defaults():
        assert speed.choose().compiler_options == {}


def test_auto_conv_impl_is_toeplitz_on_cpu_and_xla_elsewhere(monkeypatch):
    assert speed.resolve_conv_impl("xla") == "xla" and speed.resolve_conv_impl("toeplitz") == "toeplitz"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert speed.resolve_conv_impl("auto") == "toeplitz"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert speed.resolve_conv_impl("auto") == "xla"
