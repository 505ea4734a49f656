"""The ``cliprt`` command line.

The commands only parse their arguments, call the library and print its results (a table,
or JSON with ``--json``); the work is in the library modules they name. Every failure takes
one path, :func:`main`: one line ``cliprt COMMAND: error: ...`` on stderr and exit status 2
(1 for an export refused by its parity check, 130 on Ctrl-C), never a traceback. Usage
errors (unknown options, bad numbers) are one line too, and exit 2 before any work.

What counts as a failure rather than a bug (see :func:`_failure`): a ``CommandError``;
``ValueError`` (bad values, corrupt files: ``cliprt.FormatError``, JSON, encodings),
``OSError`` (missing files, permissions, a locked collection), ``KeyError``,
``OverflowError`` (a number too large for SQLite or the index), ``EOFError`` and
``zlib.error`` (truncated or corrupt compressed data), ``sqlite3.Error``,
``tarfile.TarError``, ONNX Runtime's errors (a model file it cannot load or run), and any
error class cliprt defines. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sqlite3
import sys
import tarfile
import zlib

from ._common import CommandError, Parser

__all__ = ["main", "build_parser", "CommandError"]


def build_parser() -> Parser:
    from . import export_cmd, index_cmds, model_cmds, serve_cmd

    parser = Parser(prog="cliprt", description="cliprt: CLIP-style embedding engine")
    sub = parser.add_subparsers(dest="command", required=True)
    index_cmds.register(sub)
    export_cmd.register(sub)
    model_cmds.register(sub)
    serve_cmd.register(sub)
    return parser


_FAILURES = (ValueError, OSError, KeyError, OverflowError, EOFError, zlib.error, sqlite3.Error, tarfile.TarError)


def _from(e: BaseException, *packages: str) -> bool:
    """Whether `e`'s class, or one it derives from, is defined in one of `packages`."""
    return any(getattr(c, "__module__", "").split(".")[0] in packages for c in type(e).__mro__)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        names = " -> ".join(repr(n) for n in (e.filename, e.filename2) if n is not None)
        text = f"{names}: {e.strerror}"
    elif isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    else:
        text = str(e)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(e).__name__


def _failure(e: BaseException):
    """(exit status, message) of an exception a command let through, or None for a bug."""
    if isinstance(e, CommandError):
        return e.code, _message(e)
    if isinstance(e, ImportError):
        if e.name:      # a module that is not installed
            return 2, (f"a dependency is missing ({e}); install the 'encode' extra: pip install 'cliprt[encode]'")
        return 2, _message(e)
    if isinstance(e, _FAILURES) or _from(e, "cliprt", "onnxruntime"):
        return 2, _message(e)
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
