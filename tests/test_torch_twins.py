"""lenet-jax computes what the presets' PyTorch twins (benchmarks/torch_presets.py) stored in the fixture."""

import importlib
import json
import runpy
import types
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
# make_fixture.py's functions and constants, as its module's attributes
make = types.SimpleNamespace(**runpy.run_path(str(FIXTURE / "make_fixture.py")))
REFERENCE = dict(np.load(FIXTURE / "reference.npz"))
CASES = json.loads((FIXTURE / "cases.json").read_text())  # kind -> case -> its Config's changes
CONFIGS = {kind: {n: Config().replace(**c) for n, c in cases.items()} for kind, cases in CASES.items()}


def start_weights(config, seed):
    """The model --speed auto computes with (Toeplitz products on a CPU), and make_fixture's weights."""
    model = model_from_config(config, conv_block(config.speed))
    abstract = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
    return model, make.weights(jax.tree_util.tree_map(lambda a: a.shape, abstract), seed)


@pytest.mark.parametrize("name", CASES["forward"])
def test_same_forward_pass_from_the_same_weights(name):
    model, params = start_weights(CONFIGS["forward"][name], make.case_seed(name))
    ours = jax.jit(model.apply)({"params": params}, make.images_and_labels(16)[0])
    np.testing.assert_allclose(REFERENCE[f"forward/{name}"], ours, atol=1e-5)


@pytest.mark.parametrize("scheme", ["flax", "torch"])
def test_initialisation_has_the_twins_distribution(scheme):
    """Per layer, lenet-jax's kernels have the std (and range) of the twin's and of the scheme."""
    ours = init_params(model_from_config(Config(init_scheme=scheme)), jax.random.PRNGKey(0))
    for (std, top), layer in zip(REFERENCE[f"init/{scheme}"], ("conv2", "dense1", "dense2"), strict=True):
        kernel = np.asarray(ours[layer]["kernel"])
        fan_in = kernel.size // kernel.shape[-1]
        scale = np.sqrt(1 / (fan_in if scheme == "flax" else 3 * fan_in))
        np.testing.assert_allclose([kernel.std(), std, abs(kernel).max()], [scale, scale, top], rtol=0.1)
        assert (scheme == "torch") == bool(np.asarray(ours[layer]["bias"]).any())  # flax: zero biases


@pytest.mark.parametrize("name", CASES["schedule"])
def test_same_schedule_values(name):
    config = CONFIGS["schedule"][name]
    schedule = learning_rate_schedule(config, 469 if config.batch_size == 128 else 938)
    ours = jax.vmap(schedule)(jnp.asarray(REFERENCE[f"schedule/{name}/steps"]))
    # Up to float32 rounding of cos (an ulp apart in XLA and numpy, magnified at the tail): 1e-7 of the peak.
    np.testing.assert_allclose(REFERENCE[f"schedule/{name}/values"], ours, rtol=1e-6, atol=1e-7 * config.lr)


def test_same_weight_average_decay():
    ours = jax.vmap(lambda s: ema_decay_at(s, 0.999))(jnp.asarray(make.EMA_DECAY_STEPS))
    np.testing.assert_array_equal(REFERENCE["ema_decay"], ours)


@pytest.mark.parametrize("name", CASES["train"])
def test_same_training_steps_from_the_same_weights(name):
    """Five updates (warm-up into the peak) from the same start: the twin's losses, params and average."""
    config, steps = CONFIGS["train"][name], make.TRAIN_STEPS
    model, start = start_weights(config, make.case_seed(name))
    optimizer = build_optimizer(config, steps)
    state = create_train_state(model, optimizer, jax.random.PRNGKey(0), config.averages_weights)
    state = state.replace(params=start, ema_params=start)  # the optimizer's state holds no weights
    smoothing, decay = config.label_smoothing, config.ema_decay
    step = jax.jit(make_train_step(model, optimizer, label_smoothing=smoothing, ema_decay=decay))
    images, labels = make.images_and_labels(config.batch_size * steps, seed=1)
    for i, (x, y) in enumerate(zip(np.split(images, steps), np.split(labels, steps), strict=True)):
        state, metrics = step(state, {"image": x, "label": y.astype(np.int32), "mask": np.ones(len(y))})
        assert float(metrics["loss"]) == pytest.approx(REFERENCE[f"train/{name}/losses"][i], abs=1e-5)
    probe = make.images_and_labels(16, seed=2)[0]
    for kind, params in (("params", state.params), ("average", state.ema_params)):
        reference = {what: REFERENCE[f"train/{name}/{kind}_{what}"] for what in ("projections", "logits")}
        params = jax.tree_util.tree_map(np.asarray, params)
        np.testing.assert_allclose(reference["projections"], make.projections(params), atol=1e-5)
        np.testing.assert_allclose(reference["logits"], model.apply({"params": params}, probe), atol=1e-4)
    assert np.abs(state.params["dense2"]["kernel"] - start["dense2"]["kernel"]).max() > 1e-3  # it did train


