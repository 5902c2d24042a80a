"""Augmentation on the device, keyed by the step: affine, elastic (Simard 2003), another pen and scanner.
Whole batches at once: cheaper on XLA:CPU than vmap."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Strengths, as the Config fields of the same names (`augment_*`, `elastic_*`) describe them."""

    translate: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    stroke: float = 0.0
    blur: float = 0.0
    lowres: float = 0.0
    gamma: float = 0.0

    @property
    def geometric(self) -> bool:
        return any((self.translate, self.rotate, self.scale, self.shear, self.elastic_alpha))

    @property
    def pen(self) -> bool:
        return any((self.stroke, self.blur, self.lowres, self.gamma))


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """G with G @ x = x convolved with a normalised Gaussian ('same' size, zero padding)."""
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    g = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def _uniform_bytes(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform noise in (-1, 1), 256 levels, four per random word: smoothed, it loses nothing visible."""
    n = math.prod(shape)
    words = jax.random.bits(key, (-(-n // 4),), jnp.uint32)
    values = jnp.stack([(words >> shift) & 0xFF for shift in (0, 8, 16, 24)], axis=-1).reshape(-1)[:n]
    return ((values.astype(jnp.float32) + 0.5) / 128.0 - 1.0).reshape(shape)


def _elastic_field(key: jax.Array, batch: int, h: int, w: int, aug: Augmentation) -> jax.Array:
    """(B, 2, H, W) smoothed noise, max |d| = alpha; drawn as (H, B*2, W): two plain matrix products."""
    gy = jnp.asarray(_gaussian_matrix(h, aug.elastic_sigma))
    gx = jnp.asarray(_gaussian_matrix(w, aug.elastic_sigma))
    noise = _uniform_bytes(key, (h, batch * 2 * w))
    field = (gy @ noise).reshape(h * batch * 2, w) @ gx.T  # smooth along y, then along x
    field = field.reshape(h, batch, 2, w).transpose(1, 2, 0, 3)
    peak = jnp.abs(field).max(axis=(1, 2, 3), keepdims=True)
    return field / (peak + 1e-6) * aug.elastic_alpha


def _bilinear(images: jax.Array, ys: jax.Array, xs: jax.Array) -> jax.Array:
    """images (B, H, W) at float ys, xs (B, P), zero outside: one 2x2 gather (not map_coordinates' 4)."""
    b, h, w = images.shape
    padded = jnp.pad(images, ((0, 0), (2, 3), (2, 3)))
    y0, x0 = jnp.floor(ys), jnp.floor(xs)
    wy, wx = ys - y0, xs - x0
    rows = jnp.clip(y0, -2, h).astype(jnp.int32) + 2
    cols = jnp.clip(x0, -2, w).astype(jnp.int32) + 2
    batch = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], rows.shape)
    starts = jnp.stack([batch, rows, cols], axis=-1)  # (B, P, 3)
    dims = lax.GatherDimensionNumbers(
        offset_dims=(2, 3), collapsed_slice_dims=(0,), start_index_map=(0, 1, 2)
    )
    win = lax.gather(padded, starts, dims, slice_sizes=(1, 2, 2), mode="promise_in_bounds")  # (B, P, 2, 2)
    top = win[..., 0, 0] * (1 - wx) + win[..., 0, 1] * wx
    bottom = win[..., 1, 0] * (1 - wx) + win[..., 1, 1] * wx
    return top * (1 - wy) + bottom * wy


def _source_coordinates(key: jax.Array, batch: int, h: int, w: int, aug: Augmentation):
    """(B, H*W) rows and columns pixel p reads: centre + A^-1 (p - centre - t), A = zoom * rot @ shear."""
    u = jax.random.uniform(key, (batch, 5), minval=-1, maxval=1)
    ty, tx = u[:, 0:1] * aug.translate, u[:, 1:2] * aug.translate
    angle = u[:, 2:3] * math.radians(aug.rotate)
    zoom = 1.0 + u[:, 3:4] * aug.scale
    tan = jnp.tan(u[:, 4:5] * math.radians(aug.shear))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    a00, a01, a10, a11 = cos, cos * tan - sin, sin, sin * tan + cos  # A / zoom
    inv_zoom = 1.0 / zoom
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    dy = ys.ravel()[None, :] - cy - ty
    dx = xs.ravel()[None, :] - cx - tx
    # (A / zoom)^-1 = [[a11, -a01], [-a10, a00]] (its determinant is cos^2 + sin^2 = 1).
    rows = (a11 * dy - a01 * dx) * inv_zoom + cy
    cols = (-a10 * dy + a00 * dx) * inv_zoom + cx
    return rows, cols


