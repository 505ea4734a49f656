"""Fuzz tests (hypothesis) for the inputs cliprt reads from outside: index directories, the
MANIFEST, encoded images and the collection metadata filters.

Each target states its contract; any other outcome is a bug:

* Index loader (``Index.load``, mmap and read, with and without verification): the index
  loads, or ``cliprt.FormatError`` is raised. A loaded index must answer ``len``, ``ids``,
  ``search`` and ``verify`` with results or a FormatError; search returns stored ids only.
  Inputs: small saved indexes of every storage (odd dims and row counts, deletions, two
  segments) with flipped, truncated and appended bytes; section contents changed with all
  checksums re-sealed (so the checks behind the checksums run); crafted header fields and
  section tables (huge rows and dims, odd and overlapping offsets, sections past the end,
  sizes that wrap when multiplied) with the header checksum and the manifest re-sealed.
* Manifest parser: fields replaced by huge, negative and non-numeric values, segment lines
  duplicated or dropped, names with path separators, extra whitespace, end line re-sealed:
  FormatError, or a load whose index holds a subset of the original ids and can be added
  to, saved and loaded again.
* Image decoder (``Preprocessor``, exact and fast): a float32 array of the spec's shape, or
  ``cliprt.ImageError``. Inputs: random bytes, truncated and bit-flipped PNG, JPEG, GIF,
  WebP, BMP and TIFF files written by Pillow, tiny images in every mode.
* Collection filters (``Collection.select``): the ids a pure-Python filter over the stored
  records gives, or ValueError / TypeError naming the bad field or value; never an sqlite3
  error.

The example counts are small so the module runs in well under a minute; the same
generators run for longer, with every index load in a child process, in
benchmarks/fuzz_run.py.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import sqlite3
import struct
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cliprt  # noqa: E402
from cliprt import Index  # noqa: E402
from test_corruption import HASH_OFFSET, HEADER_BYTES, RAW_HEADER, RAW_SECTION, xxh64  # noqa: E402

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def fuzz_settings(n: int) -> settings:
    return settings(FAST, max_examples=n)


# =======================================================================================
# Index loader and manifest
# =======================================================================================

# name: (storage, dim, rows, keep_originals, ids to remove, second segment rows)
LOADER_CONFIGS = {
    "f32-d6": ("f32", 6, 5, False, (), 0),
    "f16-d17-del": ("f16", 17, 33, False, (0, 7, 32), 0),
    "bf16-d2-r1": ("bf16", 2, 1, False, (), 0),
    "i8-d5-orig-del": ("i8", 5, 20, True, (3,), 0),
    "b1-d65-orig": ("b1", 65, 17, True, (), 0),
    "i8-d9-two-segments": ("i8", 9, 16, False, (1, 2), 7),
}
SEGMENT_KIND, DELETION_KIND = ord("S"), ord("D")
KIND_IDS, KIND_SCALE, KIND_CODES, KIND_ORIGINALS, KIND_DELETED = 1, 2, 3, 4, 5
U64 = (1 << 64) - 1


def build_index(d: str, config: str) -> None:
    storage, dim, rows, keep, remove, second = LOADER_CONFIGS[config]
    rng = np.random.default_rng(len(config))
    ix = Index(dim, storage=storage, keep_originals=keep)
    ix.add(rng.standard_normal((rows, dim)).astype(np.float32))
    if remove:
        ix.remove(np.asarray(remove))
    ix.save(d)
    if second:
        ix.add(rng.standard_normal((second, dim)).astype(np.float32))
        ix.save(d)


def build_bases(root: str) -> Dict[str, str]:
    out = {}
    for name in LOADER_CONFIGS:
        d = os.path.join(root, name)
        build_index(d, name)
        out[name] = d
    return out


def index_files(d: str) -> Dict[str, str]:
    """Role -> basename: "MANIFEST", "seg0", "seg1", "del0", ... in manifest order."""
    out = {"MANIFEST": "MANIFEST"}
    for i, line in enumerate(ln for ln in manifest_body(d).splitlines() if ln.startswith("segment ")):
        parts = line.split()
        out[f"seg{i}"] = parts[1]
        if parts[4] != "-":
            out[f"del{i}"] = parts[4]
    return out


def manifest_body(d: str) -> str:
    text = open(os.path.join(d, "MANIFEST"), "rb").read().decode("utf-8", "surrogateescape")
    return text[: text.rindex("end ")]


def write_manifest(d: str, body: str) -> None:
    """Writes a manifest body closed by a valid end line."""
    raw = body.encode("utf-8", "surrogateescape")
    with open(os.path.join(d, "MANIFEST"), "wb") as f:
        f.write(raw + b"end %016x\n" % xxh64(raw))


def _set_manifest_segment(d: str, name: str, *, rows=None, hash_=None, del_hash=None) -> None:
    """Updates the manifest line naming segment or deletion file `name`."""
    lines = manifest_body(d).splitlines()
    for i, line in enumerate(lines):
        parts = line.split()
        if parts and parts[0] == "segment" and name in (parts[1], parts[4]):
            if parts[1] == name:
                if rows is not None:
                    parts[2] = str(rows)
                if hash_ is not None:
                    parts[3] = "%016x" % hash_
            elif del_hash is not None:
                parts[5] = "%016x" % del_hash
            lines[i] = " ".join(parts)
    write_manifest(d, "".join(ln + "\n" for ln in lines))


def _seal_header(hdr: bytearray) -> int:
    h = xxh64(bytes(hdr[:HASH_OFFSET]))
    struct.pack_into("<Q", hdr, HASH_OFFSET, h)
    return h


def _section_entries(hdr) -> List[list]:
    nsec = min(RAW_HEADER.unpack_from(hdr, 0)[6], 8)
    return [list(RAW_SECTION.unpack_from(hdr, RAW_HEADER.size + i * RAW_SECTION.size)) for i in range(nsec)]


def _reseal_file(d: str, role_name: str, data: bytearray, reseal_sections: bool, manifest_rows: bool) -> None:
    """Re-seals (optionally) every section hash, the header hash and the manifest entry of a
    container file whose bytes are `data`, and writes it."""
    hdr = data
    if reseal_sections:
        for i, (kind, res, off, nbytes, _) in enumerate(_section_entries(hdr)):
            if off <= len(data) and nbytes <= len(data) - off:
                RAW_SECTION.pack_into(hdr, RAW_HEADER.size + i * RAW_SECTION.size, kind, res, off, nbytes,
                                      xxh64(bytes(data[off:off + nbytes])))
    h = _seal_header(hdr)
    path = os.path.join(d, role_name)
    with open(path, "wb") as f:
        f.write(data)
    rows = RAW_HEADER.unpack_from(hdr, 0)[7]
    is_del = ".del-" in role_name
    if is_del:
        _set_manifest_segment(d, role_name, del_hash=h)
    else:
        _set_manifest_segment(d, role_name, hash_=h, rows=rows if manifest_rows and rows < 1 << 63 else None)


# ---- mutations ---------------------------------------------------------------------------
# A case is plain data (lists, ints, bytes, str) so it can be printed, pickled and replayed:
#   ["raw", role, [op, ...]]             bytes changed, nothing re-sealed
#   ["sealed", role, section, [op, ...]] a section's bytes changed, every checksum re-sealed
#   ["header", role, {field: value}, [[entry, field, value], ...], reseal_sections]
#   ["manifest", [edit, ...]]            MANIFEST text edits, end line re-sealed
# op: ["flip", where, mask] | ["truncate", where] | ["append", bytes] | ["write", where, bytes]
# where: a fraction in [0, 1] of the file (or section) length.

HEADER_FIELDS = ("magic", "version", "file_kind", "storage", "dim", "flags", "nsections", "rows")


def _pos(where: float, n: int) -> int:
    return min(int(where * n), max(n - 1, 0))


def _apply_ops(data: bytearray, ops, lo: int = 0, hi: Optional[int] = None) -> bytearray:
    hi = len(data) if hi is None else hi
    for op in ops:
        n = hi - lo
        if op[0] == "flip" and n > 0:
            data[lo + _pos(op[1], n)] ^= op[2]
        elif op[0] == "write" and n > 0:
            p = lo + _pos(op[1], n)
            chunk = op[2][: hi - p]
            data[p:p + len(chunk)] = chunk
        elif op[0] == "truncate":
            del data[lo + _pos(op[1], n + 1) if n else lo:]
            hi = min(hi, len(data))
        elif op[0] == "append":
            data += op[1]
    return data


def wrapped_sizes(storage: int, dim: int, rows: int, keep: bool) -> Dict[int, int]:
    """Section sizes the loader computes for a header, in uint64 arithmetic (so they wrap)."""
    group = {0: (4, 1), 1: (2, 1), 2: (4, 2), 3: (4, 4), 4: (8, 64)}.get(storage, (4, 1))
    ngroups = -(-dim // group[1])
    block = group[0] * ngroups * 16
    blocks = (rows + 15) // 16 if rows < 1 << 63 else 0
    return {KIND_IDS: rows * 8 & U64, KIND_SCALE: (rows * 4 if storage in (3, 4) else 0) & U64,
            KIND_CODES: blocks * block & U64, KIND_ORIGINALS: (rows * dim * 4 if keep else 0) & U64}


def apply_case(d: str, case) -> None:
    """Applies a mutation case to the index directory d."""
    files = index_files(d)
    kind = case[0]
    if kind == "manifest":
        body = manifest_body(d)
        for edit in case[1]:
            body = apply_manifest_edit(body, edit)
        write_manifest(d, body)
        return
    role = case[1]
    # a file the configuration does not have (a deletion file, a second segment): seg0
    name = files.get(role) or files.get(role.replace("del", "seg")) or files["seg0"]
    path = os.path.join(d, name)
    data = bytearray(open(path, "rb").read())
    if kind == "raw":
        with open(path, "wb") as f:
            f.write(_apply_ops(data, case[2]))
        return
    if name == "MANIFEST":
        raise ValueError("sealed and header cases apply to container files")
    if kind == "sealed":
        entries = _section_entries(data)
        nonempty = [e for e in entries if e[3] > 0 and e[2] + e[3] <= len(data)]
        if nonempty:
            e = nonempty[case[2] % len(nonempty)]
            _apply_ops(data, [op for op in case[3] if op[0] in ("flip", "write")], e[2], e[2] + e[3])
        _reseal_file(d, name, data, reseal_sections=True, manifest_rows=False)
        return
    if kind == "header":
        _, _, fields, section_edits, reseal_sections = case
        vals = list(RAW_HEADER.unpack_from(data, 0))
        keep = "keep_originals 1" in manifest_body(d)
        for k, v in fields.items():
            vals[HEADER_FIELDS.index(k)] = v
        RAW_HEADER.pack_into(data, 0, *vals)
        storage, dim, rows = vals[3], vals[4], vals[7]
        entries = [list(RAW_SECTION.unpack_from(data, RAW_HEADER.size + i * RAW_SECTION.size)) for i in range(8)]
        for entry, field, value in section_edits:
            e = entries[entry % 8]
            if field == "kind":
                e[0] = value
            elif field == "offset":
                e[2] = _offset_value(value, e, entries, len(data))
            elif field == "bytes":
                e[3] = (wrapped_sizes(storage, dim, rows, keep).get(e[0], 0) if value == "wrapped" else value) & U64
        for i, e in enumerate(entries):
            RAW_SECTION.pack_into(data, RAW_HEADER.size + i * RAW_SECTION.size, *e)
        _reseal_file(d, name, data, reseal_sections=reseal_sections, manifest_rows=True)
        return
    raise ValueError(f"unknown case kind {kind!r}")


def _offset_value(value, e, entries, size: int) -> int:
    if isinstance(value, int):
        return value & U64
    if value.startswith("+"):            # shifted by a few bytes: not 4 KiB aligned
        return e[2] + int(value[1:])
    if value == "overlap":               # the start of another non-empty section
        others = [o for o in entries if o is not e and o[3] > 0]
        return others[0][2] if others else HEADER_BYTES
    if value == "eof":
        return size
    if value == "past-eof":
        return size + 4096
    raise ValueError(value)


MANIFEST_KEYS = ("cliprt-index", "generation", "dim", "metric", "storage", "keep_originals", "next_id", "segments")


def apply_manifest_edit(body: str, edit) -> str:
    """edit: ["set", key, value] (first line with that key) | ["segfield", seg, field, value]
    | ["dup", seg] | ["drop", seg] | ["droplines", key] | ["ws", where, text] | ["append", text]
    | ["respace", text] (every space becomes text, every line is followed by a blank one)."""
    lines = body.splitlines()
    segs = [i for i, ln in enumerate(lines) if ln.split()[:1] == ["segment"]]
    op = edit[0]
    if op == "set":
        for i, ln in enumerate(lines):
            if ln.split()[:1] == [edit[1]]:
                lines[i] = f"{edit[1]} {edit[2]}"
                break
    elif op == "segfield" and segs:
        i = segs[edit[1] % len(segs)]
        parts = lines[i].split()
        parts += ["-"] * (6 - len(parts))
        parts[1 + edit[2] % 5] = edit[3]
        lines[i] = " ".join(parts)
    elif op == "dup" and segs:
        lines.append(lines[segs[edit[1] % len(segs)]])
    elif op == "drop" and segs:
        del lines[segs[edit[1] % len(segs)]]
    elif op == "droplines":
        lines = [ln for ln in lines if ln.split()[:1] != [edit[1]]]
    elif op == "ws":
        text = "\n".join(lines) + "\n"
        p = _pos(edit[1], len(text))
        return text[:p] + edit[2] + text[p:]
    elif op == "append":
        lines.append(edit[1])
    elif op == "respace":
        return "".join(ln.replace(" ", edit[1]) + "\n\n" for ln in lines)
    return "".join(ln + "\n" for ln in lines)


# ---- the loader contract -------------------------------------------------------------------

class ContractViolation(AssertionError):
    """An outcome the contract does not allow (the message says which)."""


def exercise_loaded(ix: Index, original_ids: Optional[set] = None) -> None:
    """A loaded index answers len / ids / search / verify with results or FormatError."""
    try:
        n = len(ix)
        stored = ix.ids()
        if len(stored) != n:
            raise ContractViolation(f"len() is {n} but ids() has {len(stored)} ids")
        if original_ids is not None and not set(stored.tolist()) <= original_ids:
            raise ContractViolation("loaded index holds ids the original did not")
        q = np.random.default_rng(0).standard_normal((2, ix.dim)).astype(np.float32)
        scores, ids = ix.search(q, k=4)
        if scores.shape != (2, 4) or ids.shape != (2, 4):
            raise ContractViolation(f"search returned shapes {scores.shape}, {ids.shape}")
        allowed = set(stored.tolist()) | {-1}
        if not set(ids.ravel().tolist()) <= allowed:
            raise ContractViolation(f"search returned ids {ids.tolist()} that are not stored")
        ix.verify()
    except cliprt.FormatError:
        pass


def stored_row_ids(d: str) -> set:
    """Every id in the ids sections of d's segment files, deleted rows included."""
    out: set = set()
    for role, name in index_files(d).items():
        if role.startswith("seg"):
            data = open(os.path.join(d, name), "rb").read()
            for kind, _, off, nbytes, _ in _section_entries(data):
                if kind == KIND_IDS:
                    out.update(np.frombuffer(data, "<i8", nbytes // 8, off).tolist())
    return out


def malformed_section_table(d: str) -> Optional[str]:
    """Why the section tables of d's container files are malformed (a non-empty section
    not 4 KiB aligned, or two non-empty sections overlapping), or None. A loader must
    reject such files whatever their checksums say."""
    for name in sorted(os.listdir(d)):
        if ".cseg" not in name:
            continue
        data = open(os.path.join(d, name), "rb").read(HEADER_BYTES)
        if len(data) < HEADER_BYTES or data[:8] != b"CLIPRTC1":
            continue
        spans = [(off, off + nbytes) for _, _, off, nbytes, _ in _section_entries(data) if nbytes > 0]
        for lo, hi in spans:
            if lo % 4096:
                return f"{name}: section at offset {lo} is not 4096-aligned"
        spans.sort()
        for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
            if lo2 < hi1:
                return f"{name}: sections [{lo1}, {hi1}) and [{lo2}, {hi2}) overlap"
    return None


def check_load(d: str, mmap: bool, verify: bool, original_ids: Optional[set] = None) -> str:
    """Loads d under the contract; returns "ok" or "FormatError", raises ContractViolation."""
    malformed = malformed_section_table(d)
    try:
        ix = Index.load(d, mmap=mmap, verify=verify)
    except cliprt.FormatError:
        return "FormatError"
    except ContractViolation:
        raise
    except BaseException as e:  # MemoryError, OverflowError, ValueError, OSError, ...
        raise ContractViolation(f"load raised {type(e).__name__}: {e}") from e
    if malformed:
        raise ContractViolation(f"loaded a malformed section table ({malformed})")
    try:
        exercise_loaded(ix, original_ids)
    except ContractViolation:
        raise
    except BaseException as e:
        raise ContractViolation(f"the loaded index raised {type(e).__name__}: {e}") from e
    return "ok"


def check_manifest_case(d: str, original_ids: set, mmap: bool = True) -> str:
    """Manifest contract: FormatError, or an index holding a subset of the original ids that
    can be added to, saved over and loaded again with every id present."""
    outcome = check_load(d, mmap, True, original_ids)
    if outcome != "ok":
        return outcome
    try:
        ix = Index.load(d, mmap=mmap)
        before = set(ix.ids().tolist())
        added = []
        for seed in (1, 2):   # two saves: the second reuses files the first wrote
            rows = np.random.default_rng(seed).standard_normal((3, ix.dim)).astype(np.float32)
            try:
                added += ix.add(rows).tolist()
            except ValueError as e:   # documented: automatic ids exhausted (a huge next_id)
                if "id" not in str(e):
                    raise
                return "ok"
            ix.save(d)
        if len(set(added)) != len(added) or set(added) & before:
            raise ContractViolation(f"add() after load assigned ids {added} colliding with {sorted(before)}")
        again = Index.load(d)
        again.verify()
        if set(again.ids().tolist()) != before | set(added):
            raise ContractViolation("an index saved after loading this manifest lost or gained ids")
    except ContractViolation:
        raise
    except BaseException as e:
        raise ContractViolation(f"add/save/load after the load raised {type(e).__name__}: {e}") from e
    return "ok"


# ---- strategies ----------------------------------------------------------------------------

_fraction = st.floats(0, 1)
_byte_ops = st.one_of(
    st.tuples(st.just("flip"), _fraction, st.integers(1, 255)).map(list),
    st.tuples(st.just("write"), _fraction, st.binary(min_size=1, max_size=16)).map(list),
)
_ops = st.one_of(
    _byte_ops,
    st.tuples(st.just("truncate"), _fraction).map(list),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)).map(list),
)
raw_cases = st.tuples(st.just("raw"), st.sampled_from(["seg0", "del0", "seg1", "MANIFEST"]),
                      st.lists(_ops, min_size=1, max_size=4)).map(list)
