"""Recognising digits in images: safe `read_image`, MNIST-style `preprocess`, and `load_predictor`."""

from __future__ import annotations

import functools
import io
import os
import re
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from lenet_jax.checkpoints import load_weights
from lenet_jax.errors import DataError
from lenet_jax.idx import IMAGE_SIZE
from lenet_jax.model import model_from_config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Refused from the header, before decoding: a few KB of PNG can claim billions of pixels.
MAX_IMAGE_PIXELS = 4096 * 4096
DIGIT_BOX = 20  # MNIST scales each digit to fit 20x20 ...
CANVAS = IMAGE_SIZE  # ... and centres its centre of mass in 28x28
INK_THRESHOLD = 0.25  # fraction of the ink range below which a pixel is background noise
MIN_CONTRAST = 0.15  # below this (on a 0-1 scale) the image is taken as blank
PREDICT_BATCH = 256  # images per device call; padded, so the forward pass compiles once ...
SMALL_BATCH = 32  # ... or twice: a few images (a page's drawing) are padded to 32 only, not 256
MIN_INK_PIXELS = 10  # MNIST digits have >= 28 pixels at quarter strength, a thin drawn "1" ~20
# Test-time augmentation: the mean over these views helps real-looking digits (benchmarks/robustness.py).
TTA_SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))
TTA_ZOOMS = (0.9, 1.1)
UNSURE_BELOW = 0.6  # below it the answer is marked unsure (chosen on the validation split: docs/results.md)
LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)  # colour to grey as PIL's convert("L") weighs it
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


class ImageError(DataError):
    """An image that cannot be used; the message is the reason, in one line."""


class UnreadableImageError(ImageError):
    """Not an image file, or a damaged one."""


class ImageTooLargeError(ImageError):
    """More pixels than the cap: refused from the header, before decoding."""


class NoInkError(ImageError):
    """The image holds no digit: blank, or all one colour."""


def _to_unit(values: np.ndarray, eight_bit: bool, sixteen_bit: bool = False) -> np.ndarray:
    """float32 in [0, 1], a new array: /65535 if 16-bit (or above 255), /255 if 8-bit (or above 1)."""
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise ImageError("the image has NaN or infinite pixel values")
    top = float(values.max())
    if sixteen_bit or top > 255:
        values /= 65535.0
    elif eight_bit or top > 1:
        values /= 255.0
    return np.clip(values, 0.0, 1.0, out=values)


def to_grey(image: np.ndarray) -> np.ndarray:
    """float32 (H, W) in [0, 1], a new array, from grey or colour, any alpha over white paper."""
    array = np.asarray(image)
    if array.size == 0:
        raise ImageError(f"the image is empty (shape {array.shape})")
    grey = _to_unit(array, eight_bit=array.dtype == np.uint8)
    if grey.ndim == 3:
        if grey.shape[-1] in (2, 4):  # grey+alpha, RGBA: transparent pixels are paper
            alpha = grey[..., -1:]
            grey = grey[..., :-1] * alpha + (1.0 - alpha)
        grey = grey[..., :3] @ LUMA if grey.shape[-1] >= 3 else grey[..., 0]
    if grey.ndim != 2:
        raise ImageError(f"expected an image of shape (H, W) or (H, W, C), got {array.shape}")
    return grey


