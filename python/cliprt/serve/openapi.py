"""The service's OpenAPI schema, as the app generates it.

    python -m cliprt.serve.openapi docs/openapi.json     # write it (no model needed)
    python -m cliprt.serve.openapi --check docs/openapi.json

The routes and their schemas do not depend on the model, the index or the configuration, so
the schema is generated from an app over a stand-in encoder that is never run. The text is
canonical (sorted keys, two-space indent, trailing newline), so a committed copy compares
byte for byte with a fresh one.
"""
from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace
from typing import Any, Dict, Optional

__all__ = ["generate_openapi", "openapi_text"]


class _SchemaOnlyEncoder:
    """Enough of an Encoder for create_app to build its routes; never asked to encode."""

    dim = 0
    precisions: Dict[str, str] = {}
    manifest = SimpleNamespace(name="openapi", towers={"text": None, "image": None})


def generate_openapi(app: Optional[Any] = None) -> Dict[str, Any]:
    """The OpenAPI document of `app`, or of an app built over a stand-in encoder."""
    if app is not None:
        return app.openapi()
    from .app import create_app

    app = create_app(encoder=_SchemaOnlyEncoder())
    try:
        return app.openapi()
    finally:
        app.state.service.close()


def openapi_text(app: Optional[Any] = None) -> str:
    return json.dumps(generate_openapi(app), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cliprt.serve.openapi", description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", help="file to write (default: stdout)")
    p.add_argument("--check", action="store_true", help="exit 1 when PATH differs from the generated schema")
    args = p.parse_args(argv)
    text = openapi_text()
    if args.check:
        if not args.path:
            p.error("--check needs PATH")
        try:
            with open(args.path, encoding="utf-8") as f:
                same = f.read() == text
        except FileNotFoundError:
            same = False
        if not same:
            print(f"{args.path} is not the current schema; regenerate: python -m cliprt.serve.openapi {args.path}",
                  file=sys.stderr)
            return 1
        return 0
    if args.path:
        with open(args.path, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