sealed_cases = st.tuples(st.just("sealed"), st.sampled_from(["seg0", "del0", "seg1"]), st.integers(0, 7),
                         st.lists(_byte_ops, min_size=1, max_size=4)).map(list)

ROWS_VALUES = [0, 1, 15, 16, 17, 1 << 31, 1 << 32, 1 << 40, 1 << 61, (1 << 61) + 1, 1 << 62, (1 << 62) + 1,
               (1 << 62) + 16, (1 << 63) - 1, 1 << 63, U64]
DIM_VALUES = [0, 1, 2, 65, 65536, 65537, 1 << 31, (1 << 32) - 1]
_u32 = st.integers(0, (1 << 32) - 1)
_header_fields = st.fixed_dictionaries({}, optional={
    "rows": st.sampled_from(ROWS_VALUES) | st.integers(0, U64),
    "dim": st.sampled_from(DIM_VALUES) | _u32,
    "storage": st.integers(0, 6) | _u32,
    "file_kind": st.sampled_from([0, SEGMENT_KIND, DELETION_KIND]) | _u32,
    "flags": _u32,
    "nsections": st.integers(0, 9) | _u32,
    "version": st.sampled_from([0, 1, 2]) | _u32,
})
_section_edit = st.one_of(
    st.tuples(st.integers(0, 7), st.just("kind"), st.integers(0, 6) | _u32),
    st.tuples(st.integers(0, 7), st.just("offset"),
              st.sampled_from(["+1", "+4", "+8", "+64", "+4095", "overlap", "eof", "past-eof"])
              | st.sampled_from([0, 4095, 4096, 8192, 1 << 63, U64 - 4095, U64])),
    st.tuples(st.integers(0, 7), st.just("bytes"), st.sampled_from(["wrapped", 0, 1, 8, 4096, 1 << 63, U64])),
).map(list)
WRAP_ALL = [[i, "bytes", "wrapped"] for i in range(4)]
header_cases = st.builds(
    lambda role, fields, edits, wrap, reseal: ["header", role, fields, (WRAP_ALL if wrap else []) + edits, reseal],
    st.sampled_from(["seg0", "seg0", "del0"]), _header_fields, st.lists(_section_edit, max_size=3),
    st.booleans(), st.booleans())

