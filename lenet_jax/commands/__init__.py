"""The command-line programs: `python scripts/NAME.py` and the installed `lenet-NAME` commands.

Each module holds one program's `main(argv) -> exit code` (importable and tested in-process);
`console()` is what an installed command runs: `cli.run(main)` turns a LenetError into one line
on stderr and its exit code.
"""
