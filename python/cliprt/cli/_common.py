"""What the command modules share: the parser, the checked argument types, the user-facing
error and the output helpers."""
from __future__ import annotations

import argparse
import json
import os
import stat
from typing import Any, Callable, Dict


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error of the CLI:
    ``cliprt COMMAND: error: MESSAGE (see 'cliprt COMMAND --help')``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# Argument types that check their range while parsing, so a bad number is a usage error
# before any work (or any file) is done. `minimum` / `bounds` say what they accept.
def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.minimum = minimum  # type: ignore[attr-defined]
    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_between(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {text}")
        return value

    parse.bounds = (low, high)  # type: ignore[attr-defined]
    parse.__name__ = f"number in [{low:g}, {high:g}]"
    return parse


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def byte_size(text: str) -> int:
    """A positive number of bytes: an integer, or one with a K, M or G suffix (powers of 1024)."""
    t = text.strip().upper()
    if t.endswith("IB"):
        t = t[:-2]
    elif t.endswith("B"):
        t = t[:-1]
    unit = t[-1:] if t[-1:] in ("K", "M", "G") else ""
    try:
        value = int(t[:len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bytes such as 67108864 or 64M, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


byte_size.minimum = 1  # type: ignore[attr-defined]


def regular_file(path: str, what: str) -> str:
    """`path` if it is a regular file (after links); a CommandError otherwise, found without
    opening it (a FIFO or a device would block a read)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise CommandError(f"{what} {path!r}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise CommandError(f"{what} {path!r} is {kind}")
    return path


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=float))


def load_encoder(model: str, args):
    """``Encoder.load`` with the command's --precision and --fast, where it has them."""
    from cliprt.encode import Encoder

    kwargs: Dict[str, Any] = {}
    if getattr(args, "precision", None):
        kwargs["precision"] = args.precision
    if getattr(args, "fast", False):
        kwargs["image_mode"] = "fast"
    return Encoder.load(model, **kwargs)


def read_lines(path: str, what: str):
    """The non-empty, non-comment lines of a text file (templates, captions)."""
    if not os.path.exists(path):
        raise CommandError(f"{what} file {path!r} does not exist")
    regular_file(path, f"{what} file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except UnicodeDecodeError as e:
        raise CommandError(f"{what} file {path!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not lines:
        raise CommandError(f"{what} file {path!r} is empty")
    return lines