_manifest_values = st.one_of(
    st.sampled_from(["-1", "0", "1", "+5", "007", "18446744073709551615", "18446744073709551616",
                     "9223372036854775807", "9223372036854775808", "-9223372036854775809", "65536", "65537",
                     "2147483647", "2147483648", "4294967297", "16777217", "1e3", "0x10", "1.5", "nan", "inf",
                     "", "x", "1 2", "\u0663", "cosine", "ip", "f32", "i8", "b1", "-", "0" * 16, "f" * 16,
                     "../seg-1-0.cseg", "a/b.cseg", "/tmp/seg-1-0.cseg", ".hidden", "seg-1-0.cseg",
                     "seg-1-0.cseg.del-1", "x" * 201]),
    st.integers(-(1 << 70), 1 << 70).map(str),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
)
_manifest_edit = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(MANIFEST_KEYS), _manifest_values),
    st.tuples(st.just("segfield"), st.integers(0, 3), st.integers(0, 4), _manifest_values),
    st.tuples(st.just("dup"), st.integers(0, 3)),
    st.tuples(st.just("drop"), st.integers(0, 3)),
    st.tuples(st.just("droplines"), st.sampled_from(MANIFEST_KEYS + ("segment",))),
    st.tuples(st.just("ws"), _fraction, st.sampled_from([" ", "\t", "  \t ", "\r", "\n", "\n\n", "\x0b", "\x00"])),
    st.tuples(st.just("append"), st.sampled_from(["junk 1", "segment", "end 0000000000000000", ""])),
    st.tuples(st.just("respace"), st.sampled_from(["  ", "\t", " \r ", "\x0b"])),
).map(list)
manifest_cases = st.lists(_manifest_edit, min_size=1, max_size=3).map(lambda edits: ["manifest", edits])


