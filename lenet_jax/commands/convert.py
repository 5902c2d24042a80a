"""Convert between the PyTorch tutorial's files and this project's checkpoints.

    python scripts/convert.py from-torch model/net_20.pth --workdir checkpoints/tutorial
    python scripts/convert.py to-torch --workdir checkpoints/recipe --out lenet.safetensors

from-torch reads the pickle without PyTorch and without running it; the epoch defaults to the
file's own, else the number ending its name. to-torch writes .safetensors, or .pt / .pth (PyTorch).
"""

from __future__ import annotations

from lenet_jax import cli, commands
from lenet_jax.torch_checkpoint import export_torch_checkpoint, import_torch_checkpoint


def main(argv: list[str]) -> int:
    parser = commands.parser(__doc__)
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="{from-torch,to-torch}")
    importing = subcommands.add_parser("from-torch", help="a PyTorch file -> a checkpoint in --workdir")
    importing.add_argument("file", help="the .pth / .pt / .safetensors file")
    importing.add_argument("--workdir", required=True, help="where to write the checkpoint")
    importing.add_argument(
        "--epoch", type=int, help="epoch to store it as, 0 to 2289428 (default: the file's, its name's, or 1)"
    )
    exporting = subcommands.add_parser("to-torch", help="a checkpoint -> a PyTorch state_dict file")
    commands.checkpoint_flags(exporting)
    exporting.add_argument("--out", required=True, help="the file to write: .safetensors, .pt or .pth")
    exporting.add_argument("--force", action="store_true", help="replace --out if it exists")
    for sub in (importing, exporting):
        sub.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(argv)
    cli.quiet_library_logs()
    if args.command == "from-torch":
        result = import_torch_checkpoint(args.file, args.workdir, args.epoch)
        print(
            f"Imported {args.file} ({result.source['contents']}, sha256 {result.source['sha256'][:12]}) "
            f"as epoch {result.epoch} of {result.workdir}; evaluate it with: "
            f"{cli.command('evaluate')} --workdir {args.workdir} --epoch {result.epoch}"
        )
    else:
        result = export_torch_checkpoint(args.workdir, args.out, args.epoch, args.force)
        weights = "averaged weights" if result.averaged else "weights"
        loader = "safetensors.torch.load_file" if result.format == "safetensors" else "torch.load"
        print(
            f"Wrote the {weights} of epoch {result.epoch} of {args.workdir} to {result.out} "
            f"(keys model.1.weight ... model.10.bias); in PyTorch: "
            f"MyLeNet().load_state_dict({loader}({str(result.out)!r}))"
        )
    return 0


console = commands.console(main)  # the installed lenet-convert command
