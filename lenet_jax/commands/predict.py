"""Recognise handwritten digits in image files: `python scripts/predict.py IMAGE... | DIR`.

    python scripts/predict.py my_digit.png --workdir checkpoints/recipe
    python scripts/predict.py photos/ --workdir checkpoints/recipe --epoch 20 --json

Any size, colour or grey, dark ink on light paper or light on dark, transparent or not: each
image is preprocessed the way MNIST was made (lenet_jax.predict.preprocess). Prints the
predicted digit and the top-3 probabilities per image, or, when the top probability is low, the
digit marked unsure with the runner-up ("7? (unsure: 7 0.48, 1 0.41)"); --json prints one object
per image with `path`, `prediction`, `probabilities` (10 floats), `unsure`, `runner_up` and
`runner_up_probability`. Probabilities are the mean over a few shifted and zoomed views of the
image (lenet_jax.predict.TTA_SHIFTS, TTA_ZOOMS). An image that cannot be used (no ink, not
an image, damaged, over --max-pixels: checked from its header, before decoding) gets its own
one-line reason instead, and the others still get their predictions; the exit code is then 2.
Entries of a directory that are not regular files (named pipes, sockets, ...) are skipped with
a note; a directory without image files is an error.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from lenet_jax import cli
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
    parser = cli.Parser(description=__doc__, formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files, or directories of them")
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--epoch", type=int, help="which epoch's checkpoint (default: newest)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        help="refuse images with more pixels, from their header, before decoding "
        f"(default: {pixel_limit(MAX_IMAGE_PIXELS)})",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
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
        except ImageTooLargeError as e:
            failures += 1
            failed(path, f"{e}: scale it down, or raise --max-pixels")
        except ImageError as e:
            failures += 1
            failed(path, str(e))
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


def console() -> None:
    """The installed `lenet-predict` command."""
    sys.exit(cli.run(main))
