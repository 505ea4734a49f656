"""Exact similarity index over quantized embedding storage (numpy in, numpy out; on a
CUDA device, device arrays in and out as well).

The heavy lifting is in the native core (``cliprt._core``): its ``Index`` and ``CudaIndex``
have the same methods and check every argument rule (k, rescore, threads, ids); this module
converts arguments to the types the core takes (numpy arrays, integers), picks the storage
defaults of the Python API and documents the contract. Device plumbing (device names, cupy /
torch / DLPack arrays, streams) is in ``cliprt._device``.
"""
from __future__ import annotations

import numbers
import os
from typing import Optional, Tuple

import numpy as np

from cliprt import _core, _device

STORAGES = ("f32", "f16", "bf16", "i8", "b1")
METRICS = ("cosine", "ip")
MAX_DIM = 65536

# Default oversampling R for exact rescoring from the kept float32 originals, per storage, at
# k = 10 (the code scan keeps k * R candidates, then the originals decide the top-k). The
# rule lives in the core (csrc/include/cliprt/index.h, default_rescore); the recall behind it
# is in benchmarks/results/search_cpu.md and b1_scoring.md.
DEFAULT_RESCORE = {s: _core.default_rescore(s, True, 10) for s in STORAGES}
# Storages that keep float32 originals unless told otherwise.
KEEPS_ORIGINALS = {"i8", "b1"}
# Seconds a save waits for another writer of the same directory (SQLite's default busy
# timeout is of the same order): a save holds the lock for the time of one save only.
DEFAULT_LOCK_TIMEOUT = 5.0

LockedError = _core.LockedError
ConflictError = _core.ConflictError


def build_info() -> dict:
    """What this build of cliprt contains: version, compiler, SIMD variants (compiled,
    available on this CPU, selected), whether CUDA kernels were compiled in and for which
    architectures."""
    info = dict(_core.build_info())
    archs = info.get("cuda_archs") or ""
    info["cuda_archs"] = [a for a in archs.split(",") if a]
    return info


def parse_storage_spec(spec: str) -> Tuple[str, Optional[int]]:
    """A storage with an optional rescoring factor: ``"i8"`` -> ``("i8", None)`` (the
    storage's default rescoring), ``"b1@0"`` -> ``("b1", 0)`` (codes only, no rescoring)."""
    name, at, factor = str(spec).partition("@")
    if name not in STORAGES or (at and not factor.isdigit()):
        raise ValueError(f"unknown storage {spec!r} (expected one of {', '.join(STORAGES)}, optionally @R for "
                         "the rescoring factor, e.g. b1@0)")
    return name, int(factor) if at else None


