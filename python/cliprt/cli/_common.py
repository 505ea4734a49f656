"""What the command modules share: the user-facing error and the output helpers."""
from __future__ import annotations

import json
from typing import Any, Dict


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


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
    import os

    if not os.path.isfile(path):
        raise CommandError(f"{what} file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not lines:
        raise CommandError(f"{what} file {path!r} is empty")
    return lines
