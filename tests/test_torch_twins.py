"""The PyTorch twins of the presets (benchmarks/torch_presets.py) compute what lenet-jax computes:
same forward pass from the same weights, same schedule, same optimizer steps and weight average,
same augmentation from the same random draws. Skipped without PyTorch (CI has none)."""

import json

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import torch_presets as twins  # noqa: E402 - the repository root is on pytest's path
from lenet_jax import augment as jax_augment  # noqa: E402
from lenet_jax.config import Config, get_preset  # noqa: E402
from lenet_jax.model import init_params, model_from_config  # noqa: E402
from lenet_jax.optimizers import build_optimizer, learning_rate_schedule  # noqa: E402
from lenet_jax.speed import conv_block  # noqa: E402
from lenet_jax.steps import create_train_state, ema_decay_at, make_train_step  # noqa: E402

NO_AUGMENTATION = {name: 0.0 for name in ("augment_translate", "augment_rotate", "augment_scale")}
NO_AUGMENTATION.update(augment_shear=0.0, elastic_alpha=0.0)


def images_and_labels(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, n)


def nchw(images):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2)))


def assert_params_close(ours, theirs, atol):
    for layer, leaves in ours.items():
        for name, value in leaves.items():
            np.testing.assert_allclose(theirs[layer][name], value, atol=atol, err_msg=f"{layer}/{name}")


@pytest.mark.parametrize(
    "config",
    [
        get_preset("fast"),
        get_preset("best"),
        get_preset("recipe"),
        get_preset("fast").replace(speed="plain", activation="tanh", pool="avg"),
    ],
    ids=["fast", "best", "recipe", "tanh-avg-plain"],
)
def test_same_forward_pass_from_the_same_weights(config):
    model = model_from_config(config, conv_block(config.speed))
    params = jax.jit(init_params, static_argnums=0)(model, jax.random.PRNGKey(3))
    twin = twins.TwinLeNet.from_config(config)
    twins.load_flax_params(twin, params)
    images, _ = images_and_labels(16)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(images)))
    with torch.no_grad():
        theirs = twin(nchw(images)).numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    assert_params_close(jax.tree_util.tree_map(np.asarray, params), twins.to_flax_params(twin), atol=0)


def test_feature_norm_has_one_scale_and_offset_per_channel():
    twin = twins.TwinLeNet.from_config(get_preset("fast"))
    assert twin.feature_norm.weight.shape == (16,) and twin.feature_norm.bias.shape == (16,)
    assert sum(p.numel() for p in twin.parameters()) == 61_738  # as fast()'s docstring says


@pytest.mark.parametrize("scheme", ["flax", "torch"])
def test_initialisation_has_our_distribution(scheme):
    """Per layer, the twin's weights have the std (and range) of lenet-jax's initialiser."""
    config = get_preset("fast").replace(init=scheme)
    ours = jax.jit(init_params, static_argnums=0)(model_from_config(config), jax.random.PRNGKey(0))
    twin = twins.TwinLeNet.from_config(config)
    twins.initialize(twin, scheme, torch.Generator().manual_seed(0))
    theirs = twins.to_flax_params(twin)
    for layer in ("conv2", "dense1", "dense2"):  # the layers with enough weights for statistics
        a, b = np.asarray(ours[layer]["kernel"]), theirs[layer]["kernel"]
        fan_in = a.size // a.shape[-1]
        expected_std = np.sqrt(1 / fan_in) if scheme == "flax" else np.sqrt(1 / (3 * fan_in))
        assert a.std() == pytest.approx(expected_std, rel=0.1)
        assert b.std() == pytest.approx(expected_std, rel=0.1)
        assert np.abs(a).max() <= np.abs(b).max() * 1.1 and np.abs(b).max() <= np.abs(a).max() * 1.1
        if scheme == "flax":  # zero biases
            assert not np.asarray(ours[layer]["bias"]).any() and not theirs[layer]["bias"].any()


@pytest.mark.parametrize(
    "config",
    [
        get_preset("fast"),
        get_preset("best"),
        Config(schedule="cosine", lr=0.1, epochs=2),
        Config(lr=0.05),
        get_preset("fast").replace(warmup_epochs=0.0),
    ],
    ids=["fast", "best", "cosine", "constant", "no-warmup"],
)
def test_same_schedule_values_step_by_step(config):
    steps_per_epoch = 469 if config.batch_size == 128 else 938
    steps = np.arange(config.epochs * steps_per_epoch + 5)
    ours = np.asarray(jax.vmap(learning_rate_schedule(config, steps_per_epoch))(jnp.asarray(steps)))
    schedule = twins.learning_rate_schedule(config, steps_per_epoch)
    theirs = np.asarray([schedule(int(step)) for step in steps], np.float32)
    # Up to float32 rounding of cos (XLA's and numpy's differ by an ulp, which 1 + cos(~pi)
    # magnifies at the schedule's tail): 1e-7 of the peak.
    np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=1e-7 * config.lr)


def test_same_weight_average_decay():
    steps = np.arange(0, 5000, 7)
    ours = np.asarray(jax.vmap(lambda s: ema_decay_at(s, 0.999))(jnp.asarray(steps)))
    np.testing.assert_array_equal([twins.ema_decay_at(int(s), 0.999) for s in steps], ours)


