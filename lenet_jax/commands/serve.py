"""Draw a digit in the browser: `python scripts/serve.py --workdir DIR [--port P]`.

The page shows the 10 probabilities live as you draw; other clients POST an image and get JSON:

    curl -F file=@digit.png http://127.0.0.1:8000/predict

Requests are bounded (docs/serving.md); a refused one gets {"error": "..."} with its HTTP status.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket

from lenet_jax import cli, commands, speed
from lenet_jax.predict import load_predictor, quiet_pil_warnings
from lenet_jax.serve import MAX_PREDICTIONS, create_app, uvicorn_server


def listen_error(host: str, port: int, error: OSError) -> str:
    """Why the server cannot listen, naming the flag to change."""
    reason = error.strerror or str(error)
    if error.errno and not isinstance(error, socket.gaierror):  # without create_server's addition
        reason = os.strerror(error.errno)
    if isinstance(error, socket.gaierror):
        return f"cannot resolve --host {host} ({reason}): give an address such as 127.0.0.1 or 0.0.0.0"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"--host {host} is not an address of this machine ({reason}): give 127.0.0.1 or 0.0.0.0"
    if error.errno == errno.EADDRINUSE:
        return f"port {port} is in use ({reason}): pick another --port (0: any free one)"
    if error.errno == errno.EACCES:
        return f"cannot listen on port {port} ({reason}): pick another --port (ports below 1024 need root)"
    return f"cannot listen on {host}:{port} ({reason}): check --host and --port"


def main(argv: list[str]) -> int:
    speed.limit_malloc_arenas()  # request threads otherwise each keep a malloc arena of freed images
    parser = commands.parser(__doc__)
    commands.checkpoint_flags(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    parser.add_argument("--port", type=int, default=8000, help="0 to 65535 (default: 8000)")
    parser.add_argument(
        "--max-predictions",
        type=int,
        default=MAX_PREDICTIONS,
        help=f"images decoded and predicted at once; more wait their turn (default: {MAX_PREDICTIONS})",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"argument --port: a port is 0 to 65535 (0: any free one), got {args.port}")
    if args.max_predictions < 1:
        parser.error(f"argument --max-predictions: expected at least 1, got {args.max_predictions}")
    try:  # before the checkpoint is loaded: a typo in --host is told at once
        socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise cli.ConfigError(listen_error(args.host, args.port, e)) from None
    cli.quiet_library_logs()
    cli.enable_compilation_cache()
    quiet_pil_warnings()
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # a malformed form is the client's 400
    predictor = load_predictor(args.workdir, args.epoch)
    app = create_app(predictor=predictor, max_predictions=args.max_predictions, debug=args.debug)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        listener = socket.create_server((args.host, args.port), family=family)
    except OSError as e:
        raise cli.ConfigError(listen_error(args.host, args.port, e)) from e
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{listener.getsockname()[1]}/"  # the port chosen when --port is 0
    print(f"Serving epoch {predictor.epoch} of {args.workdir} at {url} (Ctrl-C stops)", flush=True)
    # uvicorn re-raises SIGINT/SIGTERM after stopping: the default action skips JAX's slow teardown.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    uvicorn_server(app, log_level="info" if args.debug else "warning").run(sockets=[listener])
    return 0


console = commands.console(main)  # the installed lenet-serve command
