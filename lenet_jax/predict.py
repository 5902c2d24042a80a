"""Recognising digits in ordinary images: MNIST-style preprocessing and a batched predictor.

MNIST digits were made by scaling each digit to fit a 20x20 box (keeping its aspect ratio,
anti-aliased) and centring its centre of mass in a 28x28 image, white ink on black. `preprocess`
does the same to a photo or scan of any size, colour or grey, dark ink on light paper or light
on dark, so the model sees what it was trained on. `load_predictor` restores a checkpoint's
parameters and returns a callable from images (arrays or file paths) to probabilities.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from lenet_jax.errors import DataError
from lenet_jax.evaluation import restore_params
from lenet_jax.idx import IMAGE_SIZE
from lenet_jax.model import model_from_config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DIGIT_BOX = 20  # MNIST scales each digit to fit 20x20 ...
CANVAS = IMAGE_SIZE  # ... and centres its centre of mass in 28x28
INK_THRESHOLD = 0.25  # fraction of the ink range below which a pixel is background noise
MIN_CONTRAST = 0.15  # below this (on a 0-1 scale) the image is taken as blank
PREDICT_BATCH = 256  # images per device call; padded, so the forward pass compiles once


class NoInkError(DataError):
    """The image holds no digit: blank, or all one colour."""


def to_grey(image: np.ndarray) -> np.ndarray:
    """float32 (H, W) in [0, 1] from uint8/float, grey, RGB or RGBA (alpha over white)."""
    array = np.asarray(image)
    grey = array.astype(np.float32)
    if array.dtype == np.uint8 or grey.max() > 1.0:
        grey = grey / 255.0
    if grey.ndim == 3:
        if grey.shape[-1] == 4:  # transparent pixels are paper
            alpha = grey[..., 3:4]
            grey = grey[..., :3] * alpha + (1.0 - alpha)
        if grey.shape[-1] >= 3:
            grey = grey[..., :3] @ np.asarray([0.299, 0.587, 0.114], np.float32)
        else:
            grey = grey[..., 0]
    if grey.ndim != 2:
        raise DataError(f"expected an image of shape (H, W) or (H, W, C), got {array.shape}")
    return grey


def preprocess(image: np.ndarray) -> np.ndarray:
    """An image of a digit -> uint8 (28, 28, 1), white ink on black, MNIST-style.

    To grey; invert if the background (the border's median) is light; drop faint noise below
    25% of the ink range; crop to the ink's bounding box; scale to fit 20x20 keeping the aspect
    ratio (anti-aliased); paste into 28x28 with the centre of mass at the centre.
    Raises NoInkError for a blank or single-colour image.
    """
    grey = to_grey(image)
    background = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    if background > 0.5:  # dark ink on light paper
        grey, background = 1.0 - grey, 1.0 - background
    ink = np.clip(grey - background, 0.0, None)
    if ink.max() < MIN_CONTRAST:
        raise NoInkError(
            "the image has no ink (blank or all one colour): give a picture of a handwritten digit"
        )
    ink = ink / ink.max()
    ink[ink < INK_THRESHOLD] = 0.0
    rows, cols = np.nonzero(ink)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = ink.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = Image.fromarray((ink * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    digit = np.asarray(digit, np.float32)
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    top, left = (CANVAS - digit.shape[0]) // 2, (CANVAS - digit.shape[1]) // 2
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    # Shift the centre of mass to the centre, staying inside. MNIST's digits have it at pixel
    # (14, 14) on average (measured over its test set), not at the geometric 13.5: match that.
    total = canvas.sum()
    ys, xs = np.indices(canvas.shape)
    dy = int(round(CANVAS / 2 - (ys * canvas).sum() / total))
    dx = int(round(CANVAS / 2 - (xs * canvas).sum() / total))
    dy = int(np.clip(dy, -top, CANVAS - top - digit.shape[0]))
    dx = int(np.clip(dx, -left, CANVAS - left - digit.shape[1]))
    canvas = np.roll(canvas, (dy, dx), axis=(0, 1))
    return np.clip(canvas, 0, 255).round().astype(np.uint8)[..., None]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as an array; DataError naming the file if it is not a readable image."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read {path} as an image ({e}): give PNG, JPEG or BMP files") from e


def image_paths(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, and the image files (sorted) of any directory given."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item} does not exist: give image files or a directory of them")
    return paths


class Predictor:
    """Probabilities of the 10 digits for images; one jitted forward pass, batched."""

    def __init__(self, model: Any, params: Any, epoch: int | None = None):
        self.params, self.epoch = params, epoch

        # Jitted once for PREDICT_BATCH images: inputs are padded to it, so any number of images
        # reuses the same compilation. uint8 in, scaled on the device as in training.
        @jax.jit
        def probabilities(params, images):
            logits = model.apply({"params": params}, images.astype(jnp.float32) / 255.0)
            return jax.nn.softmax(logits)

        self._probabilities = probabilities

    @staticmethod
    def preprocessed(images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (N, 28, 28, 1): each image through `preprocess`."""
        if not len(images):
            return np.zeros((0, CANVAS, CANVAS, 1), np.uint8)
        return np.stack([preprocess(image) for image in images])

    def predict_mnist(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 10) for already MNIST-formatted uint8 images (N, 28, 28, 1)."""
        out = []
        for start in range(0, len(images), PREDICT_BATCH):
            chunk = images[start : start + PREDICT_BATCH]
            padded = np.zeros((PREDICT_BATCH, CANVAS, CANVAS, 1), np.uint8)
            padded[: len(chunk)] = chunk
            out.append(np.asarray(self._probabilities(self.params, padded))[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, 10), np.float32)

    def __call__(self, images: Sequence[np.ndarray | str | os.PathLike]) -> np.ndarray:
        """float32 (N, 10) probabilities for images given as arrays or file paths."""
        arrays = [read_image(i) if isinstance(i, (str, os.PathLike)) else i for i in images]
        return self.predict_mnist(self.preprocessed(arrays))


def load_predictor(workdir: str | os.PathLike, epoch: int | None = None) -> Predictor:
    """The predictor of one epoch's checkpoint in workdir (newest by default)."""
    restored = restore_params(workdir, epoch)
    return Predictor(model_from_config(restored.config), restored.params, restored.epoch)
