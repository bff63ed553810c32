"""`python -m bunny.eval run <benchmark> ...` (see `bunny.eval.run`) and `python -m bunny.eval prepare
<benchmark>` (see `bunny.eval.prepare`)."""

import sys

COMMANDS = {"run": "bunny.eval.run", "prepare": "bunny.eval.prepare"}


def main() -> None:
    import importlib

    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m bunny.eval {{{','.join(COMMANDS)}}} ...\n{__doc__}")
    module = importlib.import_module(COMMANDS[sys.argv[1]])
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
