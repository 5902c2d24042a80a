"""Configs: presets, validation, flags generated from the fields."""

import jax
import pytest

from lenet_jax import cli
from lenet_jax.config import OPTIMIZERS as CHOICES
from lenet_jax.config import PRESETS, Config, get_preset
from lenet_jax.errors import ConfigError
from lenet_jax.model import count_params, init_params, model_from_config
from lenet_jax.optimizers import OPTIMIZERS


def parse(*argv):
    parser = cli.Parser()
    cli.add_config_flags(parser)
    return cli.config_from_args(parser.parse_args(list(argv)))


def test_recipe_and_best_presets_and_the_optimizer_choices():
    c = get_preset("recipe")
    assert (c.activation, c.pool, c.dense_activation, c.init_scheme) == ("sigmoid", "avg", False, "torch")
    assert (c.optimizer, c.lr, c.batch_size, c.epochs) == ("sgd", 0.05, 64, 20)
    best = get_preset("best")  # all training images, no test-set choices
    assert best.validation_size == 0 and best.train_size is None
    assert best.ema_decay > 0 and best.elastic_alpha > 0 and best.label_smoothing > 0
    assert CHOICES is OPTIMIZERS  # one list, where the optimizers are


def test_every_field_has_a_flag_and_flags_override_one_field():
    config = parse("--batch-size", "128", "--activation", "relu", "--dense-activation", "--grad-clip", "1.5")
    assert config == Config(batch_size=128, activation="relu", dense_activation=True, grad_clip=1.5)
    assert parse() == Config()
    assert parse("--preset", "smoke", "--epochs", "3") == get_preset("smoke").replace(epochs=3)


def test_config_roundtrips_through_json_dict():
    c = Config(lr=0.1, keep=3)
    assert Config.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown config fields"):
        Config.from_dict({**c.to_dict(), "colour": "red"})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"batch_size": 0}, "batch_size must be at least 1, not 0"),
        ({"lr": float("inf")}, "lr must be a finite number, not inf"),
        ({"optimizer": "adamax"}, "optimizer must be one of sgd, momentum, .*, not 'adamax'"),
        ({"augment_rotate": -1}, "augment_rotate must be >= 0"),
        ({"augment_scale": 1.5}, "augment_scale must be below 1"),
        ({"augment_blur": -1}, "augment_blur must be >= 0"),
        ({"augment_stroke": 4}, "augment_stroke must be at most 3"),
    ],
)
def test_a_config_built_directly_or_replaced_is_validated(fields, message):
    for build in (Config, Config().replace):
        with pytest.raises(ConfigError, match=message):
            build(**fields)


def test_errors_name_the_field_and_the_scripts_print_its_flag(capsys):
    """(Every bad flag's line, through the scripts: tests/test_fuzz.py, family "flags".)"""
    with pytest.raises(ConfigError, match="^label_smoothing must be in") as error:
        Config(label_smoothing=2.0)
    assert error.value.field == "label_smoothing"

    def main(argv):
        raise error.value

    assert cli.run(main, []) == 2
    assert capsys.readouterr().err == "error: --label-smoothing must be in [0, 1), not 2.0\n"


def test_removed_fields_warn_and_are_ignored():
    with pytest.warns(DeprecationWarning, match="conv_impl is gone since lenet-jax 0.3"):
        assert Config().replace(conv_impl="xla", lr=0.1) == Config(lr=0.1)


def test_a_python_optimizers_record_holds_no_config_optimizer_fields():
    record = Config(lr=0.3).to_record(optimizer_from_python=True)
    assert record["optimizer"] == "python" and "lr" not in record and "schedule" not in record
    assert Config.from_dict(record) == Config()  # the optimizer fields fall back to defaults


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_documented_and_keeps_lenet5_size(name):
    config = get_preset(name)  # presets change how LeNet-5 computes, never its layer sizes
    doc = PRESETS[name].__doc__
    assert isinstance(config, Config) and "Run:" in doc and "Expected:" in doc
    shapes = jax.eval_shape(lambda: init_params(model_from_config(config), jax.random.PRNGKey(0)))
    assert count_params(shapes) == 61_706 + (32 if config.feature_norm else 0) <= 62_000


def test_init_scheme_keeps_its_0_1_spellings():
    assert parse("--init", "flax").init_scheme == "flax"  # the old flag
    assert Config().replace(init="flax").init_scheme == "flax"
    old_record = {k: v for k, v in Config().to_dict().items() if k != "init_scheme"} | {"init": "flax"}
    assert Config.from_dict(old_record) == Config(init_scheme="flax")
