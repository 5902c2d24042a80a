"""The compiled training program: steps per call, padding and augmentation change no number."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lenet_jax.augment import augmentation_from_config, make_augment
from lenet_jax.config import Config
from lenet_jax.data import Split, epoch_order, gather_batch
from lenet_jax.steps import make_train_step
from lenet_jax.train import make_trainer, train_epoch

TINY = Config(epochs=2, batch_size=16, eval_batch_size=16, log_every=2, init_scheme="flax")


def random_split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 28, 28, 1), np.uint8), rng.integers(0, 10, n).astype(np.int32))


def test_augmented_program_equals_the_one_jit_train_step():
    # The program gathers + augments in one jit and trains in another (cheaper on XLA:CPU); the
    # result must be that of the pure make_train_step(..., augment) jitted as one function.
    config = TINY.replace(augment_rotate=10.0, elastic_alpha=2.0, label_smoothing=0.1, ema_decay=0.9)
    train, optimizer = random_split(40, 0), optax.sgd(0.05)
    trainer = make_trainer(config, train, optimizer)
    state = trainer.new_state()
    ran, _, _ = train_epoch(trainer, jax.tree_util.tree_map(jnp.copy, state), epoch=1, step=0)

    augment = make_augment(augmentation_from_config(config))
    step = jax.jit(make_train_step(trainer.model, optimizer, augment, 0.1, ema_decay=0.9))
    for indices in epoch_order(trainer.program.shuffle_key, 1, len(train), config.batch_size):
        state, _ = step(state, gather_batch(jnp.asarray(train.images), jnp.asarray(train.labels), indices))
    assert int(ran.step) == int(state.step) == 3
    chex.assert_trees_all_close(ran, state, rtol=1e-5, atol=1e-6)


def test_epoch_calls_cover_the_epoch_once_with_a_padded_last_call():
    trainer = make_trainer(TINY.replace(steps_per_call=2), random_split(80, 0))  # 5 steps per epoch
    calls = list(trainer.program.epoch_calls(1))
    assert [count for _, count in calls] == [2, 2, 1]
    rows = np.concatenate([np.asarray(indices) for indices, _ in calls])
    assert rows.shape == (6, 16) and (rows[5] == -1).all()  # one skipped padding step
    np.testing.assert_array_equal(np.sort(rows[:5].ravel()), np.arange(80))


class _Rows(list):
    def append_row(self, *row):
        self.append(row)


def test_steps_per_call_changes_nothing_but_the_calls():
    # 7 steps per epoch as 7 calls of 1 step, 3 calls of 3 (the last padded by 2 skipped steps)
    # and 1 call of 7 (the default, capped at the epoch): the same states, losses and log lines.
    train = random_split(100, 1)
    results = {}
    for per_call in (1, 3, None):
        config = TINY.replace(steps_per_call=per_call, log_every=3, activation="relu", pool="max")
        trainer = make_trainer(config, train, optax.sgd(0.05, momentum=0.9))
        state, logged, epoch_losses = trainer.new_state(), _Rows(), []
        for epoch in (1, 2):
            state, losses, _ = train_epoch(trainer, state, epoch, (epoch - 1) * 7, log=logged.append_row)
            epoch_losses += losses
        results[per_call] = (trainer.program.steps_per_call, state, logged, epoch_losses)
    assert [r[0] for r in results.values()] == [1, 3, 7]
    _, reference, reference_logged, reference_losses = results[1]
    assert [step for step, _ in reference_logged] == [3, 6, 9, 12]
    assert len(reference_losses) == 14 and int(reference.step) == 14
    for _, state, logged, losses in list(results.values())[1:]:
        assert [step for step, _ in logged] == [3, 6, 9, 12]
        np.testing.assert_allclose([v for _, v in logged], [v for _, v in reference_logged], rtol=1e-6)
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-6)
        chex.assert_trees_all_close(state, reference, rtol=1e-5, atol=1e-7)