def run_loader_case(base: str, case, mmap: bool, verify: bool) -> str:
    """Copies the index at `base`, applies `case`, loads it under the contract. Returns the
    outcome ("ok", "FormatError") or raises ContractViolation."""
    work = tempfile.mkdtemp(prefix="cliprt-fuzz-")
    try:
        d = os.path.join(work, "ix")
        shutil.copytree(base, d)
        original = stored_row_ids(d)
        apply_case(d, case)
        if case[0] == "manifest":
            return check_manifest_case(d, original, mmap)
        return check_load(d, mmap, verify, original)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- tests ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loader_bases(tmp_path_factory):
    return build_bases(str(tmp_path_factory.mktemp("fuzz-bases")))


def test_python_xxh64_matches_the_core(loader_bases):
    """The checksums this module re-seals are the ones the core writes and checks."""
    for d in loader_bases.values():
        text = open(os.path.join(d, "MANIFEST"), "rb").read()
        end = text.rindex(b"end ")
        assert int(text[end + 4:].strip(), 16) == xxh64(text[:end])
        for role, name in index_files(d).items():
            if role == "MANIFEST":
                continue
            data = open(os.path.join(d, name), "rb").read()
            assert struct.unpack_from("<Q", data, HASH_OFFSET)[0] == xxh64(data[:HASH_OFFSET])
            for kind, _, off, nbytes, h in _section_entries(data):
                assert xxh64(data[off:off + nbytes]) == h, (name, kind)


