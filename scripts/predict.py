#!/usr/bin/env python
"""Recognise handwritten digits in image files: `python scripts/predict.py IMAGE... | DIR`.

    python scripts/predict.py my_digit.png --workdir checkpoints/recipe
    python scripts/predict.py photos/ --workdir checkpoints/recipe --epoch 20 --json

Any size, colour or grey, dark ink on light paper or light on dark: each image is preprocessed
the way MNIST was made (lenet_jax.predict.preprocess). Prints the predicted digit and the top-3
probabilities per image; --json prints one object per image with `path`, `prediction` and
`probabilities` (10 floats). An image without ink gets a message instead of a guess (exit 2).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from lenet_jax import cli
from lenet_jax.errors import LenetError
from lenet_jax.predict import image_paths, load_predictor, preprocess, read_image


def main(argv: list[str]) -> int:
    parser = cli.Parser(description=__doc__, formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files, or directories of them")
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--epoch", type=int, help="which epoch's checkpoint (default: newest)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(argv)
    cli.quiet_library_logs()
    cli.enable_compilation_cache()
    paths = image_paths(args.images)
    predictor = load_predictor(args.workdir, args.epoch)
    ready, failed = [], 0
    for path in paths:
        try:
            ready.append((path, preprocess(read_image(path))))
        except LenetError as e:
            failed += 1
            if args.json:
                print(json.dumps({"path": str(path), "error": str(e)}))
            print(f"{path}: {e}", file=sys.stderr)
    probabilities = predictor.predict_mnist(np.stack([image for _, image in ready])) if ready else []
    for (path, _), probs in zip(ready, probabilities, strict=True):
        prediction = int(np.argmax(probs))
        if args.json:
            print(
                json.dumps(
                    {
                        "path": str(path),
                        "prediction": prediction,
                        "probabilities": [round(float(p), 6) for p in probs],
                    }
                )
            )
        else:
            top = np.argsort(probs)[::-1][:3]
            print(f"{path}: {prediction}  (" + ", ".join(f"{d}: {probs[d]:.3f}" for d in top) + ")")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