def test_same_augmentation_from_the_same_draws():
    """best's distortions: from lenet-jax's own random draws, the twin's grid_sample made the same images."""
    images = make.images_and_labels(2, seed=2)[0]
    draws = make.augment_draws(len(images))  # JAX's draws: if they changed, rerun make_fixture.py
    chex.assert_trees_all_equal(draws, (REFERENCE["augment/u"], REFERENCE["augment/levels"]))
    augment = jax_augment.make_augment(jax_augment.augmentation_from_config(CONFIGS["augment"]["best"]))
    ours = np.asarray(augment(jax.random.PRNGKey(make.AUGMENT_KEY), jnp.asarray(images)))
    assert np.abs(ours - images).max() > 0.5  # the distortion is not a no-op
    np.testing.assert_allclose(REFERENCE["augment/images"], ours, atol=1e-5)


# --- with PyTorch: the fixture is what the twins compute now, and the twins themselves --------
@pytest.fixture(scope="module")
def twins():
    pytest.importorskip("torch")
    return importlib.import_module("benchmarks.torch_presets")  # the repository root is on pytest's path


def test_the_fixture_is_what_pytorch_computes_now(twins):
    """Fails when a twin, a preset or the inputs changed: rerun make_fixture.py (and review)."""
    assert make.cases() == CASES
    chex.assert_trees_all_close(make.reference(), REFERENCE, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("preset", ["fast", "best", "recipe"])
def test_the_twins_weights_round_trip_and_count(twins, preset):
    config = get_preset(preset)
    params = jax.tree_util.tree_map(np.asarray, init_params(model_from_config(config), jax.random.PRNGKey(3)))
    twin = twins.TwinLeNet.from_config(config)
    twins.load_flax_params(twin, params)
    chex.assert_trees_all_equal(twins.to_flax_params(twin), params)
    if preset == "fast":  # one LayerNorm scale and offset per channel, as fast()'s docstring says
        assert twin.feature_norm.weight.shape == (16,) and sum(p.numel() for p in twin.parameters()) == 61_738


def test_the_twins_own_augmentation_draws(twins):
    """The same 256 noise levels in (-1, 1) as lenet-jax, and images that stay in [0, 1]."""
    torch = twins.torch
    np.testing.assert_array_equal(twins.gaussian_matrix(28, 4.0), jax_augment._gaussian_matrix(28, 4.0))
    allowed = {np.float32((v + 0.5) / 128 - 1) for v in range(256)}
    generator = torch.Generator().manual_seed(0)
    levels = (torch.randint(0, 256, (4096,), generator=generator).float() + 0.5) / 128.0 - 1.0
    assert set(np.unique(levels.numpy()).tolist()) <= allowed
    images = torch.from_numpy(make.images_and_labels(8, seed=2)[0].transpose(0, 3, 1, 2).copy())
    out = twins.TwinAugment(get_preset("best"))(images, generator)
    assert out.shape == (8, 1, 28, 28) and float(out.min()) >= 0 and float(out.max()) <= 1 + 1e-6


@pytest.mark.parametrize("field, value", [("optimizer", "lion"), ("grad_clip", 1.0), ("augment_stroke", 1.0)])
def test_unsupported_fields_are_refused(twins, field, value):
    with pytest.raises(twins.UnsupportedConfig, match=field):
        twins.check_supported(Config(**{field: value}))


def test_time_to_accuracy_evaluates_where_the_jax_trainer_does(twins, idx_dir):
    """6 steps an epoch, evaluated every 3; 4 steps a call: after the call passing each multiple of 3."""
    config = get_preset("fast").replace(batch_size=16, epochs=2)
    data = twins.load_idx(idx_dir)
    for per_call, expected in ((1, [3, 6, 9, 12]), (4, [4, 6, 10, 12])):
        rows, options = [], {"evals_per_epoch": 2, "data": data, "steps_per_call": per_call}
        result = twins.time_to_accuracy(config, seed=0, target=1.01, on_eval=rows.append, **options)
        assert [row["step"] for row in rows] == expected and result["train_seconds"] > 0
        assert (result["reached"], result["step"], result["epoch"]) == (False, 12, 2.0)


def test_cli_prints_one_json_line(twins, idx_dir, capsys):
    assert twins.main(["--preset", "fast", "--data-dir", str(idx_dir), "--target=0.5", "--threads=1"]) == 0
    result = json.loads(capsys.readouterr().out)  # one line: a second would be "Extra data"
    assert result["impl"] == "pytorch-twin" and result["preset"] == "fast" and result["threads"] == 1
    assert {"reached", "epoch", "train_seconds", "test_accuracy", "first_step_seconds"} <= set(result)