def _integer(value, name: str) -> int:
    """value as a Python int (numpy integers included; bool and float refused); the range is
    the core's to check."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    return int(value)


def _optional_integer(value, name: str) -> Optional[int]:
    return None if value is None else _integer(value, name)


def _lock_timeout(timeout: Optional[float]) -> float:
    """A lock timeout for the core: seconds >= 0, or -1 for no limit (None)."""
    if timeout is None:
        return -1.0
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    return float(timeout)


def _as_float_rows(x, dim: int, what: str) -> Tuple[np.ndarray, bool]:
    """(n, dim) C-contiguous float32 copy-or-view of x; second value: x was one vector."""
    a = np.asarray(_device.to_numpy(x))
    if a.dtype.kind != "f":
        raise TypeError(f"{what} must be floating point (float16, float32 or float64), got dtype {a.dtype}")
    single = a.ndim == 1
    if single:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n, dim) or 1-D (dim,), got shape {a.shape}")
    if a.shape[1] != dim:
        raise ValueError(f"{what} have dim {a.shape[1]}, index has dim {dim}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, rejected by the core
        return np.ascontiguousarray(a, dtype=np.float32), single


def _as_ids(ids, what: str) -> np.ndarray:
    a = np.asarray(_device.to_numpy(ids))
    if a.ndim == 0:
        a = a.reshape(1)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what} must fit in int64")
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.int64)


class Index:
    """Exact top-k similarity search over stored embeddings.

    ``metric``: ``"cosine"`` (vectors and queries are L2-normalised) or ``"ip"``.
    ``storage``: ``"f32"``, ``"f16"``, ``"bf16"``, ``"i8"`` (per-vector absmax int8) or
    ``"b1"`` (sign bits). ``keep_originals``: keep the float32 vectors beside the codes for
    exact rescoring; default True for i8 and b1, False otherwise. ``device``: ``"cpu"``
    (default) or ``"cuda"`` / ``"cuda:N"`` for an index held on a CUDA device (see ``to``).
    """

    def __init__(self, dim: int, metric: str = "cosine", storage: str = "f32",
                 keep_originals: Optional[bool] = None, device="cpu"):
        dim = _integer(dim, "dim")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if dim > MAX_DIM:
            raise ValueError(f"dim must be <= {MAX_DIM}, got {dim}")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: expected one of {METRICS}")
        if storage not in STORAGES:
            raise ValueError(f"unknown storage {storage!r}: expected one of {STORAGES}")
        if keep_originals is None:
            keep_originals = storage in KEEPS_ORIGINALS
        ordinal = _device.parse_device(device)
        if ordinal is None:
            self._ix = _core.Index(dim, metric, storage, bool(keep_originals))
        else:
            _device.require_cuda(ordinal)
            self._ix = _core.CudaIndex(ordinal, dim, metric, storage, bool(keep_originals))

    @classmethod
    def _from_core(cls, core) -> "Index":
        self = cls.__new__(cls)
        self._ix = core
        return self

    @property
    def _ordinal(self) -> Optional[int]:
        """The CUDA device ordinal of the core index, None on the CPU."""
        return self._ix.device

    # -- devices ------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """Where the index lives: ``"cpu"`` or ``"cuda:N"``."""
        return _device.device_name(self._ordinal)

    def to(self, device) -> "Index":
        """A copy of this index on `device` (``"cpu"``, ``"cuda"``, ``"cuda:N"``), or this
        index itself when it is already there. Codes, ids, deletions and kept originals
        move as they are (no re-encoding), so searches return the same results on either
        side. Raises RuntimeError when CUDA is unavailable (no device, or a build without
        CUDA)."""
        ordinal = _device.parse_device(device)
        if ordinal == self._ordinal:
            return self
        if ordinal is None:
            return Index._from_core(self._ix.to_index())
        _device.require_cuda(ordinal)
        host = self._ix if self._ordinal is None else self._ix.to_index()
        return Index._from_core(_core.CudaIndex.from_index(host, ordinal))

    # -- properties ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._ix.dim

    @property
    def metric(self) -> str:
        return self._ix.metric

    @property
    def storage(self) -> str:
        return self._ix.storage

    @property
    def keep_originals(self) -> bool:
        return self._ix.keep_originals

    @property
    def default_rescore(self) -> int:
        """Default oversampling R at k = 10 (see ``default_rescore_for``)."""
        return self.default_rescore_for(10)

    def default_rescore_for(self, k: int) -> int:
        """The oversampling R that ``search(..., rescore=None)`` uses for this k: 0 without
        originals; b1 keeps at least 640 candidates (R = max(4, ceil(640 / k))); the other
        storages ``DEFAULT_RESCORE``."""
        return _core.default_rescore(self.storage, self.keep_originals, _integer(k, "k"))

    def __len__(self) -> int:
        return len(self._ix)

    def __contains__(self, id_) -> bool:
        return self._ix.contains(int(id_))

    def __repr__(self) -> str:
        where = "" if self._ordinal is None else f", device={self.device!r}"
        return (f"cliprt.Index(dim={self.dim}, metric={self.metric!r}, storage={self.storage!r}, "
                f"keep_originals={self.keep_originals}, size={len(self)}{where})")

    @property
    def next_id(self) -> int:
        """One past the highest id this index has ever stored (removed ids included; saved
        with it): automatic ids start here, and no id below it is ever handed out again."""
        return int(self._ix.next_id)

    def ids(self) -> np.ndarray:
        """The ids of all stored vectors (int64), in storage order."""
        return self._ix.ids()

    # -- mutation -----------------------------------------------------------------------
    def _rows(self, x, what: str, handle: Optional[int]):
        """x as the core takes it: (n, dim) float32 numpy rows, or for a device index and a
        device array, device rows. Returns (rows, n, x was one vector)."""
        if self._ordinal is not None and _device.is_device_array(x):
            rows = _device.device_rows(x, self.dim, what, self._ordinal, handle)
            return rows, rows.n, rows.single
        a, single = _as_float_rows(x, self.dim, what)
        return a, a.shape[0], single

    def _stream(self, stream) -> Optional[int]:
        return None if self._ordinal is None else _device.stream_handle(stream)

    def add(self, vectors, ids=None, stream=None) -> np.ndarray:
        """Adds (n, dim) float vectors; returns their int64 ids (assigned when None).

        Raises ValueError on NaN/Inf, wrong shape, duplicate or negative ids; nothing is
        stored when a call is rejected. A device index also takes device arrays (encoded on
        the device, on `stream` when given); a CPU index copies them to the host."""
        handle = self._stream(stream)
        rows, n, _ = self._rows(vectors, "vectors", handle)
        id_arr = None
        if ids is not None:
            id_arr = _as_ids(ids, "ids")
            if id_arr.shape[0] != n:
                raise ValueError(f"got {id_arr.shape[0]} ids for {n} vectors")
        return self._ix.add(rows, id_arr, handle)

    def remove(self, ids) -> int:
        """Removes vectors by id; returns how many were removed (unknown ids are ignored)."""
        return int(self._ix.remove(_as_ids(ids, "ids")))

    # -- queries ------------------------------------------------------------------------
    def search(self, queries, k: int = 10, rescore=None, allow=None, threads=None, stream=None):
        """Top-k most similar stored vectors.

        queries: (q, dim) or (dim,) floats. Returns (scores float32, ids int64), each (q, k)
        — or (k,) for a single 1-D query — sorted by score descending, ties by smaller id;
        empty slots hold -inf and -1.

        rescore: oversampling factor R; the code scan keeps k*R candidates and rescores them
        exactly with the float32 originals. None uses the storage default
        (``Index.default_rescore_for(k)``), 0 or False turns it off.
        allow: optional ids; only those are candidates (applied inside the scan).
        threads: worker threads (default: all cores; small searches use one; CPU only).
        stream: device indexes only: the CUDA stream to run on (an int handle, a cupy or
        torch stream); by default a stream of the calling thread, ordered after the work
        that produced device queries. Device queries (cupy, torch, DLPack) give device
        results of the same library without a host round trip; host queries give numpy.
        The call returns when the results are complete.
        """
        handle = self._stream(stream)
        rows, _, single = self._rows(queries, "queries", handle)
        r = 0 if rescore is False else _optional_integer(rescore, "rescore")
        allow_arr = None if allow is None else _as_ids(allow, "allow")
        scores, ids = self._ix.search(rows, _integer(k, "k"), r, allow_arr, _optional_integer(threads, "threads"),
                                      handle)
        if single:
            return scores[0], ids[0]
        return scores, ids

    def reconstruct(self, ids) -> np.ndarray:
        """Dequantised float32 vectors of the given ids ((n, dim), or (dim,) for one id).
        Raises KeyError for an id that is not stored."""
        scalar = np.ndim(ids) == 0
        out = self._ix.reconstruct(_as_ids(ids, "ids"))
        return out[0] if scalar else out

    # -- persistence --------------------------------------------------------------------
    def save(self, path, timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> None:
        """Saves to directory `path`. Saving again to the directory the index was loaded
        from (or last saved to) appends new rows only. Crash-safe: an interrupted save
        leaves the previous state loadable. A device index is saved through a CPU copy.

        One writer at a time, across processes: the save holds the directory's LOCK file,
        waiting up to `timeout` seconds (None: no limit) for another writer's save to end,
        then raises cliprt.LockedError naming that writer's pid. When another writer has
        saved into the directory since this index was loaded from it (or saved to it), the
        save raises cliprt.ConflictError instead of dropping that writer's rows: load again
        and redo the changes. Loading takes no lock and never waits for a writer."""
        if self._ordinal is not None:
            self.to("cpu").save(path, timeout)
            return
        self._ix.save(os.fspath(path), _lock_timeout(timeout))

    @classmethod
    def load(cls, path, mmap: bool = True, verify: bool = True, device="cpu") -> "Index":
        """Opens an index directory. mmap=True maps the files instead of reading them;
        verify=True checks the checksums of everything except the float32 originals (use
        ``verify()`` for a full check). Corrupt files raise cliprt.FormatError. With a CUDA
        `device`, the loaded index is copied there."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no index at {path!r}")
        index = cls._from_core(_core.Index.load(path, bool(mmap), bool(verify)))
        return index.to(device)

    def verify(self) -> None:
        """Checks every checksum of a loaded index, originals included (a device index has
        no files: its codes were checked when they were loaded)."""
        if self._ordinal is None:
            self._ix.verify()
