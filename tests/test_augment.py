"""Augmentation on the device: identity at zero strength, keys, ink mass (bad strengths: test_config)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.ndimage import map_coordinates

from lenet_jax import augment
from lenet_jax.augment import Augmentation, augmentation_from_config, make_augment
from lenet_jax.config import Config

STRONG = Augmentation(translate=2, rotate=15, scale=0.1, shear=10, elastic_alpha=2, elastic_sigma=4)


def strokes(n=6):
    images = np.zeros((n, 28, 28, 1), np.float32)
    for i in range(n):
        images[i, 6 + i : 22, 10 + i : 15 + i, 0] = 1.0
        images[i, 6:9, 8:20, 0] = 0.8
    return jnp.asarray(images)


def test_zero_strength_is_no_augmentation_and_a_tiny_one_the_identity():
    assert make_augment(Augmentation()) is None and make_augment(augmentation_from_config(Config())) is None
    images = strokes()
    out = make_augment(Augmentation(translate=1e-9))(jax.random.PRNGKey(0), images)
    np.testing.assert_allclose(out, images, atol=1e-6)


def test_shape_dtype_and_key_dependence():
    images = strokes()
    jitted = jax.jit(make_augment(STRONG))
    a = jitted(jax.random.PRNGKey(0), images)
    assert a.shape == images.shape and a.dtype == images.dtype
    np.testing.assert_array_equal(a, jitted(jax.random.PRNGKey(0), images))
    assert not np.allclose(a, jitted(jax.random.PRNGKey(1), images))
    for i in range(len(images)):  # each image is transformed, each its own way
        assert not np.allclose(a[i], images[i]), i
    same = jitted(jax.random.PRNGKey(0), np.repeat(images[:1], len(images), axis=0))
    assert all(not np.allclose(same[0], same[i]) for i in range(1, len(images)))


@pytest.mark.parametrize(
    "aug", [Augmentation(translate=2, rotate=15, shear=10), Augmentation(elastic_alpha=2, elastic_sigma=4)]
)
def test_ink_mass_is_roughly_conserved(aug):
    images = strokes()
    out = make_augment(aug)(jax.random.PRNGKey(3), images)
    ratio = np.asarray(out.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3)))
    assert np.all(np.abs(ratio - 1) < 0.2), ratio  # local stretching changes it a little


def test_translation_moves_the_centre_of_mass_by_at_most_the_strength():
    images = strokes()
    out = make_augment(Augmentation(translate=3))(jax.random.PRNGKey(5), images)
    ys = np.arange(28)[None, :, None]
    com = lambda x: (np.asarray(x[..., 0]).sum(2) * ys[..., 0]).sum(1) / np.asarray(x).sum((1, 2, 3))  # noqa: E731
    assert np.all(np.abs(com(out) - com(images)) <= 3.2)


def test_bilinear_sampling_matches_map_coordinates():
    # The 2x2-window gather against SciPy's bilinear sampling, inside, on and far beyond the border.
    images = jax.random.uniform(jax.random.PRNGKey(0), (3, 28, 28))
    ys, xs = jax.random.uniform(jax.random.PRNGKey(1), (2, 3, 500), minval=-6, maxval=34)
    expected = jax.vmap(lambda im, y, x: map_coordinates(im, [y, x], order=1, mode="constant"))(
        images, ys, xs
    )
    np.testing.assert_allclose(augment._bilinear(images, ys, xs), expected, atol=1e-6)


def test_elastic_field_strength_and_smoothness():
    field = augment._elastic_field(jax.random.PRNGKey(2), 4, 28, 28, Augmentation(elastic_alpha=3))
    field = np.asarray(field)
    assert field.shape == (4, 2, 28, 28)
    np.testing.assert_allclose(np.abs(field).max(axis=(1, 2, 3)), 3.0, rtol=1e-4)  # alpha = max |d|
    # Smoothed with sigma 4: neighbours move together (white noise would give ~0 correlation).
    assert np.corrcoef(field[..., :-1].ravel(), field[..., 1:].ravel())[0, 1] > 0.9
    assert abs(field.mean()) < 0.5  # zero-mean noise: no systematic drift


BAR = np.zeros((1, 28, 28), np.float32)  # a vertical bar 4 pixels wide (B=1, H, W)
BAR[0, 6:22, 13:17] = 1.0


def test_stroke_width_grows_and_thins_strokes():
    drawn = {r: augment._stroke_width(jnp.asarray(BAR), jnp.array([r]), 2) for r in (-1, -0.5, 0, 0.5, 1, 2)}
    widths = {r: float(np.asarray(image)[0, 14].sum()) for r, image in drawn.items()}  # the middle row
    assert widths[0] == 4 and widths[1] == 6 and widths[2] == 8 and widths[-1] == 2  # a pixel a side
    assert widths[-1] < widths[-0.5] < widths[0] < widths[0.5] < widths[1]  # fractions blend


def test_blur_softens_an_edge_and_keeps_the_ink():
    image = jnp.asarray(BAR)
    blur = augment._blur_matrices(jnp.asarray([1.5]), 28)
    blurred = blur @ image @ blur.mT
    row = np.asarray(blurred)[0, 14]
    assert np.abs(np.diff(row)).max() < 0.5  # the edge was a step of 1
    assert np.count_nonzero(row > 0.01) > 8  # ink spread beyond the 4 pixels
    np.testing.assert_allclose(float(blurred.sum()), float(image.sum()), rtol=1e-3)
    np.testing.assert_allclose(augment._blur_matrices(jnp.asarray([0.0]), 5)[0], np.eye(5), atol=1e-6)


def test_lowres_loses_fine_detail_and_is_the_identity_at_factor_1():
    np.testing.assert_allclose(augment._lowres_matrices(jnp.asarray([1.0]), 28)[0], np.eye(28), atol=1e-6)
    stripes = np.zeros((1, 28, 28), np.float32)
    stripes[0, :, ::2] = 1.0  # the finest detail there is: 1-pixel stripes
    scan = augment._lowres_matrices(jnp.asarray([2.0]), 28)[0]
    out = np.asarray(stripes[0] @ scan.T)[:, 2:-2]
    assert np.ptp(out) < 0.1 and abs(out.mean() - 0.5) < 0.05  # averaged away to grey


def test_pen_and_scan_varies_per_image_and_keeps_the_peak():
    images = strokes()
    out = make_augment(Augmentation(stroke=1, blur=1, lowres=1, gamma=0.5))(jax.random.PRNGKey(0), images)
    np.testing.assert_allclose(out.max(axis=(1, 2, 3)), images.max(axis=(1, 2, 3)), rtol=1e-5)
    ink = np.asarray(out.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3)))
    assert np.ptp(ink) > 0.1, ink  # each image drawn with its own pen


def test_gamma_keeps_paper_and_full_ink_and_moves_the_greys():
    ramp = jnp.tile(jnp.linspace(0, 1, 28)[None, None, :, None], (8, 28, 1, 1))
    out = np.asarray(make_augment(Augmentation(gamma=0.7))(jax.random.PRNGKey(1), ramp))
    np.testing.assert_allclose(out[:, :, 0], 0, atol=1e-6)
    np.testing.assert_allclose(out[:, :, -1], 1, atol=1e-5)
    middle = out[:, 0, 14, 0]
    assert middle.min() < 0.48 < 0.56 < middle.max()  # darker and fainter greys across the batch


def test_pen_augmentation_leaves_the_geometric_draws_as_they_were():
    # Adding the pen to `best`'s distortions does not change which distortion each image gets.
    a = make_augment(Augmentation(translate=2, rotate=15))(jax.random.PRNGKey(4), strokes())
    b = make_augment(Augmentation(translate=2, rotate=15, gamma=1e-9))(jax.random.PRNGKey(4), strokes())
    np.testing.assert_allclose(a, b, atol=1e-5)
