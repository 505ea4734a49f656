"""Where images come from: folders (recursive), file lists, webdataset-style tar shards.

Each source yields `SourceItem`s lazily, so a million files never sit in memory at once.
An item's `key` is unique and stable across runs (the absolute path; for a tar member,
"SHARD::MEMBER"), and `size` / `mtime` let an incremental run skip what it has already done.
"""
from __future__ import annotations

import dataclasses
import os
import tarfile
from typing import Iterator, List, Optional, Sequence, Union

__all__ = ["SourceItem", "IMAGE_EXTENSIONS", "iter_source", "SourceError"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class SourceError(ValueError):
    """A source that does not exist or holds no images."""


@dataclasses.dataclass
class SourceItem:
    key: str
    data: Union[str, bytes]          # a path, or the bytes of a tar member
    path: str
    size: Optional[int]
    mtime: Optional[float]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(folder: str) -> Iterator[SourceItem]:
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for f in sorted(files):
            if not _is_image(f):
                continue
            p = os.path.abspath(os.path.join(root, f))
            try:
                st = os.stat(p)
            except OSError:
                yield SourceItem(p, p, p, None, None)
                continue
            yield SourceItem(p, p, p, st.st_size, st.st_mtime)


def _list(list_file: str) -> Iterator[SourceItem]:
    base = os.path.dirname(os.path.abspath(list_file))
    with open(list_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = os.path.abspath(os.path.join(base, line))
            try:
                st = os.stat(p)
                yield SourceItem(p, p, p, st.st_size, st.st_mtime)
            except OSError:
                yield SourceItem(p, p, p, None, None)


def _tar(shard: str) -> Iterator[SourceItem]:
    shard = os.path.abspath(shard)
    try:
        tf = tarfile.open(shard, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise SourceError(f"cannot read tar shard {shard!r}: {e}") from None
    with tf:
        for member in tf:
            if not member.isfile() or not _is_image(member.name):
                continue
            f = tf.extractfile(member)
            data = f.read() if f is not None else b""
            yield SourceItem(f"{shard}::{member.name}", data, f"{shard}::{member.name}", member.size,
                             float(member.mtime))


def iter_source(src: Union[str, Sequence[str]]) -> Iterator[SourceItem]:
    """Items of one or more sources: a folder, a .txt/.lst file list, a .tar shard (or a
    brace-free list of shards), or a single image file."""
    srcs: List[str] = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    for s in srcs:
        s = os.fspath(s)
        if os.path.isdir(s):
            yield from _walk(s)
        elif s.endswith((".tar", ".tar.gz", ".tgz")) and os.path.isfile(s):
            yield from _tar(s)
        elif s.endswith((".txt", ".lst")) and os.path.isfile(s):
            yield from _list(s)
        elif os.path.isfile(s) and _is_image(s):
            st = os.stat(s)
            p = os.path.abspath(s)
            yield SourceItem(p, p, p, st.st_size, st.st_mtime)
        elif not os.path.exists(s):
            raise SourceError(f"source {s!r} does not exist")
        else:
            raise SourceError(f"source {s!r} is not a folder, a file list (.txt), a tar shard or an image")
