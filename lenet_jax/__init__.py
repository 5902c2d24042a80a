"""lenet-jax: the classic LeNet digit recognizer, trained in JAX/Flax.

Entry points: `lenet_jax.train.train_and_evaluate(config, workdir)` and
`lenet_jax.evaluation.evaluate_checkpoint(workdir, epoch)`; configs in `lenet_jax.config`.
"""

__version__ = "0.1.0"
