"""Where images come from: folders (recursive), file lists, webdataset-style tar shards.

Each source yields `SourceItem`s lazily, so a million files never sit in memory at once.
An item's `key` is unique and stable across runs (the absolute path; for a tar member,
"SHARD::MEMBER"), and `size` / `mtime` let an incremental run skip what it has already done.

Nothing is opened before it is known to be safe and small enough to read:

* Only regular files are items. A FIFO, socket, device, or a directory or dangling link
  where an image is expected (a file list entry, a single-file source, a symbolic link to a
  directory inside a walked folder) is never opened: opening a FIFO blocks until a writer
  comes, a device may never end. Such an entry is still yielded, with ``error`` set, so the
  ingest records it as a failure instead of losing it silently. A real directory inside a
  walked folder is walked, whatever its name.
* An item larger than ``max_item_bytes`` is refused before it is read: a file by its
  ``st_size``, a tar member by the size its header declares (a few hundred KB of gzip can
  expand to hundreds of MB). Default `DEFAULT_MAX_ITEM_BYTES`.
* A tar member that is not a regular file (directory, link, FIFO, device) and carries an
  image name is refused the same way; a member that cannot be read (truncated or corrupt
  archive) is that member's failure, and the rest of that shard is given up with one
  failure keyed by the shard (a compressed stream cannot be resumed past a corrupt spot).

An item with ``error`` set has empty ``data`` (``b""``), so a consumer that does not look at
``error`` gets a harmless "no data" failure from the decoder, never an open of the file.
"""
from __future__ import annotations

import dataclasses
import os
import stat
import tarfile
import zlib
from typing import Iterator, List, Optional, Sequence, Union

