"""Damaged index directories must be rejected with cliprt.FormatError naming the bad file.

Layout (csrc/include/cliprt/persist.h, csrc/src/segment_file.cpp): a text MANIFEST closed
by an xxh64 line, and container files with a 4 KiB header (fixed fields, a section table,
an xxh64 of both at byte 296) followed by 4 KiB-aligned sections ids | scale | codes |
originals (deletion files: one bitmap section). Truncations and byte flips in every region
are tried; a failed load must leave the files untouched. A watchdog aborts the run with a
traceback if a load hangs.
"""
from __future__ import annotations

import faulthandler
import hashlib
import os
import shutil
import struct

import numpy as np
import pytest

import cliprt
from cliprt import Index

DIM = 40
N = 300

HEADER_BYTES = 4096
RAW_HEADER = struct.Struct("<8sIIIIIIQ")      # magic, version, kind, storage, dim, flags, nsections, rows
RAW_SECTION = struct.Struct("<IIQQQ")         # kind, reserved, offset, bytes, hash
MAX_SECTIONS = 8
HASH_OFFSET = RAW_HEADER.size + MAX_SECTIONS * RAW_SECTION.size   # 296
SECTION_NAMES = {1: "ids", 2: "scale", 3: "codes", 4: "originals", 5: "deleted"}


@pytest.fixture(autouse=True)
def _watchdog():
    """A hung load kills the run with tracebacks instead of hanging forever."""
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ---------------------------------------------------------------------------------------
# XXH64 (seed 0), from the published algorithm, to craft files with valid checksums.

_M = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (11400714785074694791, 14029467366897019727, 1609587929392839161,
                           9650029242287828579, 2870177450012600261)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc, v):
    return (_rotl((acc + v * _P2) & _M, 31) * _P1) & _M


def _merge(acc, v):
    return (((acc ^ _round(0, v)) * _P1) + _P4) & _M