def preprocess(image: np.ndarray) -> np.ndarray:
    """A digit's image as MNIST made them: uint8 (28, 28, 1) ink cropped, fitted to 20x20, mass-centred."""
    grey = to_grey(image)  # a fresh array: worked on in place, to keep large images cheap
    background = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    if background > 0.5:  # dark ink on light paper
        np.subtract(1.0, grey, out=grey)
        background = 1.0 - background
    grey -= background
    ink = np.maximum(grey, 0.0, out=grey)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise NoInkError(
            "the image has no ink (blank or all one colour): give a picture of a handwritten digit"
        )
    ink /= peak
    ink[ink < INK_THRESHOLD] = 0.0
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = ink.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    ink *= 255
    digit = Image.fromarray(ink.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    digit = np.asarray(digit, np.float32)
    if digit.max() < 255:  # thin or sparse strokes faded when scaled down: redo it in float
        digit = np.asarray(Image.fromarray(ink, "F").resize(size, Image.Resampling.LANCZOS))
        digit = np.maximum(digit, 0.0)  # LANCZOS rings below zero next to strokes
        if digit.max() <= 0:
            raise NoInkError("the ink is too sparse to make a digit: give a picture of a handwritten digit")
        digit = digit * (255.0 / digit.max())
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    top, left = (CANVAS - digit.shape[0]) // 2, (CANVAS - digit.shape[1]) // 2
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    # Centre of mass to (14, 14), MNIST's mean (not the geometric 13.5), staying inside.
    total = canvas.sum()
    ys, xs = np.indices(canvas.shape)
    dy = int(round(CANVAS / 2 - (ys * canvas).sum() / total))
    dx = int(round(CANVAS / 2 - (xs * canvas).sum() / total))
    dy = int(np.clip(dy, -top, CANVAS - top - digit.shape[0]))
    dx = int(np.clip(dx, -left, CANVAS - left - digit.shape[1]))
    canvas = np.clip(np.roll(canvas, (dy, dx), axis=(0, 1)), 0, 255).round().astype(np.uint8)
    if np.count_nonzero(canvas >= 64) < MIN_INK_PIXELS:
        raise NoInkError(
            "too little ink to make a digit (specks, or a tiny digit on a large image): "
            "give a picture of one handwritten digit, drawn large"
        )
    return canvas[..., None]


def one_line(error: BaseException) -> str:
    """An exception's message on one line, without object reprs (`<_io.BytesIO object at 0x..>`)."""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the image", " ".join(str(error).split()))
    text = text or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def pixel_limit(max_pixels: int) -> str:
    """'16,777,216 pixels (4096x4096)': a pixel cap as a user reads it."""
    side = int(max_pixels**0.5)
    return f"{max_pixels:,} pixels" + (f" ({side}x{side})" if side * side == max_pixels else "")


def _decoded_planes(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, mask of opaque pixels or None): 8-bit images grey, any transparency over white paper."""
    if image.mode in _HIGH_DEPTH_MODES:  # 16/32-bit grey and float: keep their depth
        values = np.asarray(image)
        transparent = image.info.get("transparency")
        return values, (values != transparent) if isinstance(transparent, int) else None
    if image.mode not in _ALPHA_MODES and "transparency" not in image.info:
        return np.asarray(image.convert("L")), None
    # Every kind of transparency as alpha, over white; each plane freed once used (large images).
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    grey, alpha = rgba.convert("L"), rgba.getchannel("A")
    rgba.close()
    image.close()
    if alpha.getextrema()[0] < 255:
        grey = Image.composite(grey, Image.new("L", grey.size, 255), alpha)
    return np.asarray(grey), None


def decode_image(file: IO[bytes], max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file as grey over white: uint8 (H, W), or float32 in [0, 1] for deeper images."""
    limit = f"over the limit of {pixel_limit(max_pixels)}"
    try:
        image = Image.open(file)  # reads the header only
    except UnidentifiedImageError:
        raise UnreadableImageError("not an image file: give PNG, JPEG, BMP, GIF, TIFF or WebP") from None
    except Image.DecompressionBombError as e:  # PIL's own cap, far above ours
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        count = f"{int(claimed[1]):,} pixels" if claimed else "too many pixels"
        raise ImageTooLargeError(f"the image has {count}, {limit}") from None
    except Exception as e:  # PIL's parsers raise many types (SyntaxError, struct.error, ...)
        raise ImageError(f"cannot decode the image ({one_line(e)})") from e
    with image:
        width, height, mode = *image.size, image.mode
        if width * height > max_pixels:
            raise ImageTooLargeError(f"the image is {width}x{height} = {width * height:,} pixels, {limit}")
        if width * height == 0:
            raise ImageError("the image is empty (0 pixels)")
        try:
            values, alpha = _decoded_planes(image)
        except Exception as e:  # a damaged or hostile file: truncated data, a zTXt bomb, ...
            raise ImageError(f"cannot decode the image ({one_line(e)})") from e
    if values.dtype == np.uint8:
        return values
    values = _to_unit(values, eight_bit=mode != "F", sixteen_bit=mode.startswith("I;16"))
    if alpha is not None:
        values[~alpha] = 1.0
    return values


FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ('a named pipe', ...)."""
    return None if stat.S_ISREG(mode) else FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_image_file(path: str | os.PathLike) -> IO[bytes]:
    """A regular file opened for reading (without blocking: a named pipe never hangs), else ImageError."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as e:
        raise ImageError(f"cannot open it ({e.strerror or one_line(e)})") from None
    if kind := file_kind(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError(f"not a regular file ({kind}): give image files")
    return os.fdopen(fd, "rb")


def read_image(
    source: str | os.PathLike | bytes | IO[bytes], max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """An image (a file path, its bytes, or a binary file object) as decode_image's grey array."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(io.BytesIO(source), max_pixels)
    if not isinstance(source, (str, os.PathLike)):
        return decode_image(source, max_pixels)
    try:
        with open_image_file(source) as file:
            return decode_image(file, max_pixels)
    except ImageError as e:
        raise type(e)(f"{source}: {e}") from e


@dataclass
class ImageInputs:
    """What inputs hold: the image files, in order; (input, reason) errors; (entry, why) skipped."""

    paths: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def collect_images(inputs: Sequence[str | os.PathLike]) -> ImageInputs:
    """Files as given, and each directory's image files (by suffix, sorted), unopened."""
    found = ImageInputs()
    for item in inputs:
        try:
            mode = os.stat(item).st_mode
        except OSError as e:  # missing, a broken link or a symlink loop, a denied folder on the way
            if isinstance(e, FileNotFoundError):
                reason = "broken symbolic link" if os.path.islink(item) else "no such file or directory"
            else:
                reason = f"cannot use it ({e.strerror or one_line(e)})"
            found.problems.append((str(item), f"{reason}: give image files or a directory of them"))
            continue
        kind = file_kind(mode)
        if kind is None:
            found.paths.append(Path(item))
        elif stat.S_ISDIR(mode):
            _collect_directory(Path(item), found)
        else:
            found.problems.append((str(item), f"not a regular file ({kind}): give image files"))
    return found


def _collect_directory(folder: Path, found: ImageInputs) -> None:
    try:
        entries = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as e:
        found.problems.append((str(folder), f"cannot list this directory ({e.strerror or one_line(e)})"))
        return
    before = len(found.paths)
    for entry in entries:
        try:
            kind = file_kind(entry.stat().st_mode)
        except OSError as e:
            kind = "a broken symbolic link" if entry.is_symlink() else (e.strerror or one_line(e))
        if kind is None:
            found.paths.append(entry)
        else:
            found.skipped.append((entry, f"not a regular file ({kind})"))
    if len(found.paths) == before:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        found.problems.append((str(folder), f"no image files ({suffixes}) in this directory"))


def quiet_pil_warnings() -> None:
    """For scripts: silences PIL's warnings (bomb size, corrupt EXIF): a bad image gets its one line."""
    warnings.filterwarnings("ignore", module="PIL")


def verdict(probabilities: Sequence[float] | np.ndarray, threshold: float = UNSURE_BELOW) -> dict[str, Any]:
    """One image's answer from its 10 probabilities: the digit, whether unsure, the runner-up."""
    p = np.asarray(probabilities, np.float64)
    first, second = (int(d) for d in np.argsort(-p, kind="stable")[:2])
    return {
        "prediction": first,
        "probability": float(p[first]),
        "unsure": bool(p[first] < threshold),
        "runner_up": second,
        "runner_up_probability": float(p[second]),
    }


def _views(images: jax.Array) -> jax.Array:
    """(V * B, 28, 28, 1): the images, shifted by TTA_SHIFTS, and zoomed by TTA_ZOOMS."""
    views = [images] + [jnp.roll(images, shift, axis=(1, 2)) for shift in TTA_SHIFTS]
    for zoom in TTA_ZOOMS:
        scale = jnp.full(2, zoom)
        offset = jnp.full(2, CANVAS / 2) * (1 - scale)  # about the centre
        views.append(jax.image.scale_and_translate(images, images.shape, (1, 2), scale, offset, "linear"))
    return jnp.concatenate(views)


class Predictor:
    """Probabilities of the 10 digits for images, batched (tta: averaged over `_views`)."""

    def __init__(self, model: Any, params: Any, epoch: int | None = None, tta: bool = True):
        self.params, self.epoch, self.tta = params, epoch, tta

        # Inputs padded to SMALL_BATCH or PREDICT_BATCH: two compilations; uint8 scaled on the device.
        @functools.partial(jax.jit, static_argnums=2)
        def probabilities(params, images, tta):
            images = images.astype(jnp.float32) / 255.0
            views = _views(images) if tta else images
            probs = jax.nn.softmax(model.apply({"params": params}, views))
            return probs.reshape(-1, *images.shape[:1], probs.shape[-1]).mean(axis=0)

        self._probabilities = probabilities

    @staticmethod
    def preprocessed(images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (N, 28, 28, 1): each image through `preprocess` (reshape: none gives N = 0)."""
        return np.array([preprocess(image) for image in images], np.uint8).reshape(-1, CANVAS, CANVAS, 1)

    def predict_mnist(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 10) for already MNIST-formatted uint8 images (N, 28, 28, 1)."""
        out = []
        size = SMALL_BATCH if len(images) <= SMALL_BATCH else PREDICT_BATCH
        for start in range(0, len(images), size):
            chunk = images[start : start + size]
            padded = np.pad(np.asarray(chunk, np.uint8), ((0, size - len(chunk)), (0, 0), (0, 0), (0, 0)))
            out.append(np.asarray(self._probabilities(self.params, padded, self.tta))[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, 10), np.float32)

    def __call__(self, images: Sequence[np.ndarray | str | os.PathLike]) -> np.ndarray:
        """float32 (N, 10) probabilities for images given as arrays or file paths."""
        arrays = [read_image(i) if isinstance(i, (str, os.PathLike)) else i for i in images]
        return self.predict_mnist(self.preprocessed(arrays))


def load_predictor(workdir: str | os.PathLike, epoch: int | None = None, tta: bool = True) -> Predictor:
    """The predictor of one epoch's checkpoint in workdir (newest by default)."""
    restored = load_weights(workdir, epoch)
    return Predictor(model_from_config(restored.config), restored.params, restored.epoch, tta)