def test_untouched_bases_load(loader_bases):
    """The oracle itself: every base loads, is well-formed and passes the contract checks."""
    for name, d in loader_bases.items():
        assert malformed_section_table(d) is None
        ids = stored_row_ids(d)
        for mmap in (True, False):
            assert check_load(d, mmap, True, ids) == "ok"
        _, _, rows, _, remove, second = LOADER_CONFIGS[name]
        assert len(Index.load(d)) == rows + second - len(remove)


_configs = st.sampled_from(sorted(LOADER_CONFIGS))


@fuzz_settings(150)
@given(config=_configs, case=raw_cases, mmap=st.booleans(), verify=st.booleans())
def test_loader_raw_mutations(loader_bases, config, case, mmap, verify):
    run_loader_case(loader_bases[config], case, mmap, verify)


@fuzz_settings(100)
@given(config=_configs, case=sealed_cases, mmap=st.booleans(), verify=st.booleans())
def test_loader_sealed_mutations(loader_bases, config, case, mmap, verify):
    run_loader_case(loader_bases[config], case, mmap, verify)


@fuzz_settings(200)
@given(config=_configs, case=header_cases, mmap=st.booleans(), verify=st.booleans())
def test_loader_crafted_headers(loader_bases, config, case, mmap, verify):
    run_loader_case(loader_bases[config], case, mmap, verify)


@fuzz_settings(100)
@given(config=_configs, case=manifest_cases, mmap=st.booleans())
def test_manifest_mutations(loader_bases, config, case, mmap):
    run_loader_case(loader_bases[config], case, mmap, True)


# ---- explicit crafted cases ------------------------------------------------------------------
# Each must be rejected with FormatError.

def _header(role, fields, edits=(), reseal=True):
    return ["header", role, fields, list(edits), reseal]


CRAFTED_HEADERS = [
    pytest.param("f32-d6", _header("seg0", {"rows": 1 << 61}, WRAP_ALL), id="rows-2^61-sizes-wrap"),
    pytest.param("f32-d6", _header("seg0", {"rows": (1 << 61) + 1}, WRAP_ALL), id="rows-2^61+1-sizes-wrap"),
    pytest.param("i8-d5-orig-del", _header("seg0", {"rows": 1 << 62}, WRAP_ALL), id="rows-2^62-i8-sizes-wrap"),
    pytest.param("b1-d65-orig", _header("seg0", {"rows": (1 << 62) + 16}, WRAP_ALL),
                 id="rows-2^62+16-b1-sizes-wrap"),
    pytest.param("f16-d17-del", _header("seg0", {"rows": 1 << 40}, WRAP_ALL), id="rows-2^40"),
    pytest.param("f32-d6", _header("seg0", {"rows": (1 << 63) - 1}, WRAP_ALL), id="rows-2^63-1"),
    pytest.param("f32-d6", _header("seg0", {"rows": 1 << 63}, WRAP_ALL), id="rows-2^63"),
    pytest.param("f32-d6", _header("seg0", {"rows": U64}, WRAP_ALL), id="rows-2^64-1"),
    pytest.param("f32-d6", _header("seg0", {"dim": 1 << 31}, WRAP_ALL), id="dim-2^31"),
    pytest.param("b1-d65-orig", _header("seg0", {"dim": (1 << 32) - 1, "rows": 1 << 62}, WRAP_ALL),
                 id="dim-2^32-1-rows-2^62"),
    pytest.param("i8-d5-orig-del", _header("seg0", {}, [[2, "offset", "+8"]]), id="codes-offset+8"),
    pytest.param("b1-d65-orig", _header("seg0", {}, [[3, "offset", "+4"]]), id="originals-offset+4"),
    pytest.param("f16-d17-del", _header("del0", {}, [[0, "offset", "+8"]]), id="deletions-offset+8"),
    pytest.param("i8-d5-orig-del", _header("seg0", {}, [[0, "offset", "+1"]]), id="ids-offset+1"),
    pytest.param("f32-d6", _header("seg0", {}, [[2, "offset", "overlap"]]), id="codes-overlap-ids"),
    pytest.param("i8-d5-orig-del", _header("seg0", {}, [[3, "offset", "overlap"]]), id="originals-overlap-ids"),
    pytest.param("f32-d6", _header("seg0", {}, [[2, "offset", "past-eof"]]), id="codes-past-eof"),
    pytest.param("f32-d6", _header("seg0", {}, [[2, "offset", "eof"]]), id="codes-at-eof"),
    pytest.param("f32-d6", _header("seg0", {}, [[2, "offset", U64 - 4095]]), id="codes-offset-wraps"),
    pytest.param("f32-d6", _header("seg0", {}, [[2, "bytes", U64]]), id="codes-bytes-2^64-1"),
    pytest.param("f32-d6", _header("seg0", {"nsections": 3}), id="nsections-3"),
    pytest.param("f16-d17-del", _header("del0", {"rows": 1 << 62}, [[0, "bytes", 0]]), id="deletions-rows-2^62"),
]


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
@pytest.mark.parametrize("config,case", CRAFTED_HEADERS)
def test_crafted_header_is_rejected(loader_bases, config, case, mmap):
    work = tempfile.mkdtemp(prefix="cliprt-fuzz-")
    try:
        d = os.path.join(work, "ix")
        shutil.copytree(loader_bases[config], d)
        apply_case(d, case)
        assert check_load(d, mmap, True, stored_row_ids(loader_bases[config])) == "FormatError"
    finally:
        shutil.rmtree(work, ignore_errors=True)