def xxh64(data: bytes, seed: int = 0) -> int:
    n = len(data)
    p = 0
    if n >= 32:
        v1, v2, v3, v4 = (seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed, (seed - _P1) & _M
        while p + 32 <= n:
            a, b, c, d = struct.unpack_from("<4Q", data, p)
            v1, v2, v3, v4 = _round(v1, a), _round(v2, b), _round(v3, c), _round(v4, d)
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while p + 8 <= n:
        (v,) = struct.unpack_from("<Q", data, p)
        h = ((_rotl(h ^ _round(0, v), 27) * _P1) + _P4) & _M
        p += 8
    if p + 4 <= n:
        (v,) = struct.unpack_from("<I", data, p)
        h = ((_rotl(h ^ ((v * _P1) & _M), 23) * _P2) + _P3) & _M
        p += 4
    while p < n:
        h = (_rotl(h ^ ((data[p] * _P5) & _M), 11) * _P1) & _M
        p += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    h ^= h >> 32
    return h


# ---------------------------------------------------------------------------------------
# Helpers


def _data(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _make_index(d, storage="i8", keep_originals=None, remove=()):
    ix = Index(DIM, storage=storage, keep_originals=keep_originals)
    ix.add(_data(N))
    if len(remove):
        ix.remove(np.asarray(remove))
    ix.save(d)
    return ix


def _seg_file(d) -> str:
    segs = sorted(n for n in os.listdir(d) if n.endswith(".cseg"))
    assert len(segs) == 1, segs
    return os.path.join(d, segs[0])


def _del_file(d) -> str:
    dels = sorted(n for n in os.listdir(d) if ".cseg.del-" in n)
    assert len(dels) == 1, dels
    return os.path.join(d, dels[0])


def _sections(path) -> dict:
    """kind name -> (offset, bytes) parsed from a container header."""
    with open(path, "rb") as f:
        hdr = f.read(HEADER_BYTES)
    magic, version, kind, storage, dim, flags, nsec, rows = RAW_HEADER.unpack_from(hdr, 0)
    assert magic == b"CLIPRTC1" and version == 1, (magic, version)
    out = {}
    for i in range(nsec):
        k, _, off, nbytes, _ = RAW_SECTION.unpack_from(hdr, RAW_HEADER.size + i * RAW_SECTION.size)
        out[SECTION_NAMES[k]] = (off, nbytes)
    return out


def _snapshot(d) -> dict:
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        st = os.stat(p)
        with open(p, "rb") as f:
            out[name] = (st.st_ino, st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return out


def _flip(path, offset, mask=0x5A):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        assert len(b) == 1, f"offset {offset} past the end of {path}"
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def _truncate(path, size):
    assert size < os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size)


def _expect_format_error(d, names_file, mmap=True, full_verify=False):
    """Loading d (and, with full_verify, verify()ing it) raises FormatError naming
    `names_file` (a basename); the directory is unchanged afterwards."""
    before = _snapshot(d)
    with pytest.raises(cliprt.FormatError) as ei:
        ix = Index.load(d, mmap=mmap)
        if full_verify:
            ix.verify()
    assert isinstance(ei.value, ValueError)
    assert names_file in str(ei.value), f"error does not name {names_file!r}: {ei.value}"
    assert _snapshot(d) == before, "a failed load changed the files on disk"
    return str(ei.value)


def _rewrite_manifest(d, edit):
    """Applies edit(lines) to the MANIFEST body and rewrites it with a valid end line."""
    p = os.path.join(d, "MANIFEST")
    text = open(p, "rb").read().decode()
    body, end = text[: text.rindex("end ")], text[text.rindex("end "):]
    assert int(end.split()[1], 16) == xxh64(body.encode()), "python xxh64 disagrees with the library"
    lines = body.splitlines()
    lines = edit(lines)
    body = "".join(line + "\n" for line in lines)
    with open(p, "wb") as f:
        f.write((body + "end %016x\n" % xxh64(body.encode())).encode())


def _rewrite_header(path, **fields):
    """Changes fixed header fields of a container file and re-seals its header checksum."""
    with open(path, "r+b") as f:
        hdr = bytearray(f.read(HEADER_BYTES))
        vals = list(RAW_HEADER.unpack_from(hdr, 0))
        names = ["magic", "version", "file_kind", "storage", "dim", "flags", "nsections", "rows"]
        for k, v in fields.items():
            vals[names.index(k)] = v
        RAW_HEADER.pack_into(hdr, 0, *vals)
        struct.pack_into("<Q", hdr, HASH_OFFSET, xxh64(bytes(hdr[:HASH_OFFSET])))
        f.seek(0)
        f.write(hdr)


CONFIGS = {
    # name: (storage, keep_originals) -- i8/b1 have a scale section, *-orig an originals one
    "i8-orig": ("i8", True),
    "b1-orig": ("b1", True),
    "f32-orig": ("f32", True),
    "f16": ("f16", False),
}


@pytest.fixture(params=list(CONFIGS), scope="module")
def pristine(request, tmp_path_factory):
    """A saved index per configuration, copied fresh into each test."""
    storage, keep = CONFIGS[request.param]
    d = tmp_path_factory.mktemp("pristine") / request.param
    _make_index(str(d), storage, keep)
    return str(d)


@pytest.fixture
def saved(pristine, tmp_path):
    d = str(tmp_path / "ix")
    shutil.copytree(pristine, d)
    Index.load(d).verify()   # sanity: the copy is good
    return d


def test_python_xxh64_matches_library(tmp_path):
    d = str(tmp_path / "ix")
    _make_index(d)
    _rewrite_manifest(d, lambda lines: lines)   # asserts the checksum matches
    seg = _seg_file(d)
    with open(seg, "rb") as f:
        hdr = f.read(HEADER_BYTES)
        assert struct.unpack_from("<Q", hdr, HASH_OFFSET)[0] == xxh64(hdr[:HASH_OFFSET])
        for name, (off, nbytes) in _sections(seg).items():
            i = list(_sections(seg)).index(name)
            want = RAW_SECTION.unpack_from(hdr, RAW_HEADER.size + i * RAW_SECTION.size)[4]
            f.seek(off)
            assert xxh64(f.read(nbytes)) == want, name
    Index.load(d).verify()


# ---------------------------------------------------------------------------------------
# Segment files: truncation


def _truncation_points(seg):
    secs = _sections(seg)
    pts = {"empty": 0, "header+1": 1, "header-mid": 100, "header-table": HASH_OFFSET - 3,
           "header-end": HEADER_BYTES - 1}
    for name, (off, nbytes) in secs.items():
        if nbytes == 0:
            continue
        pts[f"{name}-start"] = off
        pts[f"{name}+1"] = off + 1
        pts[f"{name}-mid"] = off + nbytes // 2
        pts[f"{name}-last"] = off + nbytes - 1
    return pts


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_truncated_segment(saved, mmap):
    seg = _seg_file(saved)
    backup = open(seg, "rb").read()
    points = _truncation_points(seg)
    assert any(k.startswith("codes") for k in points)
    for where, size in points.items():
        with open(seg, "wb") as f:
            f.write(backup)
        _truncate(seg, size)
        try:
            _expect_format_error(saved, os.path.basename(seg), mmap=mmap)
        except BaseException as e:  # name the case in the failure
            raise AssertionError(f"truncation at {where} (size {size}): {e!r}") from e
    with open(seg, "wb") as f:
        f.write(backup)
    Index.load(saved, mmap=mmap).verify()


# ---------------------------------------------------------------------------------------
# Segment files: flipped bytes


def _header_flip_points():
    pts = {"magic": 0, "magic-last": 7, "version": 8, "file_kind": 12, "storage": 16, "dim": 20,
           "flags": 24, "nsections": 28, "rows": 32, "rows-hi": 39}
    for i in range(4):
        base = RAW_HEADER.size + i * RAW_SECTION.size
        pts[f"sec{i}-kind"] = base
        pts[f"sec{i}-offset"] = base + 8
        pts[f"sec{i}-bytes"] = base + 16
        pts[f"sec{i}-hash"] = base + 24
    pts["header-hash"] = HASH_OFFSET
    pts["header-hash-last"] = HASH_OFFSET + 7
    return pts


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_flipped_byte_in_segment_header(saved, mmap):
    seg = _seg_file(saved)
    for where, off in _header_flip_points().items():
        for mask in (0x01, 0x80):
            _flip(seg, off, mask)
            try:
                _expect_format_error(saved, os.path.basename(seg), mmap=mmap)
            except BaseException as e:
                raise AssertionError(f"flip {mask:#x} at header {where} (offset {off}): {e!r}") from e
            _flip(seg, off, mask)
    Index.load(saved, mmap=mmap).verify()


@pytest.mark.parametrize("section", ["ids", "scale", "codes"])
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_flipped_byte_in_verified_section(pristine, saved, section, mmap):
    """ids, scale and codes are checked by a default load."""
    seg = _seg_file(saved)
    secs = _sections(seg)
    off, nbytes = secs[section]
    if nbytes == 0:
        # Only a float storage's scale section may be empty; nothing there to corrupt.
        assert section == "scale" and os.path.basename(pristine) in ("f32-orig", "f16"), (section, pristine)
        return
    for pos in sorted({off, off + 1, off + nbytes // 3, off + nbytes - 1}):
        _flip(seg, pos)
        try:
            _expect_format_error(saved, os.path.basename(seg), mmap=mmap)
        except BaseException as e:
            raise AssertionError(f"flip in {section} at {pos} (section {off}+{nbytes}): {e!r}") from e
        _flip(seg, pos)
    Index.load(saved, mmap=mmap).verify()


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_flipped_byte_in_originals_caught_by_verify(pristine, saved, mmap):
    """A default load skips the originals' checksum; Index.verify() must catch it."""
    seg = _seg_file(saved)
    off, nbytes = _sections(seg)["originals"]
    if nbytes == 0:
        # An index created without originals stores none; nothing there to corrupt.
        assert os.path.basename(pristine) == "f16", pristine
        return
    for pos in sorted({off, off + nbytes // 2, off + nbytes - 1}):
        _flip(seg, pos)
        try:
            msg = _expect_format_error(saved, os.path.basename(seg), mmap=mmap, full_verify=True)
        except BaseException as e:
            raise AssertionError(f"flip in originals at {pos}: {e!r}") from e
        assert "checksum" in msg
        _flip(seg, pos)
    Index.load(saved, mmap=mmap).verify()


# ---------------------------------------------------------------------------------------
# Segment files: crafted headers with valid checksums


def test_segment_unknown_format_version(tmp_path):
    d = str(tmp_path / "ix")
    _make_index(d)
    seg = _seg_file(d)
    _rewrite_header(seg, version=7)
    msg = _expect_format_error(d, os.path.basename(seg))
    assert "7" in msg and "version" in msg


@pytest.mark.parametrize("field,value", [
    ("file_kind", ord("D")), ("storage", 0), ("dim", DIM + 1), ("rows", N - 1), ("rows", N + 16),
    ("nsections", 9), ("nsections", 3), ("magic", b"CLIPRTC2"),
])
def test_segment_crafted_header_fields(tmp_path, field, value):
    """Even with a re-sealed header checksum, a header that disagrees with the manifest
    (or is malformed) is rejected."""
    d = str(tmp_path / "ix")
    _make_index(d)
    seg = _seg_file(d)
    _rewrite_header(seg, **{field: value})
    _expect_format_error(d, os.path.basename(seg))


def test_segment_crafted_section_past_end(tmp_path):
    """A section table entry pointing past the end of the file, checksums re-sealed, and
    the manifest updated to accept the new header."""
    d = str(tmp_path / "ix")
    _make_index(d)
    off, nbytes = _sections(_seg_file(d))["codes"]
    name = _craft_segment(d, sections={2: (off, nbytes + (1 << 40))})
    _expect_format_error(d, name)


def test_segment_replaced_by_other_index_file(tmp_path):
    """A segment file swapped for a same-named file of another index."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _make_index(a)
    ix = Index(DIM, storage="i8")
    ix.add(_data(N, seed=1))
    ix.save(b)
    seg_a = _seg_file(a)
    assert os.path.basename(seg_a) == os.path.basename(_seg_file(b))
    shutil.copyfile(_seg_file(b), seg_a)
    _expect_format_error(a, os.path.basename(seg_a))


def test_missing_segment_file(tmp_path):
    d = str(tmp_path / "ix")
    _make_index(d)
    seg = _seg_file(d)
    os.unlink(seg)
    for mmap in (True, False):
        _expect_format_error(d, os.path.basename(seg), mmap=mmap)


def test_segment_replaced_by_directory(tmp_path):
    d = str(tmp_path / "ix")
    _make_index(d)
    seg = _seg_file(d)
    os.unlink(seg)
    os.mkdir(seg)
    with pytest.raises((cliprt.FormatError, OSError)) as ei:
        Index.load(d)
    assert os.path.basename(seg) in str(ei.value)


# ---------------------------------------------------------------------------------------
# Deletion files


@pytest.fixture
def saved_with_deletions(tmp_path):
    d = str(tmp_path / "ix")
    _make_index(d, remove=[0, 5, 299])
    loaded = Index.load(d)
    assert len(loaded) == N - 3 and 5 not in loaded
    return d


def test_truncated_deletion_file(saved_with_deletions):
    d = saved_with_deletions
    df = _del_file(d)
    backup = open(df, "rb").read()
    off, nbytes = _sections(df)["deleted"]
    for size in (0, 1, 100, HEADER_BYTES - 1, off, off + nbytes - 1):
        with open(df, "wb") as f:
            f.write(backup)
        _truncate(df, size)
        for mmap in (True, False):
            try:
                _expect_format_error(d, os.path.basename(df), mmap=mmap)
            except BaseException as e:
                raise AssertionError(f"deletion file truncated to {size}: {e!r}") from e


def test_flipped_byte_in_deletion_file(saved_with_deletions):
    d = saved_with_deletions
    df = _del_file(d)
    off, nbytes = _sections(df)["deleted"]
    points = list(_header_flip_points().values())[:12] + [off, off + nbytes - 1]
    for pos in points:
        _flip(df, pos)
        try:
            _expect_format_error(d, os.path.basename(df))
        except BaseException as e:
            raise AssertionError(f"flip in deletion file at {pos}: {e!r}") from e
        _flip(df, pos)
    Index.load(d).verify()


def test_missing_deletion_file(saved_with_deletions):
    d = saved_with_deletions
    df = _del_file(d)
    os.unlink(df)
    _expect_format_error(d, os.path.basename(df))


def test_deletion_bits_past_last_row(saved_with_deletions):
    """A deletion bitmap with bits set past the segment's rows (checksums re-sealed)."""
    d = saved_with_deletions
    df = _del_file(d)
    off, nbytes = _sections(df)["deleted"]
    with open(df, "r+b") as f:
        f.seek(off + nbytes - 1)
        last = f.read(1)[0]
        f.seek(off + nbytes - 1)
        f.write(bytes([last | 0x80]))        # row 319 > N - 1
        f.seek(off)
        newsec = xxh64(f.read(nbytes))
        f.seek(0)
        hdr = bytearray(f.read(HEADER_BYTES))
        kind, res, soff, sbytes, _ = RAW_SECTION.unpack_from(hdr, RAW_HEADER.size)
        RAW_SECTION.pack_into(hdr, RAW_HEADER.size, kind, res, soff, sbytes, newsec)
        newh = xxh64(bytes(hdr[:HASH_OFFSET]))
        struct.pack_into("<Q", hdr, HASH_OFFSET, newh)
        f.seek(0)
        f.write(hdr)
    name = os.path.basename(df)
    _rewrite_manifest(d, lambda lines: [
        " ".join(ln.split()[:5] + ["%016x" % newh]) if ln.startswith("segment ") else ln for ln in lines])
    _expect_format_error(d, name)


# ---------------------------------------------------------------------------------------
# MANIFEST


@pytest.fixture
def saved_two_segments(tmp_path):
    d = str(tmp_path / "ix")
    ix = _make_index(d, remove=[1, 2])
    ix.add(_data(50, seed=3))
    ix.save(d)
    return d


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_truncated_manifest(saved_two_segments, mmap):
    d = saved_two_segments
    p = os.path.join(d, "MANIFEST")
    backup = open(p, "rb").read()
    n = len(backup)
    end_at = backup.rindex(b"end ")
    for size in sorted({0, 1, 12, n // 3, n // 2, end_at, end_at + 2, end_at + 4, n - 9, n - 2}):
        with open(p, "wb") as f:
            f.write(backup[:size])
        try:
            _expect_format_error(d, "MANIFEST", mmap=mmap)
        except BaseException as e:
            raise AssertionError(f"MANIFEST truncated to {size} of {n} bytes: {e!r}") from e
    with open(p, "wb") as f:
        f.write(backup)
    Index.load(d, mmap=mmap).verify()


def test_flipped_byte_in_manifest(saved_two_segments):
    d = saved_two_segments
    p = os.path.join(d, "MANIFEST")
    backup = open(p, "rb").read()
    # First, a middle and the last-but-one byte of every line.
    points, start = set(), 0
    for line in backup.split(b"\n")[:-1]:
        points |= {start, start + len(line) // 2, start + max(len(line) - 1, 0)}
        start += len(line) + 1
    for pos in sorted(points):
        for mask in (0x01, 0x20):
            if chr(backup[pos] ^ mask) in "\n\r" or pos == len(backup) - 1:
                continue
            _flip(p, pos, mask)
            try:
                _expect_format_error(d, "MANIFEST")
            except BaseException as e:
                raise AssertionError(
                    f"MANIFEST flip {mask:#x} at {pos} ({backup[pos:pos + 1]!r}): {e!r}") from e
            _flip(p, pos, mask)
    assert open(p, "rb").read() == backup
    Index.load(d).verify()


def test_manifest_garbage_and_empty(tmp_path):
    d = str(tmp_path / "ix")
    _make_index(d)
    p = os.path.join(d, "MANIFEST")
    for content in (b"", b"\n", b"end 0000000000000000\n", os.urandom(300), b"\x00" * 64,
                    b"cliprt-index 1\n" * 3):
        with open(p, "wb") as f:
            f.write(content)
        _expect_format_error(d, "MANIFEST")


def test_manifest_unknown_format_version(tmp_path):
    d = str(tmp_path / "ix")
    _make_index(d)
    _rewrite_manifest(d, lambda lines: ["cliprt-index 42"] + lines[1:])
    msg = _expect_format_error(d, "MANIFEST")
    assert "42" in msg and "version" in msg
    # Without re-sealing the checksum it is still rejected.
    d2 = str(tmp_path / "ix2")
    _make_index(d2)
    p = os.path.join(d2, "MANIFEST")
    text = open(p).read().replace("cliprt-index 1\n", "cliprt-index 2\n", 1)
    open(p, "w").write(text)
    _expect_format_error(d2, "MANIFEST")


def _replace_line(key, new):
    def edit(lines):
        out = [new if ln.split()[0] == key else ln for ln in lines]
        assert out != lines or new in lines
        return out
    return edit


@pytest.mark.parametrize("edit", [
    _replace_line("dim", "dim 0"),
    _replace_line("dim", "dim -4"),
    _replace_line("dim", f"dim {DIM + 1}"),
    _replace_line("metric", "metric l2"),
    _replace_line("storage", "storage i4"),
    _replace_line("storage", "storage f32"),
    _replace_line("segments", "segments 2"),
    _replace_line("segments", "segments x"),
    _replace_line("generation", "gen 1"),
    lambda lines: [ln.replace("seg-", "../seg-") if ln.startswith("segment ") else ln for ln in lines],
    lambda lines: [ln.replace("seg-", "/tmp/seg-") if ln.startswith("segment ") else ln for ln in lines],
    lambda lines: [" ".join(ln.split()[:2] + ["-5"] + ln.split()[3:]) if ln.startswith("segment ")
                   else ln for ln in lines],
    lambda lines: [" ".join(ln.split()[:2] + [str(N + 1)] + ln.split()[3:]) if ln.startswith("segment ")
                   else ln for ln in lines],
    lambda lines: [" ".join(ln.split()[:3] + ["zz" * 8] + ln.split()[4:]) if ln.startswith("segment ")
                   else ln for ln in lines],
    lambda lines: [" ".join(ln.split()[:4] + ["seg-9-9.cseg.del-9"] + ln.split()[5:])
                   if ln.startswith("segment ") else ln for ln in lines],
    lambda lines: [ln for ln in lines if not ln.startswith("keep_originals")],
    _replace_line("keep_originals", "keep_originals 0"),
    _replace_line("next_id", "next_id -5"),
], ids=["dim0", "dim-neg", "dim-mismatch", "metric", "storage-unknown", "storage-mismatch",
        "segcount-high", "segcount-nan", "generation-key", "dotdot-name", "abs-name", "rows-neg",
        "rows-mismatch", "hash-hex", "missing-del-file", "missing-key", "keep-flip", "next_id-neg"])
def test_manifest_crafted_content(tmp_path, edit):
    """Malformed or inconsistent manifests with a valid checksum are rejected."""
    d = str(tmp_path / "ix")
    _make_index(d, storage="i8", keep_originals=True)
    _rewrite_manifest(d, edit)
    msg = _expect_format_error(d, "", mmap=True)
    assert "MANIFEST" in msg or ".cseg" in msg, msg


def test_manifest_next_id_below_stored_ids(tmp_path):
    """A (checksum-valid) manifest whose next_id is not past the stored ids: either load
    rejects it, or automatically assigned ids never collide with stored ones."""
    d = str(tmp_path / "ix")
    _make_index(d)
    _rewrite_manifest(d, _replace_line("next_id", "next_id 3"))
    try:
        ix = Index.load(d)
    except cliprt.FormatError as e:
        assert "MANIFEST" in str(e)
        return
    new = ix.add(_data(2, seed=5))
    assert len(np.unique(ix.ids())) == len(ix) == N + 2, (
        f"add() after load assigned ids {new.tolist()} that were already stored")


def test_load_rejects_manifest_listing_a_segment_twice(tmp_path):
    """The same (valid) segment file named by two manifest lines would count every row twice
    and return each id twice: load() rejects the manifest."""
    d = str(tmp_path / "ix")
    _make_index(d)

    def edit(lines):
        seg = [ln for ln in lines if ln.startswith("segment ")]
        return [("segments 2" if ln.startswith("segments ") else ln) for ln in lines] + seg

    _rewrite_manifest(d, edit)
    _expect_format_error(d, "MANIFEST")


def test_directory_without_manifest(tmp_path):
    d = str(tmp_path / "ix")
    _make_index(d)
    os.unlink(os.path.join(d, "MANIFEST"))
    before = _snapshot(d)
    for mmap in (True, False):
        with pytest.raises(cliprt.FormatError) as ei:
            Index.load(d, mmap=mmap)
        assert "MANIFEST" in str(ei.value)
    assert _snapshot(d) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(cliprt.FormatError):
        Index.load(empty)
    assert os.listdir(empty) == []


def test_manifest_is_a_directory(tmp_path):
    d = str(tmp_path / "ix")
    _make_index(d)
    os.unlink(os.path.join(d, "MANIFEST"))
    os.mkdir(os.path.join(d, "MANIFEST"))
    with pytest.raises((cliprt.FormatError, OSError)) as ei:
        Index.load(d)
    assert "MANIFEST" in str(ei.value)


# ---------------------------------------------------------------------------------------
# Recovery: a damaged index can be replaced by saving over it


def test_save_over_damaged_index_replaces_it(tmp_path):
    d = str(tmp_path / "ix")
    _make_index(d)
    with open(os.path.join(d, "MANIFEST"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(cliprt.FormatError):
        Index.load(d)
    ix = Index(DIM, storage="f16")
    ix.add(_data(25, seed=8))
    ix.save(d)
    loaded = Index.load(d)
    loaded.verify()
    assert (len(loaded), loaded.storage) == (25, "f16")
    assert len([n for n in os.listdir(d) if n.endswith(".cseg")]) == 1, os.listdir(d)


def test_resave_of_loaded_index_after_its_segment_was_damaged(tmp_path):
    """A loaded (read into memory) index saved into a fresh directory is complete even if
    the source files were damaged after loading."""
    d = str(tmp_path / "ix")
    ix = _make_index(d)
    loaded = Index.load(d, mmap=False)
    seg = _seg_file(d)
    _flip(seg, _sections(seg)["codes"][0])
    loaded.save(str(tmp_path / "copy"))
    copy = Index.load(str(tmp_path / "copy"))
    copy.verify()
    q = _data(3, seed=4)
    for a, b in zip(ix.search(q, k=5), copy.search(q, k=5)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------
# Crafted headers: every field a size is computed from, with the header checksum and the
# manifest re-sealed so the loader's own checks are what stands between the file and a
# wrapped size, an absurd allocation or a misaligned read. Each load runs in a subprocess,
# so a crash is seen as a crash.

def _craft_segment(d, *, rows=None, dim=None, sections=None, manifest_rows=False):
    """Rewrites the segment's header fields and section table entries ({index: (offset,
    bytes)}), re-seals its checksum and the manifest's record of it (and, with
    manifest_rows, the manifest's row count too)."""
    seg = _seg_file(d)
    with open(seg, "r+b") as f:
        hdr = bytearray(f.read(HEADER_BYTES))
        vals = list(RAW_HEADER.unpack_from(hdr, 0))
        if rows is not None:
            vals[7] = rows
        if dim is not None:
            vals[4] = dim
        RAW_HEADER.pack_into(hdr, 0, *vals)
        size = os.path.getsize(seg)
        for i, (off, nbytes) in (sections or {}).items():
            base = RAW_HEADER.size + i * RAW_SECTION.size
            kind, res, _, _, h = RAW_SECTION.unpack_from(hdr, base)
            if off + nbytes <= size:        # a checksum that matches the bytes now pointed at
                f.seek(off)
                h = xxh64(f.read(nbytes))
            RAW_SECTION.pack_into(hdr, base, kind, res, off, nbytes, h)
        newh = xxh64(bytes(hdr[:HASH_OFFSET]))
        struct.pack_into("<Q", hdr, HASH_OFFSET, newh)
        f.seek(0)
        f.write(hdr)
    name = os.path.basename(seg)

    def edit(lines):
        out = []
        for line in lines:
            if line.startswith("segment " + name):
                parts = line.split()
                parts[3] = "%016x" % newh
                if manifest_rows and rows is not None:
                    parts[2] = str(rows)
                line = " ".join(parts)
            out.append(line)
        return out

    _rewrite_manifest(d, edit)
    return name


_LOAD_IN_CHILD = """
import sys, cliprt
for mmap in (True, False):
    try:
        ix = cliprt.Index.load(sys.argv[1], mmap=mmap)
        ix.verify()
        print("LOADED", len(ix))
    except cliprt.FormatError as e:
        print("FormatError", e)
    except BaseException as e:
        print("UNEXPECTED", type(e).__name__, e)
"""


def _craft_cases():
    ids_off = HEADER_BYTES
    wrapped = {i: (ids_off, 0) for i in range(4)}   # every section empty: sizes that wrap to 0
    return {
        "rows-2^61-sizes-wrap-to-0": dict(rows=1 << 61, manifest_rows=True, sections=wrapped, storage="f32"),
        "rows-2^62-sizes-wrap-to-0": dict(rows=1 << 62, manifest_rows=True, sections=wrapped, storage="f32"),
        "rows-2^61": dict(rows=1 << 61),
        "rows-2^61-manifest-too": dict(rows=1 << 61, manifest_rows=True),
        "rows-2^40": dict(rows=1 << 40, manifest_rows=True),
        "rows-2^64-1": dict(rows=(1 << 64) - 1, manifest_rows=True),
        "dim-2^31": dict(dim=1 << 31),
        "dim-2^32-1": dict(dim=(1 << 32) - 1),
        "odd-offset": dict(sections={0: (ids_off + 1, N * 8)}),
        "offset-8-aligned": dict(sections={0: (ids_off + 8, N * 8)}),
        "odd-offset-codes": dict(sections={2: (ids_off + 4096 * 2 + 3, 4096)}),
        "overlapping": dict(sections={2: (ids_off, N * 8)}),   # codes over ids
        "wrapping-size": dict(sections={0: (ids_off, (1 << 64) - 8)}),
        "offset-in-header": dict(sections={0: (0, N * 8)}),
    }


@pytest.mark.parametrize("case", sorted(_craft_cases()))
def test_crafted_header_is_a_format_error_in_a_subprocess(tmp_path, case):
    import subprocess
    import sys

    d = str(tmp_path / "ix")
    craft = dict(_craft_cases()[case])
    storage = craft.pop("storage", "i8")
    _make_index(d, storage=storage, keep_originals=storage != "f32")
    name = _craft_segment(d, **craft)
    r = subprocess.run([sys.executable, "-c", _LOAD_IN_CHILD, d], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{case}: the loading process died ({r.returncode}): {r.stderr[-2000:]}"
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2, r.stdout + r.stderr
    for line in lines:
        assert line.startswith("FormatError"), f"{case}: {line}"
        assert name in line or "MANIFEST" in line, f"{case}: the error does not name the file: {line}"
