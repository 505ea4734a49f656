"""The ``cliprt`` command line.

The commands only parse their arguments, call the library and print its results (a table,
or JSON with ``--json``); the work is in the library modules they name. Every failure takes
one path, :func:`main`: one line ``cliprt COMMAND: error: ...`` on stderr and exit status 2
(1 for an export refused by its parity check, 130 on Ctrl-C), never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from ._common import CommandError

__all__ = ["main", "build_parser", "CommandError"]


def build_parser() -> argparse.ArgumentParser:
    from . import export_cmd, index_cmds, model_cmds

    parser = argparse.ArgumentParser(prog="cliprt", description="cliprt: CLIP-style embedding engine")
    sub = parser.add_subparsers(dest="command", required=True)
    index_cmds.register(sub)
    export_cmd.register(sub)
    model_cmds.register(sub)
    return parser


def _failure(e: BaseException):
    """(exit status, message) of an exception a command let through, or None for a bug."""
    if isinstance(e, CommandError):
        return e.code, str(e)
    if isinstance(e, ImportError):
        if e.name:      # a module that is not installed
            return 2, (f"a dependency is missing ({e}); install the 'encode' extra: pip install 'cliprt[encode]'")
        return 2, str(e)
    if isinstance(e, (ValueError, OSError, KeyError)):
        return 2, str(e)
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"cliprt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        failure = _failure(e)
        if failure is None:
            raise
        code, message = failure
        print(f"cliprt {args.command}: error: {message}", file=sys.stderr)
        return code
