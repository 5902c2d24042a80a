"""The PyTorch twins of the presets (benchmarks/torch_presets.py) compute what lenet-jax computes:
same forward pass from the same weights, same schedule, same optimizer steps and weight average,
same augmentation from the same random draws.

What the twins compute is stored in tests/fixtures/torch_twins (made by its make_fixture.py), and
lenet-jax is checked against it here, without PyTorch. Where PyTorch is installed, the fixture is
checked to be what the twins compute now, and the twins' own behaviour is tested too.
"""

import importlib.util
import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lenet_jax import augment as jax_augment
from lenet_jax.config import Config, get_preset
from lenet_jax.model import init_params, model_from_config
from lenet_jax.optimizers import build_optimizer, learning_rate_schedule
from lenet_jax.speed import conv_block
from lenet_jax.steps import create_train_state, ema_decay_at, make_train_step

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "torch_twins"
_spec = importlib.util.spec_from_file_location("torch_twins_fixture", FIXTURE / "make_fixture.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)
REFERENCE = dict(np.load(FIXTURE / "reference.npz"))
CASES = json.loads((FIXTURE / "cases.json").read_text())


def config_of(kind, name):
    return Config().replace(**CASES[kind][name])


def start_weights(config, seed):
    """make_fixture's weights for this config's model (shapes from lenet-jax's init), the model
    with the blocks --speed auto computes with (Toeplitz products on a CPU)."""
    model = model_from_config(config, conv_block(config.speed))
    abstract = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
    return model, make.weights(jax.tree_util.tree_map(lambda a: a.shape, abstract), seed)


# --- lenet-jax against the stored numbers: these run everywhere --------------------------------


@pytest.mark.parametrize("name", CASES["forward"])
def test_same_forward_pass_from_the_same_weights(name):
    model, params = start_weights(config_of("forward", name), make.case_seed(name))
    ours = jax.jit(model.apply)({"params": params}, make.images_and_labels(16)[0])
    np.testing.assert_allclose(REFERENCE[f"forward/{name}"], ours, atol=1e-5)


@pytest.mark.parametrize("scheme", ["flax", "torch"])
def test_initialisation_has_the_twins_distribution(scheme):
    """Per layer, lenet-jax's kernels have the std (and range) of the twin's and of the scheme."""
    ours = jax.jit(init_params, static_argnums=0)(
        model_from_config(Config(init_scheme=scheme)), jax.random.PRNGKey(0)
    )
    for (std, top), layer in zip(REFERENCE[f"init/{scheme}"], ("conv2", "dense1", "dense2"), strict=True):
        kernel = np.asarray(ours[layer]["kernel"])
        fan_in = kernel.size // kernel.shape[-1]
        expected_std = np.sqrt(1 / fan_in) if scheme == "flax" else np.sqrt(1 / (3 * fan_in))
        assert kernel.std() == pytest.approx(expected_std, rel=0.1) and std == pytest.approx(
            expected_std, rel=0.1
        )
        assert np.abs(kernel).max() == pytest.approx(top, rel=0.1)
        assert (scheme == "torch") == bool(np.asarray(ours[layer]["bias"]).any())  # flax: zero biases


@pytest.mark.parametrize("name", CASES["schedule"])
def test_same_schedule_values(name):
    config = config_of("schedule", name)
    steps = REFERENCE[f"schedule/{name}/steps"]
    ours = jax.vmap(learning_rate_schedule(config, 469 if config.batch_size == 128 else 938))(
        jnp.asarray(steps)
    )
    # Up to float32 rounding of cos (XLA's and numpy's differ by an ulp, which 1 + cos(~pi)
    # magnifies at the schedule's tail): 1e-7 of the peak.
    np.testing.assert_allclose(REFERENCE[f"schedule/{name}/values"], ours, rtol=1e-6, atol=1e-7 * config.lr)


def test_same_weight_average_decay():
    ours = jax.vmap(lambda s: ema_decay_at(s, 0.999))(jnp.asarray(make.EMA_DECAY_STEPS))
    np.testing.assert_array_equal(REFERENCE["ema_decay"], ours)


@pytest.mark.parametrize("name", CASES["train"])
def test_same_training_steps_from_the_same_weights(name):
    """Five updates (warm-up into the schedule's peak) from the same weights and batches: the
    same losses, parameters and weight average as the twin's."""
    config, steps = config_of("train", name), make.TRAIN_STEPS
    model, start = start_weights(config, make.case_seed(name))
    optimizer = build_optimizer(config, steps)
    state = create_train_state(model, optimizer, jax.random.PRNGKey(0), config.averages_weights)
    state = state.replace(params=start, ema_params=start)  # the optimizer's state holds no weights
    step = jax.jit(
        make_train_step(model, optimizer, label_smoothing=config.label_smoothing, ema_decay=config.ema_decay)
    )
    images, labels = make.images_and_labels(config.batch_size * steps, seed=1)
    for i, (x, y) in enumerate(zip(np.split(images, steps), np.split(labels, steps), strict=True)):
        state, metrics = step(state, {"image": x, "label": y.astype(np.int32), "mask": np.ones(len(y))})
        assert float(metrics["loss"]) == pytest.approx(REFERENCE[f"train/{name}/losses"][i], abs=1e-5)
    probe = make.images_and_labels(16, seed=2)[0]
    for kind, params in (("params", state.params), ("average", state.ema_params)):
        params = jax.tree_util.tree_map(np.asarray, params)
        np.testing.assert_allclose(
            REFERENCE[f"train/{name}/{kind}_projections"], make.projections(params), atol=1e-5
        )
        np.testing.assert_allclose(
            REFERENCE[f"train/{name}/{kind}_logits"], model.apply({"params": params}, probe), atol=1e-4
        )
    assert np.abs(state.params["dense2"]["kernel"] - start["dense2"]["kernel"]).max() > 1e-3  # it did train


def test_same_augmentation_from_the_same_draws():
    """best's distortions: from lenet-jax's own random draws, the twin's grid_sample made the same images."""
    images = make.images_and_labels(2, seed=2)[0]
    u, levels = make.augment_draws(len(images))
    np.testing.assert_array_equal(
        u, REFERENCE["augment/u"], err_msg="JAX's draws changed: rerun make_fixture.py"
    )
    np.testing.assert_array_equal(levels, REFERENCE["augment/levels"])
    aug = jax_augment.augmentation_from_config(config_of("augment", "best"))
    ours = np.asarray(
        jax_augment.make_augment(aug)(jax.random.PRNGKey(make.AUGMENT_KEY), jnp.asarray(images))
    )
    assert np.abs(ours - images).max() > 0.5  # the distortion is not a no-op
    np.testing.assert_allclose(REFERENCE["augment/images"], ours, atol=1e-5)


# --- with PyTorch: the fixture is what the twins compute now, and the twins themselves --------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def twins(torch):
    from benchmarks import torch_presets  # the repository root is on pytest's path

    return torch_presets


def test_the_fixture_is_what_pytorch_computes_now(twins):
    """Fails when a twin, a preset or the inputs changed: rerun make_fixture.py (and review)."""
    assert make.cases() == CASES
    fresh = make.reference()
    assert sorted(fresh) == sorted(REFERENCE)
    for key, value in fresh.items():
        np.testing.assert_allclose(value, REFERENCE[key], rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("preset", ["fast", "best", "recipe"])
def test_the_twins_weights_round_trip_and_count(twins, preset):
    config = get_preset(preset)
    params = jax.tree_util.tree_map(np.asarray, init_params(model_from_config(config), jax.random.PRNGKey(3)))
    twin = twins.TwinLeNet.from_config(config)
    twins.load_flax_params(twin, params)
    chex.assert_trees_all_equal(twins.to_flax_params(twin), params)
    if preset == "fast":  # one LayerNorm scale and offset per channel, as fast()'s docstring says
        assert twin.feature_norm.weight.shape == (16,) and sum(p.numel() for p in twin.parameters()) == 61_738


def test_the_twins_own_augmentation_draws(twins, torch):
    """The same 256 noise levels in (-1, 1) as lenet-jax, and images that stay in [0, 1]."""
    np.testing.assert_array_equal(twins.gaussian_matrix(28, 4.0), jax_augment._gaussian_matrix(28, 4.0))
    allowed = {np.float32((v + 0.5) / 128 - 1) for v in range(256)}
    generator = torch.Generator().manual_seed(0)
    levels = (torch.randint(0, 256, (4096,), generator=generator).float() + 0.5) / 128.0 - 1.0
    assert set(np.unique(levels.numpy()).tolist()) <= allowed
    images = torch.from_numpy(make.images_and_labels(8, seed=2)[0].transpose(0, 3, 1, 2).copy())
    out = twins.TwinAugment(get_preset("best"))(images, generator)
    assert out.shape == (8, 1, 28, 28) and float(out.min()) >= 0 and float(out.max()) <= 1 + 1e-6


def test_unsupported_fields_are_refused(twins):
    with pytest.raises(twins.UnsupportedConfig, match="lion"):
        twins.check_supported(Config(optimizer="lion"))
    with pytest.raises(twins.UnsupportedConfig, match="grad_clip"):
        twins.check_supported(Config(grad_clip=1.0))


def test_time_to_accuracy_evaluates_where_the_jax_trainer_does(twins, idx_dir):
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


def test_cli_prints_one_json_line(twins, idx_dir, capsys):
    assert (
        twins.main(["--preset", "fast", "--data-dir", str(idx_dir), "--target", "0.5", "--threads", "1"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["impl"] == "pytorch-twin" and result["preset"] == "fast" and result["threads"] == 1
    assert {"reached", "epoch", "train_seconds", "test_accuracy", "first_step_seconds"} <= set(result)
