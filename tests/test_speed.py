"""The speed tricks (lenet_jax.speed): each changes how, not what, the program computes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lenet_jax import speed
from lenet_jax.config import Config, get_preset
from lenet_jax.data import Split
from lenet_jax.model import ConvBlock, model_from_config
from lenet_jax.optimizers import build_optimizer
from lenet_jax.steps import create_train_state, make_train_step
from lenet_jax.toeplitz import ToeplitzBlock
from lenet_jax.train import make_trainer, train_epoch

TINY = Config(epochs=2, batch_size=16, eval_batch_size=16, log_every=2, init_scheme="flax")


def random_split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 28, 28, 1), np.uint8), rng.integers(0, 10, n).astype(np.int32))


def test_auto_and_plain_train_and_evaluate_the_same_function():
    """Every trick at once against the program as written: the same states and metrics up to rounding."""
    model = {"activation": "relu", "pool": "max", "feature_norm": True, "dense_activation": True}
    extras = {"augment_rotate": 10.0, "elastic_alpha": 2.0, "label_smoothing": 0.1, "ema_decay": 0.9}
    config = TINY.replace(**model, **extras)
    train, test, optimizer = random_split(40, 0), random_split(100, 1), optax.sgd(0.05, momentum=0.9)
    auto, plain = (make_trainer(config.replace(speed=s), train, optimizer) for s in ("auto", "plain"))
    assert (auto.model.block, plain.model.block) == (ToeplitzBlock, ConvBlock)
    assert (auto.steps_per_call, plain.steps_per_call) == (3, 1)  # 3 steps per epoch
    start = auto.new_state()
    chex.assert_trees_all_equal(start, plain.new_state())  # the same initial values from either block
    states = []
    for trainer in (auto, plain):
        state = jax.tree_util.tree_map(jnp.copy, start)
        for epoch in (1, 2):
            state, losses, _ = train_epoch(trainer, state, epoch, (epoch - 1) * 3)
        states.append((state, losses, trainer.evaluator.evaluate(state.ema_params, test)))
    (state_a, losses_a, eval_a), (state_b, losses_b, eval_b) = states
    assert int(state_a.step) == int(state_b.step) == 6
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    chex.assert_trees_all_close(state_a, state_b, rtol=1e-4, atol=1e-5)
    assert eval_a["correct"] == eval_b["correct"] and eval_a["count"] == eval_b["count"] == 100
    np.testing.assert_allclose(eval_a["total_loss"], eval_b["total_loss"], rtol=1e-5)


def test_epoch_calls_cover_the_epoch_once_with_a_padded_last_call():
    trainer = make_trainer(TINY, random_split(80, 0), steps_per_call=2)  # 5 steps per epoch
    calls = list(trainer.epoch_calls(1))
    assert [count for _, count in calls] == [2, 2, 1]
    with pytest.warns(DeprecationWarning, match="Trainer.program is deprecated"):  # 0.2's name
        assert [count for _, count in trainer.program.epoch_calls(1)] == [2, 2, 1]
    with pytest.warns(DeprecationWarning, match="use lenet_jax.workdir.clear_run"):
        from lenet_jax.train import clear_run  # noqa: F401 - 0.1's name
    rows = np.concatenate([np.asarray(indices) for indices, _ in calls])
    assert rows.shape == (6, 16) and (rows[5] == -1).all()  # one skipped padding step
    np.testing.assert_array_equal(np.sort(rows[:5].ravel()), np.arange(80))


class _Rows(list):
    def append_row(self, *row):
        self.append(row)


def test_steps_per_call_changes_nothing_but_the_calls():
    # 7 steps an epoch as 7 calls of 1, 3 of 3 (2 skipped padding steps) and 1 of 7 (the default): alike.
    train = random_split(100, 1)
    results = {}
    for per_call in (1, 3, None):
        config = TINY.replace(log_every=3, activation="relu", pool="max")
        trainer = make_trainer(config, train, optax.sgd(0.05, momentum=0.9), steps_per_call=per_call)
        state, logged, epoch_losses = trainer.new_state(), _Rows(), []
        for epoch in (1, 2):
            state, losses, _ = train_epoch(trainer, state, epoch, (epoch - 1) * 7, log=logged.append_row)
            epoch_losses += losses
        results[per_call] = (trainer.steps_per_call, state, logged, epoch_losses)
    assert [r[0] for r in results.values()] == [1, 3, 7]
    _, reference, reference_logged, reference_losses = results[1]
    assert [step for step, _ in reference_logged] == [3, 6, 9, 12]
    assert len(reference_losses) == 14 and int(reference.step) == 14
    for _, state, logged, losses in list(results.values())[1:]:
        assert [step for step, _ in logged] == [3, 6, 9, 12]
        np.testing.assert_allclose([v for _, v in logged], [v for _, v in reference_logged], rtol=1e-6)
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-6)
        chex.assert_trees_all_close(state, reference, rtol=1e-5, atol=1e-7)


@pytest.fixture
def fresh_support_check():
    speed._cpu_options_supported.cache_clear()
    yield
    speed._cpu_options_supported.cache_clear()


def test_the_per_backend_choices_come_from_the_table(monkeypatch, fresh_support_check):
    assert jax.default_backend() == "cpu"
    assert speed.compiler_options("auto") == speed.CPU_OPTIONS  # the installed jaxlib knows them
    assert speed.conv_block("auto") is ToeplitzBlock and speed.conv_block("plain") is ConvBlock
    assert speed.steps_per_call("auto", 1000) == speed.DEFAULTS["cpu"]["steps_per_call"]
    assert speed.steps_per_call("auto", 5) == 5 and speed.steps_per_call("auto", 1000, 3) == 3
    assert speed.steps_per_call("plain", 1000) == 1 and speed.compiler_options("plain") == {}
    assert speed.eval_groups("auto", 64) == 4 and speed.eval_groups("plain", 64) == 1
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert speed.compiler_options("auto") == {} and speed.conv_block("auto") is ConvBlock
    assert speed.steps_per_call("auto", 1000) == speed.DEFAULTS["gpu"]["steps_per_call"]
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")  # not in the table: the GPU's row
    assert speed.defaults() == speed.DEFAULTS["gpu"]


def test_options_a_jaxlib_rejects_are_dropped(monkeypatch, fresh_support_check):
    monkeypatch.setattr(speed, "CPU_OPTIONS", {"xla_cpu_no_such_option_in_any_version": "1"})
    assert speed.compiler_options("auto") == {}


@pytest.mark.parametrize("preset", ["recipe", "fast"])
def test_training_with_and_without_the_options_agrees(preset):
    """XLA:CPU's options change how, not what: 20 steps give the same losses and weights up to rounding."""
    config = get_preset(preset)
    model, optimizer = model_from_config(config), build_optimizer(config, 20)
    options = {"label_smoothing": config.label_smoothing, "ema_decay": config.ema_decay}
    step = make_train_step(model, optimizer, **options)
    key = jax.random.PRNGKey(0)
    images = [jax.random.uniform(jax.random.fold_in(key, i), (32, 28, 28, 1)) for i in range(20)]
    batches = [{"image": image, "label": jnp.arange(32) % 10, "mask": jnp.ones(32)} for image in images]
    results = []
    for options in (speed.compiler_options("auto"), {}):
        jitted = jax.jit(step, compiler_options=options)
        state = create_train_state(model, optimizer, key, config.averages_weights)
        losses = []
        for batch in batches:
            state, metrics = jitted(state, batch)
            losses.append(float(metrics["loss"]))
        results.append((losses, state.params))
    (losses_a, params_a), (losses_b, params_b) = results
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    # atol 1e-4: rounding carried through 20 momentum updates, far below one update at lr 0.2.
    chex.assert_trees_all_close(params_a, params_b, rtol=1e-4, atol=1e-4)


def test_init_compiled_unrolled_draws_the_same_bits_and_the_steps_stay_rolled():
    def draw(key):
        uniform = jax.random.uniform(key, (400, 120))
        return uniform, jax.random.permutation(key, 1000), jax.random.split(key, 3)

    key, loops = jax.random.PRNGKey(7), lambda lowered: lowered.as_text().count("stablehlo.while")
    with speed.unrolled_threefry("auto"):
        unrolled = jax.jit(lambda k: draw(k)).lower(key)
    rolled = jax.jit(lambda k: draw(k)).lower(key)  # restored on the way out
    assert loops(rolled) > loops(unrolled)
    chex.assert_trees_all_equal(rolled.compile()(key), unrolled.compile()(key))