def _stroke_width(images: jax.Array, radius: jax.Array, levels: int) -> jax.Array:
    """Strokes grown (radius > 0: 3x3 max filters) or thinned (< 0: min); fractions blend the two nearest."""
    window = lambda x, op, init: lax.reduce_window(x, init, op, (1, 3, 3), (1, 1, 1), "SAME")  # noqa: E731
    grown, thinned = [images], [images]
    for _ in range(levels):
        grown.append(window(grown[-1], lax.max, -jnp.inf))
        thinned.append(window(thinned[-1], lax.min, jnp.inf))
    stack = jnp.stack(thinned[:0:-1] + grown)  # radius -levels .. +levels, (2 levels + 1, B, H, W)
    position = jnp.clip(radius + levels, 0, 2 * levels)
    low = jnp.minimum(jnp.floor(position), 2 * levels - 1).astype(jnp.int32)
    frac = (position - low)[:, None, None]
    pick = lambda i: jnp.take_along_axis(stack, i[None, :, None, None], axis=0)[0]  # noqa: E731
    return pick(low) * (1 - frac) + pick(low + 1) * frac


def _blur_matrices(sigma: jax.Array, size: int) -> jax.Array:
    """(B, size, size) row-normalised Gaussian smoothing matrices, one per sigma (0: identity)."""
    offsets = jnp.arange(size, dtype=jnp.float32)
    d = offsets[:, None] - offsets[None, :]
    g = jnp.exp(-0.5 * (d[None] / jnp.maximum(sigma, 1e-3)[:, None, None]) ** 2)
    return g / g.sum(axis=2, keepdims=True)


def _lowres_matrices(factor: jax.Array, size: int) -> jax.Array:
    """(B, size, size): boxes of `factor` pixels averaged, then interpolated back; factor 1: identity."""
    pixels = jnp.arange(size, dtype=jnp.float32)
    f = factor[:, None, None]
    # Down: coarse pixel j covers [j f, (j + 1) f); its value is the mean of what it covers.
    j, k = pixels[None, :, None], pixels[None, None, :]
    overlap = jnp.minimum(k + 1, (j + 1) * f) - jnp.maximum(k, j * f)
    down = jnp.maximum(overlap, 0.0) / f  # (B, coarse j, fine k)
    # Up: fine pixel i sits at coarse coordinate (i + 0.5) / f - 0.5; linear interpolation.
    coarse = (pixels[None, :, None] + 0.5) / f - 0.5
    up = jnp.maximum(0.0, 1.0 - jnp.abs(jnp.maximum(coarse, 0.0) - pixels[None, None, :]))  # (B, i, j)
    return up @ down


def _pen_and_scan(key: jax.Array, images: jax.Array, aug: Augmentation) -> jax.Array:
    """A random half of images (B, H, W) with another pen and scan, peaks kept (as predict.preprocess)."""
    batch, h, w = images.shape
    # Half the images keep MNIST's pen: changing all raised validation error (docs/results.md).
    k_which, k_strength = jax.random.split(key)
    u = jax.random.uniform(k_strength, (batch, 4))
    changed = jax.random.bernoulli(k_which, 0.5, (batch,))
    out = images
    if aug.stroke:
        # Thinning up to half the strength only: MNIST's strokes are thin, more erases them.
        radius = jnp.where(changed, (1.5 * u[:, 0] - 0.5) * aug.stroke, 0.0)
        out = _stroke_width(out, radius, math.ceil(aug.stroke))
    if aug.blur or aug.lowres:
        if h != w:
            raise ValueError(f"blur and lowres need square images, not {h}x{w}")
        rows = jnp.broadcast_to(jnp.eye(h, dtype=out.dtype), (batch, h, h))
        if aug.blur:
            rows = _blur_matrices(jnp.where(changed, u[:, 1] * aug.blur, 0.0), h)
        if aug.lowres:
            rows = _lowres_matrices(1 + jnp.where(changed, u[:, 2] * aug.lowres, 0.0), h) @ rows
        out = rows @ out @ jnp.swapaxes(rows, 1, 2)
    if aug.gamma:
        gamma = jnp.exp(jnp.where(changed, (2 * u[:, 3] - 1) * aug.gamma, 0.0))
        out = jnp.maximum(out, 0.0) ** gamma[:, None, None]
    peak = out.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, out * (images.max(axis=(1, 2), keepdims=True) / jnp.maximum(peak, 1e-6)), out)


def make_augment(aug: Augmentation) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """(key, images (B, H, W, 1)) -> augmented images; None when all strengths are 0."""
    if not (aug.geometric or aug.pen):
        return None

    def augment(key: jax.Array, images: jax.Array) -> jax.Array:
        batch, h, w, _ = images.shape
        out = images[..., 0]
        if aug.geometric:
            k_affine, k_elastic = jax.random.split(key)
            rows, cols = _source_coordinates(k_affine, batch, h, w, aug)
            if aug.elastic_alpha:
                field = _elastic_field(k_elastic, batch, h, w, aug)
                rows = rows + field[:, 0].reshape(batch, -1)
                cols = cols + field[:, 1].reshape(batch, -1)
            out = _bilinear(out, rows, cols).reshape(batch, h, w)
        if aug.pen:  # its own key, folded: the geometric draws stay what they were before it
            out = _pen_and_scan(jax.random.fold_in(key, 2), out, aug)
        return out[..., None]

    return augment


def augmentation_from_config(config) -> Augmentation:
    names = [field.name for field in dataclasses.fields(Augmentation)]
    return Augmentation(
        **{n: getattr(config, n if n.startswith("elastic") else f"augment_{n}") for n in names}
    )
