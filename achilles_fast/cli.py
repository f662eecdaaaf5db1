"""``achilles-fast`` command line: one subcommand per module in ``achilles_fast.commands``."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .version import __version__

# Each module defines register(subparsers) and the handler it sets as the parser's ``func``.
COMMANDS = [
    "achilles_fast.commands.find",
    "achilles_fast.commands.mask",
    "achilles_fast.commands.sweep",
    "achilles_fast.commands.report",
    "achilles_fast.commands.plot",
    "achilles_fast.commands.robustness",
    "achilles_fast.commands.evaluate",
    "achilles_fast.commands.baselines",
    "achilles_fast.commands.bench",
    "achilles_fast.commands.generate",
    "achilles_fast.commands.study",
    "achilles_fast.commands.protect_list",
    "achilles_fast.commands.compare",
]


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's errors: one line ``achilles-fast COMMAND: error: ...``, exit 2 (subcommands too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="achilles-fast", description="Find the critical neurons of an LLM "
                                "(arXiv 2510.10238), fast.")
    p.add_argument("--version", action="version", version=f"achilles_fast {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, a bad flag (one line already printed)
        return int(e.code or 0)
    try:
        from .commands import check_outputs
        check_outputs(args)  # no output over an input, before anything runs
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted (model weights restored)", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, ImportError) as e:  # OSError: FileNotFoundError, PermissionError, ...
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        msg = " ".join(line.strip() for line in str(msg).splitlines() if line.strip())  # one line, always
        print(f"achilles-fast {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
