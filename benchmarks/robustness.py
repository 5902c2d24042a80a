"""A robustness set: MNIST digits as real digits differ from them, and digits drawn with a mouse.

    python -m benchmarks robustness --workdir W [--count 1000] [--source test|validation]

Each MNIST digit is turned into what a pen, a scanner or a phone would make of it, or a digit is
drawn from a template as mouse strokes on the page's canvas, then goes through `lenet_jax.predict`
at its defaults: one JSON line per transform, the accuracy (a refused image counts as wrong) and
the unsure rate. `--source validation`: the last 5,000 training images, what settings are chosen on.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from lenet_jax.data import load_dataset
from lenet_jax.predict import ImageError, Predictor, load_predictor, verdict

BIG = 112  # MNIST digits are enlarged 4x before a pen or scanner is applied
VALIDATION_SIZE = 5000
CANVAS = 280  # the page's canvas, and its pen (lenet_jax/static/index.html)
PAGE_LINE_WIDTH = 18


def _enlarged(digit: np.ndarray, size: int = BIG) -> np.ndarray:
    return np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), np.float32)


def _disc(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _on_paper(ink: np.ndarray, rng: np.random.Generator, ink_level=30.0, paper=235.0, noise=4.0):
    """White-on-black ink (0-255) as dark ink on light paper, with sensor noise: uint8."""
    image = paper + (ink_level - paper) * np.clip(ink, 0, 255) / 255.0
    image = image + rng.normal(0, noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _stroked(grey_morphology, digit: np.ndarray, radius) -> np.ndarray:
    """The enlarged digit's strokes widened (grey_dilation) or thinned (grey_erosion) by a disc."""
    return grey_morphology(_enlarged(digit), footprint=_disc(int(radius)))


def _rescanned(ink: np.ndarray, side: int) -> np.ndarray:
    """Scanned at `side` pixels a side, then enlarged (bicubic)."""
    small = Image.fromarray(ink).resize((side, side), Image.Resampling.BOX)
    return np.asarray(small.resize((BIG, BIG), Image.Resampling.BICUBIC), np.float32)


def _lit_unevenly(image: np.ndarray, rng: np.random.Generator, axis: int) -> np.ndarray:
    """Darker along `axis` by up to 40 grey levels: uint8."""
    ramp = np.expand_dims(np.linspace(0, 1, image.shape[axis]), 1 - axis) * float(rng.uniform(-40, 0))
    return np.clip(image.astype(np.float32) + ramp, 0, 255).astype(np.uint8)


def off_centre(digit, rng):
    """Small, anywhere on a wide sheet."""
    size = int(rng.integers(50, 90))
    sheet = np.zeros((220, 300), np.float32)
    top, left = int(rng.integers(0, 220 - size)), int(rng.integers(0, 300 - size))
    sheet[top : top + size, left : left + size] = _enlarged(digit, size)
    return _on_paper(sheet, rng)


def rotated_photo(digit, rng):
    """Tilted 10-20 degrees either way, with a margin of paper, lit unevenly."""
    angle = float(rng.uniform(10, 20) * rng.choice([-1, 1]))
    ink = np.asarray(Image.fromarray(_enlarged(digit)).rotate(angle, Image.Resampling.BILINEAR, expand=True))
    return _lit_unevenly(_on_paper(np.pad(ink, 30), rng), rng, axis=0)


def bad_scan(digit, rng):
    """All at once, as the misses on real scans look: thick, blurred, low resolution, faint."""
    ink = _stroked(ndimage.grey_dilation, digit, rng.integers(3, 7))
    ink = ndimage.gaussian_filter(_rescanned(ink, int(rng.integers(10, 15))), 2.0)
    return _on_paper(ink, rng, ink_level=float(rng.uniform(100, 150)), paper=210.0, noise=3.0)


# name -> (MNIST digit, rng) -> the image a pen, scanner or camera makes of it.
MNIST_TRANSFORMS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "mnist": lambda digit, rng: digit,
    "thick": lambda d, rng: _on_paper(_stroked(ndimage.grey_dilation, d, rng.integers(5, 9)), rng),
    "thin": lambda d, rng: _on_paper(_stroked(ndimage.grey_erosion, d, rng.integers(2, 4)), rng),
    "blur": lambda d, rng: _on_paper(ndimage.gaussian_filter(_enlarged(d), float(rng.uniform(4, 8))), rng),
    "low_resolution": lambda d, rng: _on_paper(_rescanned(d, int(rng.integers(8, 15))), rng),
    "low_contrast": lambda d, rng: _on_paper(
        _enlarged(d), rng, ink_level=float(rng.uniform(120, 160)), paper=200.0, noise=3.0
    ),
    # dark ink on paper lit unevenly
    "dark_on_light": lambda d, rng: _lit_unevenly(
        _on_paper(_enlarged(d), rng, ink_level=float(rng.uniform(10, 60))), rng, axis=1
    ),
    "off_centre": off_centre,
    "rotated_photo": rotated_photo,
    "bad_scan": bad_scan,
}


def _arc(cx, cy, rx, ry, start, end, points=12):
    """Points of an elliptic arc, angles in degrees (0: right, 90: down)."""
    t = np.radians(np.linspace(start, end, points))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in t]