CRAFTED_MANIFESTS = [
    # (edits, outcomes allowed)
    pytest.param([["set", "dim", "65537"], ["set", "segments", "0"], ["droplines", "segment"]], {"FormatError"},
                 id="dim-65537-no-segments"),
    pytest.param([["set", "dim", "2147483647"], ["set", "segments", "0"], ["droplines", "segment"]],
                 {"FormatError"}, id="dim-2^31-1-no-segments"),
    pytest.param([["set", "metric", "cos\udc80"]], {"FormatError"}, id="metric-not-utf8"),
    pytest.param([["segfield", 0, 2, "\udcff" * 16]], {"FormatError"}, id="hash-not-utf8"),
    pytest.param([["set", "dim", "2147483648"]], {"FormatError"}, id="dim-2^31"),
    pytest.param([["set", "segments", "16777217"]], {"FormatError"}, id="segments-2^24+1"),
    pytest.param([["set", "segments", "-1"]], {"FormatError"}, id="segments-negative"),
    pytest.param([["set", "next_id", "-1"]], {"FormatError"}, id="next_id-negative"),
    pytest.param([["set", "next_id", "9223372036854775808"]], {"FormatError"}, id="next_id-2^63"),
    pytest.param([["set", "next_id", "9223372036854775807"]], {"ok", "FormatError"}, id="next_id-2^63-1"),
    pytest.param([["set", "generation", "-1"]], {"ok", "FormatError"}, id="generation-negative"),
    pytest.param([["set", "generation", "18446744073709551615"]], {"ok", "FormatError"}, id="generation-2^64-1"),
    pytest.param([["segfield", 0, 0, "../seg-1-0.cseg"]], {"FormatError"}, id="name-dotdot"),
    pytest.param([["segfield", 0, 0, "sub/seg-1-0.cseg"]], {"FormatError"}, id="name-separator"),
    pytest.param([["segfield", 0, 3, "/etc/passwd"]], {"FormatError"}, id="deletion-name-absolute"),
    pytest.param([["segfield", 0, 1, "18446744073709551615"]], {"FormatError"}, id="rows-2^64-1"),
    pytest.param([["dup", 0], ["set", "segments", "3"]], {"FormatError"}, id="segment-line-twice"),
    pytest.param([["drop", 0], ["set", "segments", "1"]], {"ok", "FormatError"}, id="segment-line-dropped"),
    pytest.param([["respace", "  \t "]], {"ok"}, id="extra-whitespace"),
]


@pytest.mark.parametrize("edits,allowed", CRAFTED_MANIFESTS)
def test_crafted_manifest(loader_bases, edits, allowed):
    work = tempfile.mkdtemp(prefix="cliprt-fuzz-")
    try:
        d = os.path.join(work, "ix")
        shutil.copytree(loader_bases["i8-d9-two-segments"], d)
        original = stored_row_ids(d)
        apply_case(d, ["manifest", edits])
        assert check_manifest_case(d, original) in allowed
    finally:
        shutil.rmtree(work, ignore_errors=True)


# =======================================================================================
# Image decoder
# =======================================================================================

from cliprt.models import ImageSpec  # noqa: E402
from cliprt.preprocess import ImageError, Preprocessor  # noqa: E402

try:
    from PIL import Image
except ImportError:  # pragma: no cover - pillow is part of the encode extra
    Image = None
needs_pil = pytest.mark.skipif(Image is None, reason="Pillow is not installed")

IMAGE_SPECS = [
    ImageSpec(size=(8, 8), resize_mode="shortest", resize_size=9, interpolation="bicubic", antialias=True,
              mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28)),
    ImageSpec(size=(6, 10), resize_mode="squash", resize_size=6, interpolation="bilinear", antialias=True,
              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channel_order="BGR"),
]
IMAGE_FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]
# (mode, formats that can store it)
TINY_MODES = {"1": ["PNG", "BMP", "TIFF", "GIF"], "L": IMAGE_FORMATS, "P": ["PNG", "GIF", "BMP", "TIFF"],
              "RGB": IMAGE_FORMATS, "RGBA": ["PNG", "WEBP", "TIFF", "GIF"], "LA": ["PNG"], "CMYK": ["JPEG", "TIFF"],
              "I;16": ["PNG", "TIFF"], "I": ["PNG", "TIFF"], "F": ["TIFF"], "YCbCr": ["JPEG"], "PA": ["PNG"],
              "RGBX": ["TIFF"], "HSV": [], "LAB": ["TIFF"], "La": [], "RGBa": [], "I;16B": []}
# Mapped pixels cap for the fuzz preprocessors: crafted headers may claim huge sizes.
FUZZ_MAX_PIXELS = 1 << 20


