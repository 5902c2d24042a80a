"""Recognise handwritten digits in image files: `python scripts/predict.py IMAGE... | DIR`.

    python scripts/predict.py my_digit.png --workdir checkpoints/recipe
    python scripts/predict.py photos/ --workdir checkpoints/recipe --epoch 20 --json

Any size, colour or polarity, transparent or not: each image is preprocessed the way MNIST was
made. Prints the predicted digit and the top-3 probabilities (the mean over a few shifted and
zoomed views), or, when the top one is low, the digit marked unsure with the runner-up
("7? (unsure: 7 0.48, 1 0.41)"); --json: one object per image (`path`, `prediction`,
`probabilities`, `unsure`, `runner_up`, `runner_up_probability`). An image that cannot be used
(no ink, not an image, damaged, over --max-pixels) gets a one-line reason and exit code 2; the
others still get their predictions. A directory's entries that are not regular files are skipped.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from lenet_jax import cli, commands, speed
from lenet_jax.predict import (
    MAX_IMAGE_PIXELS,
    ImageError,
    ImageTooLargeError,
    collect_images,
    decode_image,
    load_predictor,
    open_image_file,
    pixel_limit,
    preprocess,
    quiet_pil_warnings,
    verdict,
)


def main(argv: list[str]) -> int:
    speed.limit_malloc_arenas()  # before JAX starts its threads: peak RSS
    speed.fix_mmap_threshold()
    parser = commands.parser(__doc__)
    parser.add_argument("images", nargs="+", help="image files, or directories of them")
    commands.checkpoint_flags(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        help="refuse images with more pixels, from their header, before decoding "
        f"(default: {pixel_limit(MAX_IMAGE_PIXELS)})",
    )
    args = parser.parse_args(argv)
    if args.max_pixels < 1:
        parser.error(f"argument --max-pixels: expected at least 1, got {args.max_pixels}")
    cli.quiet_library_logs()
    quiet_pil_warnings()

    def failed(item: object, reason: str) -> None:
        if args.json:
            print(json.dumps({"path": str(item), "error": reason}), flush=True)
        print(f"{item}: {reason}", file=sys.stderr, flush=True)

    found = collect_images(args.images)
    for entry, why in found.skipped:
        print(f"note: skipping {entry}: {why}", file=sys.stderr)
    for item, reason in found.problems:
        failed(item, reason)
    if not found.paths:
        return 2
    cli.enable_compilation_cache()
    predictor = load_predictor(args.workdir, args.epoch)
    ready, failures = [], len(found.problems)
    for path in found.paths:
        try:
            with open_image_file(path) as file:
                ready.append((path, preprocess(decode_image(file, args.max_pixels))))
        except ImageError as e:
            failures += 1
            too_large = isinstance(e, ImageTooLargeError)
            failed(path, f"{e}: scale it down, or raise --max-pixels" if too_large else str(e))
    probabilities = predictor.predict_mnist(np.stack([image for _, image in ready])) if ready else []
    for (path, _), probs in zip(ready, probabilities, strict=True):
        print(json_row(path, probs) if args.json else text_line(path, probs))
    return 2 if failures else 0


def json_row(path: object, probs: np.ndarray) -> str:
    answer = verdict(probs)
    return json.dumps(
        {
            "path": str(path),
            "prediction": answer["prediction"],
            "probabilities": [round(float(p), 6) for p in probs],
            "unsure": answer["unsure"],
            "runner_up": answer["runner_up"],
            "runner_up_probability": round(answer["runner_up_probability"], 6),
        }
    )


def text_line(path: object, probs: np.ndarray) -> str:
    """'a.png: 7  (7: 0.998, 1: 0.001, 2: 0.000)', or 'a.png: 7? (unsure: 7 0.48, 1 0.41)'."""
    answer = verdict(probs)
    if answer["unsure"]:
        return (
            f"{path}: {answer['prediction']}? (unsure: {answer['prediction']} {answer['probability']:.2f}, "
            f"{answer['runner_up']} {answer['runner_up_probability']:.2f})"
        )
    top = np.argsort(-np.asarray(probs), kind="stable")[:3]
    return f"{path}: {answer['prediction']}  (" + ", ".join(f"{d}: {probs[d]:.3f}" for d in top) + ")"


console = commands.console(main)  # the installed lenet-predict command
