"""Command-line interface: argument parsing only; each subcommand calls one library function.

Exit codes: 0 success, 2 bad usage or bad input (one line, no traceback), 1 internal error, 130 interrupted.
parsers.py, deploy_parsers.py and serve_parsers.py declare the subcommands and their flags (the training
flags from the one table, through flags.py); commands.py and deploy_commands.py hold one cmd_* per
subcommand, each importing its library inside the function, so `resnetcls --help` and a usage error
answer without loading torch.
"""

from __future__ import annotations

import sys

from ..errors import UserError
from ..utils.progress import set_quiet
from .commands import COMMANDS
from .parsers import build_parser

__all__ = ["COMMANDS", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        set_quiet()
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"resnetcls: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnetcls: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        from ..utils.atomic import DISK_FULL

        if e.errno not in DISK_FULL:  # anything else is unexpected: exit 1 with the traceback
            raise
        print(
            f"resnetcls: error: {e.filename or 'a file'}: no space left on the device; free some space",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