def tiny_image(mode: str, w: int, h: int, pixels: bytes):
    """A PIL image of `mode` and size (w, h) whose raw bytes come from `pixels` (repeated)."""
    probe = Image.new(mode, (w, h))
    n = len(probe.tobytes())
    raw = (pixels * (n // max(len(pixels), 1) + 1))[:n] if pixels else bytes(n)
    im = Image.frombytes(mode, (w, h), raw)
    if mode in ("P", "PA"):
        im.putpalette(bytes(range(256)) * 3)
    if mode == "F":   # keep the floats finite: random bytes make NaN and inf
        im = Image.fromarray(np.nan_to_num(np.asarray(im), nan=0.0, posinf=1e30, neginf=-1e30).astype(np.float32))
    return im


def encode_image(im, fmt: str) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.save(buf, fmt)
    return buf.getvalue()


def seed_images() -> List[bytes]:
    """Small valid files of every format, the starting points of the mutations."""
    rng = np.random.default_rng(7)
    out = []
    for fmt in IMAGE_FORMATS:
        for mode, (w, h) in (("RGB", (13, 7)), ("L", (5, 9)), ("P", (4, 4)), ("RGBA", (3, 11))):
            if fmt not in TINY_MODES[mode]:
                continue
            out.append(encode_image(tiny_image(mode, w, h, rng.bytes(64)), fmt))
    return out


SEED_IMAGES: List[bytes] = seed_images() if Image is not None else []
MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM",
          b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00"]

_mutated_image = st.builds(
    lambda i, ops: ["mutated", i, ops],
    st.integers(0, max(len(SEED_IMAGES) - 1, 0)), st.lists(_ops, min_size=1, max_size=4))
image_cases = st.one_of(
    st.builds(lambda b: ["bytes", b], st.binary(max_size=200)),
    st.builds(lambda m, b: ["bytes", m + b], st.sampled_from(MAGICS), st.binary(max_size=120)),
    _mutated_image, _mutated_image,
    st.builds(lambda mode, fmt, w, h, px: ["tiny", mode, fmt, w, h, px],
              st.sampled_from(sorted(TINY_MODES)), st.sampled_from(["pil", "array"] + IMAGE_FORMATS),
              st.integers(1, 5), st.integers(1, 5), st.binary(max_size=32)),
)


def image_item(case):
    """The item a case feeds the preprocessor: bytes, a PIL image or a numpy array."""
    if case[0] == "bytes":
        return bytes(case[1])
    if case[0] == "mutated":
        return bytes(_apply_ops(bytearray(SEED_IMAGES[case[1]]), case[2]))
    _, mode, fmt, w, h, px = case
    im = tiny_image(mode, w, h, px)
    if fmt == "pil":
        return im
    if fmt == "array":
        if mode in ("L", "RGB", "RGBA"):
            return np.asarray(im)
        return np.frombuffer(tiny_image("L", w, h, px).tobytes(), np.uint8).reshape(h, w)
    if fmt in TINY_MODES[mode]:
        try:
            return encode_image(im, fmt)
        except (OSError, ValueError):   # e.g. PNG refuses mode "I" values past 16 bits
            pass
    return encode_image(tiny_image("RGB", w, h, px), fmt)   # a mode the format cannot store


def check_image(pre: Preprocessor, item) -> str:
    """Image contract: a finite float32 array of the preprocessor's shape, or ImageError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = pre(item)
    except ImageError:
        return "ImageError"
    except BaseException as e:
        raise ContractViolation(f"preprocessing raised {type(e).__name__}: {e}") from e
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == pre.shape):
        raise ContractViolation(f"got {type(out).__name__} {getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}")
    if not np.isfinite(out).all():
        raise ContractViolation("the output holds NaN or inf")
    return "ok"


def image_preprocessors() -> List[Preprocessor]:
    return [Preprocessor(spec, mode=mode, max_pixels=FUZZ_MAX_PIXELS) for spec in IMAGE_SPECS
            for mode in ("exact", "fast")]


@needs_pil
def test_seed_images_preprocess():
    """The oracle: every unmutated seed file and tiny image passes."""
    assert len(SEED_IMAGES) >= 14
    for pre in image_preprocessors():
        for data in SEED_IMAGES:
            assert check_image(pre, data) == "ok"
        for mode in TINY_MODES:
            assert check_image(pre, tiny_image(mode, 2, 3, b"\x10\x80\xff")) == "ok", mode


@needs_pil
@fuzz_settings(300)
@given(case=image_cases)
def test_image_decoder(case):
    item = image_item(case)
    for pre in image_preprocessors():
        check_image(pre, item)


# =======================================================================================
# Collection filters
# =======================================================================================

from cliprt.collection import Collection  # noqa: E402

COLUMNS = ("key", "path", "size", "mtime")
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
_json_scalars = st.one_of(st.none(), st.booleans(), INT64, st.integers(-3, 3),
                          st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
                          st.sampled_from(["", "a", "A", "1", "true", "null", "x'; DROP TABLE items; --", "%", "_"]))
_json_values = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3), max_leaves=6)
FIELD_NAMES = ["a", "b", "c", "a.b", "a.c", "b.a", "key", "path", "size", "mtime", "id", "meta", "x_1", "größe"]
_records = st.lists(
    st.fixed_dictionaries({
        "key": st.text(min_size=1, max_size=8),
        "path": st.none() | st.text(max_size=10) | st.sampled_from(["/d/dogs/1.jpg", "/d/DOGS/2.JPG", "/d/cats/3.png"]),
        "size": st.none() | INT64 | st.integers(0, 5),
        "mtime": st.none() | st.floats(allow_nan=True) | st.integers(0, 5),
        "meta": st.none() | st.dictionaries(st.sampled_from(FIELD_NAMES), _json_values, max_size=4),
    }), min_size=1, max_size=6, unique_by=lambda r: r["key"])
_where_scalars = st.one_of(
    _json_scalars, st.floats(), st.text(max_size=300), st.text(max_size=2).map(lambda s: s * 5000),
    st.integers(), st.binary(max_size=4), st.sampled_from([np.int64(1), np.float32(0.5), np.bool_(True), 1 << 64,
                                                           "\ud800", float("nan"), float("inf"), b"a"]),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
_where_values = st.one_of(_where_scalars, st.lists(_where_scalars | st.lists(st.integers(), max_size=2), max_size=4),
                          st.tuples(_where_scalars, _where_scalars), st.frozensets(st.integers(-2, 2), max_size=3))
_field_names = st.one_of(st.sampled_from(FIELD_NAMES + ["", ".", "a..b", "a.", ".a", "a-b", "a b", "a'", "$", "a[0]",
                                                        "x'); DROP TABLE items; --", "é.ü"]),
                         st.text(max_size=6), st.integers(0, 3))
_path_likes = st.none() | st.sampled_from(["%", "%/dogs/%", "%.JPG", "_", "%\x00%", "\ud800", "a" * 60000]) \
    | st.text(max_size=8) | st.binary(max_size=3)

_MISSING = object()


def _valid_field(field) -> bool:
    return isinstance(field, str) and re.fullmatch(r"\w+(\.\w+)*", field) is not None


def _valid_scalar(v) -> bool:
    if v is None or isinstance(v, (bool, np.bool_, float, np.floating)):
        return True
    if isinstance(v, (int, np.integer)):
        return -(1 << 63) <= int(v) < (1 << 63)
    if isinstance(v, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in v)
    return False


def _values(v) -> list:
    return list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v]


def _lookup(rec: dict, field: str):
    if field in COLUMNS:
        return rec[field]
    cur = rec["meta"]
    for part in field.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _equal(stored, want) -> bool:
    if want is None:
        return stored is _MISSING or stored is None
    if stored is _MISSING or stored is None:
        return False
    if isinstance(want, str):
        return isinstance(stored, str) and stored == want
    if isinstance(stored, (bool, int, float)):
        return stored == want
    return False


def _like(path, pattern: str) -> bool:
    if not isinstance(path, str):
        return False
    rx = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, path, re.ASCII | re.IGNORECASE | re.DOTALL) is not None


def reference_select(stored: Dict[int, dict], where, path_like) -> Tuple[str, Optional[np.ndarray]]:
    """("ok", ids) as select() must answer, or (exception class name, None) for bad input."""
    for field, value in where.items():
        if not _valid_field(field):
            return "ValueError", None
        if not all(_valid_scalar(v) for v in _values(value)):
            return "ValueError", None
    if path_like is not None:
        if not isinstance(path_like, str):
            return "TypeError", None
        if "\x00" in path_like or not _valid_scalar(path_like) or len(path_like.encode()) > 50000:
            return "ValueError", None
    ids = [i for i, rec in sorted(stored.items())
           if all(any(_equal(_lookup(rec, f), v) for v in _values(value)) for f, value in where.items())
           and (path_like is None or _like(rec["path"], path_like))]
    return "ok", np.asarray(ids, np.int64)


def check_select(col: Collection, stored: Dict[int, dict], where, path_like) -> str:
    want, want_ids = reference_select(stored, where, path_like)
    try:
        got = col.select(where, path_like)
    except (ValueError, TypeError) as e:
        if type(e).__name__ != want and not (want == "ValueError" and isinstance(e, ValueError)):
            raise ContractViolation(f"select raised {type(e).__name__}: {e}; the reference says {want}") from e
        return want
    except BaseException as e:
        raise ContractViolation(f"select raised {type(e).__name__}: {e}") from e
    if want != "ok":
        raise ContractViolation(f"select returned {got.tolist()}; the reference says {want}")
    if got.dtype != np.int64 or got.tolist() != want_ids.tolist():
        raise ContractViolation(f"select returned {got.tolist()} ({got.dtype}), the reference {want_ids.tolist()}")
    return "ok"


def make_collection(d: str, records: List[dict]) -> Tuple[Collection, Dict[int, dict]]:
    """A collection of `records` (dim 2) and its stored records by id, as metadata() reads them."""
    col = Collection.create(d, model="fuzz", dim=2)
    emb = np.tile(np.asarray([[1.0, 0.5]], np.float32), (len(records), 1))
    ids = col.add(emb, records)
    return col, col.metadata(ids)


_queries = st.lists(st.tuples(st.dictionaries(_field_names, _where_values, max_size=3), _path_likes),
                    min_size=1, max_size=6)


@fuzz_settings(50)
@given(records=_records, queries=_queries)
def test_collection_select(records, queries):
    work = tempfile.mkdtemp(prefix="cliprt-fuzz-")
    try:
        col, stored = make_collection(os.path.join(work, "c"), records)
        try:
            for where, path_like in queries:
                check_select(col, stored, where, path_like)
        finally:
            col.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_select_examples(tmp_path):
    """The cases the fuzzing found, as plain examples."""
    records = [
        {"key": "a", "path": "/d/dogs/1.jpg", "size": 5, "mtime": 1.5, "meta": {"n": 1, "t": "5", "o": {"x": 1}}},
        {"key": "b", "path": "/d/DOGS/2.JPG", "size": 6, "mtime": None, "meta": {"n": True, "t": None}},
        {"key": "5", "path": "5", "size": None, "mtime": 5.0, "meta": {"n": 1.0, "o": [1, 2]}},
        {"key": "d", "path": None, "size": 7, "mtime": 2.0, "meta": None},
    ]
    col, stored = make_collection(str(tmp_path / "c"), records)
    ids = {r["key"]: int(i) for i, r in stored.items()}

    def sel(*args, **kw):
        got = set(col.select(*args, **kw).tolist())
        return sorted(k for k, v in ids.items() if v in got)

    assert sel({"n": 1}) == ["5", "a", "b"]             # 1 == 1.0 == True, as in Python
    assert sel({"t": 5}) == [] and sel({"t": "5"}) == ["a"]
    assert sel({"size": "5"}) == [] and sel({"size": 5}) == ["a"]   # no column affinity
    assert sel({"key": 5}) == [] and sel({"key": "5"}) == ["5"]
    assert sel({"t": None}) == ["5", "b", "d"]          # null or absent
    assert sel({"mtime": None}) == ["b"]
    assert sel({"o": '{"x":1}'}) == []                  # an object is not its JSON text
    assert sel({"o.x": 1}) == ["a"]
    assert sel({"n": [np.int64(1), np.float32(7)]}) == ["5", "a", "b"]
    assert sel({"n": []}) == [] and sel({"n": float("nan")}) == []
    assert sel(path_like="%/dogs/%") == ["a", "b"]      # ASCII letters fold
    for bad in ({"n": {"a": 1}}, {"n": [[1]]}, {"n": b"x"}, {"n": 1 << 64}, {"n": "\ud800"}, {"a..b": 1},
                {"a'); DROP TABLE items; --": 1}, {3: 1}):
        with pytest.raises(ValueError) as ei:
            col.select(bad)
        assert not isinstance(ei.value, sqlite3.Error)
        field = next(iter(bad))
        assert repr(field) in str(ei.value), (bad, str(ei.value))
    with pytest.raises(TypeError):
        col.select([("n", 1)])
    with pytest.raises(TypeError):
        col.select(path_like=b"%")
    for pattern in ("%\x00", "a" * 50001):
        with pytest.raises(ValueError):
            col.select(path_like=pattern)
    col.close()


def test_select_over_meta_that_is_not_json(tmp_path):
    """NaN / Infinity are not JSON (SQLite's JSON functions refuse them): add() refuses such
    meta before changing anything, and select() over a database that holds some anyway (an
    older writer's) raises a ValueError saying so, not an sqlite3 error."""
    col, _ = make_collection(str(tmp_path / "c"), [{"key": "a", "meta": {"x": 1.5}}])
    with pytest.raises(ValueError, match="'b'.*JSON"):
        col.add(np.ones((2, 2), np.float32), [{"key": "b", "meta": {"x": float("nan")}}, {"key": "c"}])
    assert len(col) == 1 and col.select({"x": 1.5}).tolist() == [0]
    col._db.execute("UPDATE items SET meta = ? WHERE id = 0", ('{"x": NaN}',))
    with pytest.raises(ValueError, match="not valid JSON") as ei:
        col.select({"y": 1})
    assert not isinstance(ei.value, sqlite3.Error)
    assert col.select({"size": None}).tolist() == [0]   # column filters still work
    col.close()
