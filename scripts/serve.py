#!/usr/bin/env python
"""Draw a digit in the browser: `python scripts/serve.py --workdir DIR [--port P]`.

Starts a local web server (127.0.0.1 by default) with one page: draw on the canvas with the
mouse or a finger, and the model's 10 probabilities update live, next to the 28x28 image it saw.
"""

from __future__ import annotations

import sys

from lenet_jax import cli
from lenet_jax.predict import load_predictor
from lenet_jax.serve import make_server


def main(argv: list[str]) -> int:
    parser = cli.Parser(description=__doc__, formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--epoch", type=int, help="which epoch's checkpoint (default: newest)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(argv)
    cli.quiet_library_logs()
    cli.enable_compilation_cache()
    predictor = load_predictor(args.workdir, args.epoch)
    try:
        server = make_server(predictor, args.host, args.port)
    except OSError as e:
        message = f"cannot listen on {args.host}:{args.port} ({e.strerror}): pick another --port"
        raise cli.ConfigError(message) from e
    print(
        f"Serving epoch {predictor.epoch} of {args.workdir} at http://{args.host}:{server.server_port}/ "
        "(Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