SEVEN = [(0.1, 0.0), (0.9, 0.0), (0.4, 1.0)]
# Each digit: a few ways to write it; each way: strokes; each stroke: points in a unit box (y down).
TEMPLATES: dict[int, list[list[list[tuple[float, float]]]]] = {
    0: [[_arc(0.5, 0.5, 0.32, 0.48, -90, 270, 20)]],
    1: [[[(0.5, 0.0), (0.5, 1.0)]], [[(0.3, 0.2), (0.55, 0.0), (0.55, 1.0)]]],
    2: [[_arc(0.5, 0.28, 0.32, 0.28, 200, 340) + [(0.15, 1.0), (0.9, 1.0)]]],
    3: [[_arc(0.45, 0.25, 0.33, 0.25, 210, 450) + _arc(0.45, 0.73, 0.37, 0.27, 270, 510)]],
    4: [[[(0.6, 0.0), (0.1, 0.65), (0.9, 0.65)], [(0.65, 0.3), (0.65, 1.0)]]],
    5: [[[(0.85, 0.0), (0.25, 0.0), (0.2, 0.45)] + _arc(0.5, 0.68, 0.35, 0.3, 230, 490)]],
    6: [[[(0.75, 0.0), (0.35, 0.35)] + _arc(0.5, 0.72, 0.3, 0.28, 180, 540)]],
    7: [[SEVEN], [SEVEN, [(0.35, 0.5), (0.8, 0.5)]]],  # plain, and crossed
    8: [[_arc(0.5, 0.25, 0.25, 0.25, 90, 450) + _arc(0.5, 0.72, 0.3, 0.28, -90, 270)]],
    9: [[_arc(0.5, 0.3, 0.3, 0.3, 0, 360) + [(0.8, 0.3), (0.75, 1.0)]]],
}


def mouse_drawn(label: int, rng: np.random.Generator, line_width: int) -> np.ndarray:
    """A digit drawn with a mouse on the page: a template jittered, scaled, tilted and placed,
    drawn in black on white with round caps and joins, as the page's canvas draws."""
    strokes = TEMPLATES[label][int(rng.integers(len(TEMPLATES[label])))]
    height = rng.uniform(0.45, 0.85) * CANVAS
    width = height * rng.uniform(0.5, 0.75)
    angle = math.radians(rng.uniform(-12, 12))
    cos, sin = math.cos(angle), math.sin(angle)
    cx = CANVAS / 2 + rng.uniform(-0.25, 0.25) * (CANVAS - width)
    cy = CANVAS / 2 + rng.uniform(-0.25, 0.25) * (CANVAS - height)
    image = Image.new("L", (CANVAS, CANVAS), 255)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        points = (np.asarray(stroke) + rng.normal(0, 0.025, (len(stroke), 2)) - 0.5) * (width, height)
        xy = [(cx + a * cos - b * sin, cy + a * sin + b * cos) for a, b in points]
        draw.line(xy, fill=0, width=line_width, joint="curve")
        for px, py in (xy[0], xy[-1]):  # round caps
            r = line_width / 2
            draw.ellipse((px - r, py - r, px + r, py + r), fill=0)
    return np.asarray(image.filter(ImageFilter.SMOOTH))  # the canvas anti-aliases its lines


MOUSE_WIDTHS = {"mouse_thin": 8, "mouse_page": PAGE_LINE_WIDTH, "mouse_thick": 30}


def robustness_set(
    images: np.ndarray, labels: np.ndarray, count: int, seed: int = 0
) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """transform name -> (images, labels): the first `count` digits through each transform, and
    `count` mouse-drawn digits per line width (labels 0-9 in turn)."""
    out = {}
    for t, (name, transform) in enumerate(MNIST_TRANSFORMS.items()):
        rng = np.random.default_rng([seed, t])
        out[name] = ([transform(images[i, ..., 0], rng) for i in range(count)], labels[:count])
    for t, (name, line_width) in enumerate(MOUSE_WIDTHS.items()):
        rng = np.random.default_rng([seed, 100 + t])
        drawn = np.arange(count) % 10
        out[name] = ([mouse_drawn(int(d), rng, line_width) for d in drawn], drawn)
    return out


def score(predictor: Predictor, images: list[np.ndarray], labels: np.ndarray) -> dict:
    """Accuracy (refused images count as wrong) and unsure rate of the predictor's defaults."""
    prepared, kept = [], []
    for i, image in enumerate(images):
        try:
            prepared.append(predictor.preprocessed([image])[0])
            kept.append(i)
        except ImageError:
            pass
    probabilities = predictor.predict_mnist(np.stack(prepared)) if prepared else np.zeros((0, 10))
    verdicts = [verdict(p) for p in probabilities]
    correct = sum(v["prediction"] == labels[i] for v, i in zip(verdicts, kept, strict=True))
    return {
        "accuracy": round(correct / len(images), 4),
        "unsure_rate": round(sum(v["unsure"] for v in verdicts) / len(images), 4),
        "refused": len(images) - len(kept),
        "images": len(images),
    }


def robustness(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.data_dir, VALIDATION_SIZE if args.source == "validation" else 0)
    split = dataset.validation if args.source == "validation" else dataset.test
    predictor = load_predictor(args.workdir, args.epoch)
    if args.no_tta:
        predictor.tta = False
    for name, (images, labels) in robustness_set(split.images, split.labels, args.count).items():
        row = {"transform": name, **score(predictor, images, labels)}
        print(json.dumps({**row, "source": args.source, "workdir": str(args.workdir), "tta": predictor.tta}))


def add_parser(commands) -> None:
    run = commands.add_parser("robustness", help="accuracy on digits unlike MNIST's, per transform")
    run.add_argument("--workdir", required=True, help="the training run's workdir")
    run.add_argument("--epoch", type=int, help="which epoch's checkpoint (default: newest)")
    run.add_argument("--data-dir", help="MNIST IDX folder (default: $LENET_DATA_DIR)")
    run.add_argument("--count", type=int, default=1000, help="images per transform")
    run.add_argument("--source", choices=("test", "validation"), default="test")
    run.add_argument("--no-tta", action="store_true", help="predict without test-time augmentation")