__all__ = ["SourceItem", "IMAGE_EXTENSIONS", "DEFAULT_MAX_ITEM_BYTES", "iter_source", "check_item", "SourceError"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# The largest item read, in bytes. 64 MiB holds any high-quality JPEG, PNG or WebP up to the
# decoder's pixel limit (cliprt.preprocess.DEFAULT_MAX_PIXELS, 89.5 Mpx: a 100 Mpx camera
# JPEG is 30-60 MB), so real photos pass; what it refuses is an archive member or a file
# that claims far more than a photo, which would otherwise be read whole into memory (a tar
# member is handed to the decoder as bytes). Uncompressed scans at that pixel count (TIFF,
# BMP: up to 270 MB) need a larger cap: ingest(..., max_item_bytes=N), or
# `cliprt embed --max-item-bytes N`.
DEFAULT_MAX_ITEM_BYTES = 64 * 1024 * 1024


class SourceError(ValueError):
    """A source that does not exist or holds no images."""


@dataclasses.dataclass
class SourceItem:
    """One image of a source. `data` is a path or the bytes of a tar member; `error`, when
    set, says why the item is refused unread (`data` is then ``b""``)."""
    key: str
    data: Union[str, bytes]          # a path, or the bytes of a tar member
    path: str
    size: Optional[int]
    mtime: Optional[float]
    error: Optional[str] = None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_cap(max_item_bytes: int) -> int:
    if isinstance(max_item_bytes, bool) or not isinstance(max_item_bytes, int) or max_item_bytes < 1:
        raise ValueError(f"max_item_bytes must be a positive integer, got {max_item_bytes!r}")
    return max_item_bytes


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def _too_big(size: int, cap: int) -> str:
    return f"{size} bytes, more than max_item_bytes={cap}; not read"


def _refused(key: str, path: str, size: Optional[int], mtime: Optional[float], error: str) -> SourceItem:
    return SourceItem(key, b"", path, size, mtime, error)


def _file_item(path: str, cap: int, key: Optional[str] = None) -> SourceItem:
    """The item of one file path: stat only (never opened), refused unless it is a regular
    file (after following links) of at most `cap` bytes."""
    key = path if key is None else key
    try:
        st = os.stat(path)
    except OSError as e:
        try:
            dangling = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:
            dangling = False
        why = "a symbolic link to a missing file" if dangling else (e.strerror or str(e))
        return _refused(key, path, None, None, f"{path!r}: {why}")
    if not stat.S_ISREG(st.st_mode):
        via = " (through a symbolic link)" if os.path.islink(path) else ""
        kind = _kind(st.st_mode)
        what = kind if kind == "not a regular file" else f"{kind}, not a regular file"
        return _refused(key, path, st.st_size, st.st_mtime, f"{path!r}: {what}{via}; not opened")
    if st.st_size > cap:
        return _refused(key, path, st.st_size, st.st_mtime, f"{path!r}: {_too_big(st.st_size, cap)}")
    return SourceItem(key, path, path, st.st_size, st.st_mtime)


def check_item(item: SourceItem, max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> SourceItem:
    """`item` (from a caller, not from `iter_source`) with ``error`` set where it must not be
    read: a path that is not a regular file of at most `max_item_bytes`, or bytes longer
    than that. Its key, path, size and mtime are kept as given."""
    cap = _check_cap(max_item_bytes)
    if item.error is not None:
        return item
    data = item.data
    if isinstance(data, (str, os.PathLike)):
        checked = _file_item(os.fspath(data), cap)
        if checked.error is None:
            return item
        return dataclasses.replace(item, data=b"", error=checked.error)
    if isinstance(data, (bytes, bytearray, memoryview)):
        n = memoryview(data).nbytes
        if n > cap:
            return dataclasses.replace(item, data=b"", error=f"{item.path!r}: {_too_big(n, cap)}")
    return item


def _walk(folder: str, cap: int) -> Iterator[SourceItem]:
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        # os.walk lists a link to a directory among the directories and does not follow it;
        # one named like an image is reported rather than dropped without a word
        for d in dirs:
            p = os.path.abspath(os.path.join(root, d))
            if _is_image(d) and os.path.islink(p):
                yield _file_item(p, cap)
        for f in sorted(files):
            if _is_image(f):
                yield _file_item(os.path.abspath(os.path.join(root, f)), cap)


def _list(list_file: str, cap: int) -> Iterator[SourceItem]:
    base = os.path.dirname(os.path.abspath(list_file))
    try:
        with open(list_file, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                yield _file_item(os.path.abspath(os.path.join(base, line)), cap)
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read file list {list_file!r}: {e}") from None


# what reading a damaged archive raises: tarfile's own errors, OSError (bz2, bad gzip
# headers), EOFError (truncated gzip/bz2/xz), zlib.error (corrupt deflate data), and
# lzma.LZMAError where lzma is built
_ARCHIVE_ERRORS: tuple = (tarfile.TarError, OSError, EOFError, zlib.error)
try:
    import lzma

    _ARCHIVE_ERRORS += (lzma.LZMAError,)
except ImportError:  # pragma: no cover - Python built without lzma
    pass


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "a directory"
    if member.issym():
        return f"a symbolic link to {member.linkname!r} (links are not followed)"
    if member.islnk():
        return f"a hard link to {member.linkname!r} (links are not followed)"
    if member.isfifo():
        return "a FIFO"
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    return f"of type {member.type!r}"


def _tar(shard: str, cap: int) -> Iterator[SourceItem]:
    shard = os.path.abspath(shard)
    try:
        tf = tarfile.open(shard, "r:*")
    except _ARCHIVE_ERRORS as e:
        raise SourceError(f"cannot read tar shard {shard!r}: {e}") from None
    st = os.stat(shard)
    with tf:
        while True:
            try:
                member = tf.next()
            except _ARCHIVE_ERRORS as e:
                yield _refused(shard, shard, st.st_size, st.st_mtime,
                               f"{shard!r}: the tar shard is truncated or corrupt after offset {tf.offset}; "
                               f"the rest of it is not read ({type(e).__name__}: {e})")
                return
            if member is None:
                return
            # the archive keeps every header it has read; forget them, the stream only goes forward
            tf.members.clear()
            if not _is_image(member.name):
                continue
            key = f"{shard}::{member.name}"
            mtime = float(member.mtime)
            if not member.isfile():
                yield _refused(key, key, member.size, mtime, f"{key!r}: the member is {_member_kind(member)}, "
                                                             "not a regular file; not read")
                continue
            if member.size > cap:
                yield _refused(key, key, member.size, mtime, f"{key!r}: {_too_big(member.size, cap)}")
                continue
            try:
                f = tf.extractfile(member)
                data = f.read() if f is not None else b""
            except _ARCHIVE_ERRORS as e:
                yield _refused(key, key, member.size, mtime,
                               f"{key!r}: cannot be read, the tar shard is truncated or corrupt here; the rest "
                               f"of it is not read ({type(e).__name__}: {e})")
                return
            yield SourceItem(key, data, key, member.size, mtime)
            del data


def iter_source(src: Union[str, Sequence[str]], max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> Iterator[SourceItem]:
    """Items of one or more sources: a folder, a .txt/.lst file list, a .tar shard (or a
    brace-free list of shards), or a single image file. Items that must not be read (see
    the module notes; larger than `max_item_bytes`, not regular files) come with ``error``
    set and empty ``data``."""
    cap = _check_cap(max_item_bytes)
    srcs: List[str] = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    for s in srcs:
        s = os.fspath(s)
        if os.path.isdir(s):
            yield from _walk(s, cap)
        elif s.endswith((".tar", ".tar.gz", ".tgz")) and os.path.isfile(s):
            yield from _tar(s, cap)
        elif s.endswith((".txt", ".lst")) and os.path.isfile(s):
            yield from _list(s, cap)
        elif _is_image(s) and os.path.exists(s):
            # a regular file, or a FIFO or device named like an image (refused unopened)
            yield _file_item(os.path.abspath(s), cap)
        elif not os.path.exists(s):
            raise SourceError(f"source {s!r} does not exist")
        else:
            raise SourceError(f"source {s!r} is not a folder, a file list (.txt), a tar shard or an image")