@pytest.mark.parametrize(
    "config",
    [
        get_preset("fast"),
        get_preset("best").replace(**NO_AUGMENTATION),
        get_preset("fast").replace(optimizer="adam", lr=3e-3),
    ],
    ids=["fast", "best-without-augmentation", "adam"],
)
def test_same_training_steps_from_the_same_weights(config):
    """Five updates (warm-up into the schedule's peak) from the same weights and batches: the
    same losses, parameters and weight average as lenet-jax's train step."""
    batch_size, steps_per_epoch = 16, 5
    config = config.replace(batch_size=batch_size, epochs=3, warmup_epochs=0.2)  # warm-up: 1 step
    images, labels = images_and_labels(batch_size * steps_per_epoch, seed=1)
    model = model_from_config(config)
    optimizer = build_optimizer(config, steps_per_epoch)
    state = create_train_state(model, optimizer, jax.random.PRNGKey(0), config.averages_weights)
    train_step = make_train_step(
        model, optimizer, label_smoothing=config.label_smoothing, ema_decay=config.ema_decay
    )
    step = jax.jit(train_step)

    twin = twins.PresetTwin(config, (images * 255).astype(np.uint8), labels, images[:2], labels[:2])
    assert twin.steps_per_epoch == steps_per_epoch
    twins.load_flax_params(twin.model, state.params)
    twins.load_flax_params(twin.average, state.ema_params)
    initial = np.asarray(state.params["dense2"]["kernel"])
    for i in range(steps_per_epoch):
        batch = slice(i * batch_size, (i + 1) * batch_size)
        x, y = images[batch], labels[batch]
        state, metrics = step(
            state, {"image": jnp.asarray(x), "label": jnp.asarray(y, jnp.int32), "mask": jnp.ones(batch_size)}
        )
        loss = twin.train_step(nchw(x), torch.from_numpy(y))
        assert float(loss) == pytest.approx(float(metrics["loss"]), abs=1e-5)
        ours = jax.tree_util.tree_map(np.asarray, state.params)
        assert_params_close(ours, twins.to_flax_params(twin.model), atol=1e-5)
        average = jax.tree_util.tree_map(np.asarray, state.ema_params)
        assert_params_close(average, twins.to_flax_params(twin.average), atol=1e-5)
    assert np.abs(ours["dense2"]["kernel"] - initial).max() > 1e-3  # the steps did change the weights


def test_same_augmentation_from_the_same_draws():
    """best's distortions: given lenet-jax's own random draws, the twin's grid_sample makes the
    same images; the twin draws from the same distributions."""
    config = get_preset("best")
    aug = jax_augment.augmentation_from_config(config)
    np.testing.assert_array_equal(twins.gaussian_matrix(28, 4.0), jax_augment._gaussian_matrix(28, 4.0))
    images, _ = images_and_labels(8, seed=2)
    key = jax.random.PRNGKey(5)
    ours = np.asarray(jax_augment.make_augment(aug)(key, jnp.asarray(images)))
    k_affine, k_elastic = jax.random.split(key)  # the draws make_augment makes, in its order
    u = np.array(jax.random.uniform(k_affine, (8, 5), minval=-1, maxval=1))
    noise = np.array(jax_augment._uniform_bytes(k_elastic, (28, 8 * 2 * 28)))
    twin = twins.TwinAugment(config)
    theirs = twin.apply(nchw(images), torch.from_numpy(u), torch.from_numpy(noise)).numpy()
    assert np.abs(ours - images).max() > 0.5  # the distortion is not a no-op
    np.testing.assert_allclose(theirs.transpose(0, 2, 3, 1), ours, atol=1e-5)

    # The twin's own draws: the same 256 noise levels in (-1, 1), and its images stay in [0, 1].
    allowed = {np.float32((v + 0.5) / 128 - 1) for v in range(256)}
    assert set(np.unique(noise).tolist()) <= allowed
    generator = torch.Generator().manual_seed(0)
    levels = (torch.randint(0, 256, (4096,), generator=generator).float() + 0.5) / 128.0 - 1.0
    assert set(np.unique(levels.numpy()).tolist()) <= allowed
    out = twin(nchw(images), generator)
    assert out.shape == (8, 1, 28, 28) and float(out.min()) >= 0 and float(out.max()) <= 1 + 1e-6


def test_unsupported_fields_are_refused():
    with pytest.raises(twins.UnsupportedConfig, match="lion"):
        twins.check_supported(Config(optimizer="lion"))
    with pytest.raises(twins.UnsupportedConfig, match="grad_clip"):
        twins.check_supported(Config(grad_clip=1.0))


def test_time_to_accuracy_evaluates_where_the_jax_trainer_does(idx_dir):
    """96 images, batch 16: 6 steps per epoch, 2 evaluations per epoch (every 3 steps); with
    4 steps per call, after the call that passes each multiple of 3, as EpochRunner's probe."""
    config = get_preset("fast").replace(batch_size=16, epochs=2)
    data = twins.load_idx(idx_dir)
    for per_call, expected in ((1, [3, 6, 9, 12]), (4, [4, 6, 10, 12])):
        rows = []
        result = twins.time_to_accuracy(
            config,
            seed=0,
            target=1.01,
            evals_per_epoch=2,
            data=data,
            steps_per_call=per_call,
            on_eval=rows.append,
        )
        assert [row["step"] for row in rows] == expected
        assert result["reached"] is False and result["step"] == 12 and result["epoch"] == 2.0
        assert result["train_seconds"] > 0


def test_cli_prints_one_json_line(idx_dir, capsys):
    assert (
        twins.main(["--preset", "fast", "--data-dir", str(idx_dir), "--target", "0.5", "--threads", "1"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["impl"] == "pytorch-twin" and result["preset"] == "fast" and result["threads"] == 1
    assert {"reached", "epoch", "train_seconds", "test_accuracy", "first_step_seconds"} <= set(result)
