"""Data augmentation on the device, inside the jitted training step.

Each image gets its own random affine transform (translation, rotation, scale, shear) and, if
enabled, an elastic distortion (Simard, Steinkraus & Platt 2003: a random displacement field,
smoothed by a Gaussian of width sigma and scaled by alpha), applied by bilinear resampling.
The keys come from the step's rng (`fold_in(state.rng, state.step)`), so augmentation is
deterministic per seed and a resumed run replays it exactly. All strengths 0: the identity.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Strengths: translate in pixels, rotate and shear in degrees, scale as a fraction
    (0.1: zoom in [0.9, 1.1]), elastic alpha in pixels with smoothing sigma in pixels."""

    translate: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0

    @property
    def enabled(self) -> bool:
        return any((self.translate, self.rotate, self.scale, self.shear, self.elastic_alpha))


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """G with G @ x = x convolved with a normalised Gaussian ('same' size, zero padding)."""
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def _augment_one(key: jax.Array, image: jax.Array, aug: Augmentation) -> jax.Array:
    """One (H, W) image, resampled through a random affine map plus an elastic field."""
    h, w = image.shape
    k_translate, k_rotate, k_scale, k_shear, k_elastic = jax.random.split(key, 5)
    ty, tx = jax.random.uniform(k_translate, (2,), minval=-1, maxval=1) * aug.translate
    angle = jax.random.uniform(k_rotate, minval=-1, maxval=1) * math.radians(aug.rotate)
    zoom = 1.0 + jax.random.uniform(k_scale, minval=-1, maxval=1) * aug.scale
    shear = jax.random.uniform(k_shear, minval=-1, maxval=1) * math.radians(aug.shear)
    # Inverse map: output pixel (y, x) reads the input at centre + A^-1 (p - centre - t).
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    forward = jnp.array([[cos, -sin], [sin, cos]]) @ jnp.array([[1.0, jnp.tan(shear)], [0.0, 1.0]])
    inverse = jnp.linalg.inv(forward * zoom)
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
    points = jnp.stack([ys.ravel() - centre[0] - ty, xs.ravel() - centre[1] - tx])
    source = inverse @ points + centre[:, None]
    if aug.elastic_alpha:
        g = jnp.asarray(_gaussian_matrix(h, aug.elastic_sigma))
        noise = jax.random.uniform(k_elastic, (2, h, w), minval=-1, maxval=1)
        field = jnp.einsum("ab,cbd,ed->cae", g, noise, g)  # smooth along both axes
        field = field / (jnp.abs(field).max() + 1e-6) * aug.elastic_alpha
        source = source + field.reshape(2, -1)
    return map_coordinates(image, [source[0], source[1]], order=1, mode="constant").reshape(h, w)


def make_augment(aug: Augmentation) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """key, images (B, H, W, 1) float -> augmented images; None when all strengths are 0."""
    if not aug.enabled:
        return None

    def augment(key: jax.Array, images: jax.Array) -> jax.Array:
        keys = jax.random.split(key, images.shape[0])
        out = jax.vmap(lambda k, im: _augment_one(k, im, aug))(keys, images[..., 0])
        return out[..., None]

    return augment


def augmentation_from_config(config) -> Augmentation:
    """The Augmentation a Config's augment_* / elastic_* fields describe."""
    return Augmentation(
        translate=config.augment_translate,
        rotate=config.augment_rotate,
        scale=config.augment_scale,
        shear=config.augment_shear,
        elastic_alpha=config.elastic_alpha,
        elastic_sigma=config.elastic_sigma,
    )
