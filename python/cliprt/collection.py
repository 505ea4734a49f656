"""A collection: embeddings in a cliprt.Index plus their metadata in SQLite, in one directory.

    DIR/collection.json   format, model, dim, metric, storage
    DIR/vectors/          the cliprt.Index (segments, deletion bitmaps, MANIFEST)
    DIR/metadata.sqlite   items(id, key, path, size, mtime, meta JSON), failures(key, error, ...)
    DIR/LOCK              the writers' lock

Every item has a unique text `key` (for files: the absolute path) and an int64 id shared by
the index and the metadata table.

Readers and the writer. Any number of processes may read a collection while one writes it.
`Collection.open` takes no lock and writes nothing. The first change (`add`, `add_failures`,
`commit`, `ingest`, or `begin_writing()`) makes the object the collection's writer: it takes
DIR/LOCK (waiting up to `timeout`, then cliprt.LockedError naming the holder's pid), loads
the index again as it is on disk now, and holds the lock until `close()`. `create` is a
writer from the start.

Crashes. `commit()` saves the index first and then commits the metadata, so a crash between
the two leaves the index ahead of the metadata: rows the metadata does not know of
("orphans"), and rows the metadata still names but the index has removed (the old vectors of
re-embedded items). Readers hide both: searches skip orphans and hits without metadata. The
next writer, under its lock, removes the orphans from the index and the items whose vectors
are gone from the metadata, so the next incremental run embeds those items again. Ids are
never reused: new ids start at the index's saved high-water mark (`Index.next_id`), which
already covers every id of a crashed commit.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import urllib.parse
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from .index import DEFAULT_LOCK_TIMEOUT, Index, _lock_timeout

__all__ = ["Collection", "CollectionError"]

FORMAT = "cliprt-collection"
VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,
    path TEXT,
    size INTEGER,
    mtime REAL,
    meta TEXT
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    path TEXT,
    size INTEGER,
    mtime REAL,
    error TEXT NOT NULL
);
"""
_COLUMNS = ("id", "key", "path", "size", "mtime", "meta")


class CollectionError(ValueError):
    """A collection directory that is missing, incomplete or does not fit the request."""


class Collection:
    def __init__(self, path: str, config: Dict[str, Any], index: Index, db: sqlite3.Connection, *,
                 mmap: bool = False, timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT, writer_lock=None):
        self.path = path
        self.config = config
        self.index = index
        self._db = db
        self._lock = threading.RLock()
        self._mmap = mmap
        self._timeout = timeout
        self._writer = writer_lock           # the held DIR/LOCK, or None while reading
        self._hidden = self._find_orphans() if writer_lock is None else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ open / create
    @classmethod
    def create(cls, path, *, model: str, dim: int, storage: str = "f32", metric: str = "cosine",
               timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> "Collection":
        """A new, empty collection at `path`, opened as its writer."""
        path = os.fspath(path)
        if os.path.exists(os.path.join(path, "collection.json")):
            raise CollectionError(f"a collection already exists at {path!r}")
        os.makedirs(path, exist_ok=True)
        lock = _core.DirectoryLock(path, _lock_timeout(timeout), "collection")
        if os.path.exists(os.path.join(path, "collection.json")):     # created while we waited
            lock.release()
            raise CollectionError(f"a collection already exists at {path!r}")
        index = Index(dim, metric=metric, storage=storage)
        config = {"format": FORMAT, "version": VERSION, "model": model, "dim": int(dim), "metric": metric,
                  "storage": storage}
        db = _connect(os.path.join(path, "metadata.sqlite"))
        self = cls(path, config, index, db, timeout=timeout, writer_lock=lock)
        self.commit()
        tmp = os.path.join(path, f"collection.json.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2)
        os.replace(tmp, os.path.join(path, "collection.json"))
        return self

    @classmethod
    def open(cls, path, mmap: bool = False, *, timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> "Collection":
        """Opens a collection for reading: no lock, no writes. It becomes the writer at its
        first change (see the module notes); `timeout` is how long that waits for the lock."""
        path = os.fspath(path)
        _lock_timeout(timeout)
        config = _read_config(path)
        index = Index.load(os.path.join(path, "vectors"), mmap=mmap)
        db = _connect(os.path.join(path, "metadata.sqlite"), read_only=True)
        return cls(path, config, index, db, mmap=mmap, timeout=timeout)

    @classmethod
    def open_or_create(cls, path, *, model: str, dim: int, storage: str = "f32",
                       metric: str = "cosine", timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT) -> "Collection":
        if os.path.isfile(os.path.join(os.fspath(path), "collection.json")):
            col = cls.open(path, timeout=timeout)
            if col.config["dim"] != dim:
                col.close()
                raise CollectionError(f"collection {os.fspath(path)!r} holds {col.config['dim']}-d embeddings, "
                                      f"the model gives {dim}-d")
            if col.config["model"] != model:
                col.close()
                raise CollectionError(f"collection {os.fspath(path)!r} was embedded with model "
                                      f"{col.config['model']!r}, not {model!r}")
            return col
        return cls.create(path, model=model, dim=dim, storage=storage, metric=metric, timeout=timeout)

    @property
    def writing(self) -> bool:
        """True once this object holds the collection's writer lock."""
        return self._writer is not None

    def begin_writing(self) -> None:
        """Makes this object the collection's writer now (the first change does it anyway):
        takes DIR/LOCK, reloads the index as it is on disk, and repairs what a crashed
        commit left (see the module notes). Raises cliprt.LockedError when another process
        writes the collection past the timeout."""
        with self._lock:
            if self._writer is not None:
                return
            if self._db is None:
                raise CollectionError(f"collection {self.path!r} is closed")
            lock = _core.DirectoryLock(self.path, _lock_timeout(self._timeout), "collection")
            try:
                index = Index.load(os.path.join(self.path, "vectors"), mmap=self._mmap)
                db = _connect(os.path.join(self.path, "metadata.sqlite"))
            except BaseException:
                lock.release()
                raise
            self._db.close()
            self.index, self._db, self._writer = index, db, lock
            self._hidden = np.zeros(0, np.int64)
            self._repair()

    def _item_ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self._db.execute("SELECT id FROM items")), np.int64)

    def _find_orphans(self) -> np.ndarray:
        """Index rows the metadata does not name (a reader hides them)."""
        stored = self.index.ids()
        if len(stored) == 0:
            return np.zeros(0, np.int64)
        return np.setdiff1d(stored, self._item_ids())

    def _repair(self) -> None:
        """The writer's clean-up of a crashed commit: orphan rows leave the index, items whose
        vectors the index no longer holds leave the metadata (they are embedded again)."""
        stored, named = self.index.ids(), self._item_ids()
        orphans = np.setdiff1d(stored, named)
        lost = np.setdiff1d(named, stored)
        if len(orphans) == 0 and len(lost) == 0:
            return
        if len(orphans):
            self.index.remove(orphans)
        self._db.executemany("DELETE FROM items WHERE id = ?", [(int(i),) for i in lost])
        self.commit()

    # ------------------------------------------------------------------ writing
    def next_id(self) -> int:
        """The next id to hand out: past the index's saved high-water mark and past every id
        the metadata names, so no id ever names two items, whatever crashed before."""
        row = self._db.execute("SELECT MAX(id) FROM items").fetchone()
        return max(self.index.next_id, (row[0] + 1) if row[0] is not None else 0)

    def add(self, embeddings: np.ndarray, records: Sequence[Dict[str, Any]]) -> np.ndarray:
        """Adds embeddings with one record each ({"key", "path"?, "size"?, "mtime"?, "meta"?});
        a key already present is replaced. Visible to searches at once, durable after commit()."""
        if len(records) != len(embeddings):
            raise ValueError(f"{len(records)} records for {len(embeddings)} embeddings")
        if len(records) == 0:
            return np.zeros(0, np.int64)
        # Every check before any change: a bad record or embedding leaves the collection as it was.
        keys = [r.get("key") if isinstance(r, dict) else None for r in records]
        if not all(isinstance(k, str) and k for k in keys):
            raise ValueError("every record must be a dict with a non-empty str 'key'")
        if len(set(keys)) != len(keys):
            raise ValueError("a key is given twice in one add")
        metas = [_meta_json(r) for r in records]
        with self._lock:
            self.begin_writing()
            old = self._ids_of(keys)
            start = self.next_id()
            ids = np.arange(start, start + len(records), dtype=np.int64)
            self.index.add(embeddings, ids)          # checks the embeddings; changes nothing if it raises
            if old:
                self.index.remove(np.fromiter(old.values(), np.int64))
                self._db.executemany("DELETE FROM items WHERE key = ?", [(k,) for k in old])
            self._db.executemany(
                "INSERT INTO items (id, key, path, size, mtime, meta) VALUES (?, ?, ?, ?, ?, ?)",
                [(int(i), r["key"], r.get("path"), r.get("size"), r.get("mtime"), m)
                 for i, r, m in zip(ids, records, metas)])
            self._db.executemany("DELETE FROM failures WHERE key = ?", [(k,) for k in keys])
            return ids

    def remove(self, ids) -> np.ndarray:
        """Removes items by id from the index and the metadata; returns the ids that were
        present (ids not in the collection are ignored). Hidden from searches at once,
        durable after commit(); a crash between the index save and the metadata commit is
        finished by the next writer's repair (the metadata of a removed vector goes)."""
        want = np.unique(np.asarray(ids, np.int64).reshape(-1))
        with self._lock:
            self.begin_writing()
            present = np.asarray(sorted(self.metadata(want)), np.int64)
            if len(present) == 0:
                return present
            stored = np.asarray([i for i in present if int(i) in self.index], np.int64)
            if len(stored):
                self.index.remove(stored)
            self._db.executemany("DELETE FROM items WHERE id = ?", [(int(i),) for i in present])
            return present

    def add_failures(self, failures: Sequence[Dict[str, Any]]) -> None:
        with self._lock:
            self.begin_writing()
            self._db.executemany(
                "INSERT OR REPLACE INTO failures (key, path, size, mtime, error) VALUES (?, ?, ?, ?, ?)",
                [(f["key"], f.get("path"), f.get("size"), f.get("mtime"), f["error"]) for f in failures])

    def ingest(self, source, encoder, **kwargs):
        """Embeds what is new or changed in ``source`` into this collection and commits:
        ``cliprt.ingest(self, source, encoder, **kwargs)`` (returns its IngestReport)."""
        from .ingestion import ingest

        self.begin_writing()
        return ingest(self, source, encoder, **kwargs)

    def commit(self) -> None:
        """Index first, metadata second (see the module notes)."""
        with self._lock:
            self.begin_writing()
            self.index.save(os.path.join(self.path, "vectors"), timeout=self._timeout)
            self._db.commit()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.index) - len(self._hidden)

    def searchable(self, where: Optional[Dict[str, Any]] = None, path_like: Optional[str] = None
                   ) -> Optional[np.ndarray]:
        """The ids a search may return: None for every row of the index, else an id array
        (the `select` of the filters, less the rows a reader hides)."""
        if where or path_like:
            allow = self.select(where, path_like)
        elif len(self._hidden):
            allow = self.index.ids()
        else:
            return None
        return np.setdiff1d(allow, self._hidden) if len(self._hidden) else allow

    def _ids_of(self, keys: Sequence[str]) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for i in range(0, len(keys), 500):
            part = list(keys[i:i + 500])
            q = f"SELECT key, id FROM items WHERE key IN ({','.join('?' * len(part))})"
            out.update({k: int(v) for k, v in self._db.execute(q, part)})
        return out

    def known(self) -> Dict[str, Tuple[Optional[int], Optional[float], bool]]:
        """key -> (size, mtime, failed) of every item embedded or failed so far."""
        out = {k: (s, m, False) for k, s, m in self._db.execute("SELECT key, size, mtime FROM items")}
        for k, s, m in self._db.execute("SELECT key, size, mtime FROM failures"):
            out.setdefault(k, (s, m, True))
        return out

    def failures(self) -> List[Dict[str, Any]]:
        return [dict(zip(("key", "path", "size", "mtime", "error"), r))
                for r in self._db.execute("SELECT key, path, size, mtime, error FROM failures ORDER BY key")]

    def metadata(self, ids: Iterable[int]) -> Dict[int, Dict[str, Any]]:
        ids = [int(i) for i in ids if int(i) >= 0]
        out: Dict[int, Dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            q = f"SELECT {', '.join(_COLUMNS)} FROM items WHERE id IN ({','.join('?' * len(part))})"
            for row in self._db.execute(q, part):
                rec = dict(zip(_COLUMNS, row))
                rec["meta"] = json.loads(rec["meta"]) if rec["meta"] else {}
                out[rec["id"]] = rec
        return out

    def select(self, where: Optional[Dict[str, Any]] = None, path_like: Optional[str] = None) -> np.ndarray:
        """Ids whose metadata matches every condition (int64, in id order).

        `where` = {field: value}: a field is one of the columns key / path / size / mtime or a
        field of the JSON `meta`, dotted for nested objects ("exif.model"); each part is made
        of letters, digits and underscores. A value is a str, int, float, bool or None, or a
        list / tuple / set of them (any of). Equality is Python's: 1 matches 1, 1.0 and true;
        a string matches only a string; None matches a field that is null or absent; NaN
        matches nothing. `path_like` = an SQL LIKE pattern on the path ('%/dogs/%'; ASCII
        letters case-insensitive). Raises ValueError naming the field for a bad field name
        or value, TypeError when `where` is not a mapping or `path_like` not a str."""
        import math
        import numbers
        from collections.abc import Mapping

        if where is not None and not isinstance(where, Mapping):
            raise TypeError(f"where must be a dict of field -> value, got {type(where).__name__}")
        clauses: List[str] = []
        params: List[Any] = []
        for field, value in (where or {}).items():
            if not isinstance(field, str) or not all(
                    part and all(c == "_" or c.isalnum() for c in part) for part in field.split(".")):
                raise ValueError(f"bad metadata field name {field!r}: expected letters, digits and underscores, "
                                 "dotted for nested fields")
            values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
            null, texts, nums = False, [], []
            for v in values:
                if v is None:
                    null = True
                elif isinstance(v, str):
                    try:
                        v.encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValueError(f"where[{field!r}]: the string {v!r} is not valid Unicode "
                                         "(lone surrogate)") from None
                    texts.append(v)
                elif isinstance(v, (bool, np.bool_)):
                    nums.append(int(v))
                elif isinstance(v, numbers.Integral):
                    if not -(1 << 63) <= int(v) < (1 << 63):
                        raise ValueError(f"where[{field!r}]: the integer {int(v)} does not fit in 64 bits")
                    nums.append(int(v))
                elif isinstance(v, numbers.Real):
                    if not math.isnan(float(v)):     # NaN equals nothing
                        nums.append(float(v))
                else:
                    raise ValueError(f"where[{field!r}]: unsupported value {v!r} of type {type(v).__name__} "
                                     "(expected str, int, float, bool or None, or a list of them)")
            alts: List[str] = []
            if field in ("key", "path", "size", "mtime"):
                # "+column" drops the column's type affinity, so '5' never equals 5
                if null:
                    alts.append(f"{field} IS NULL")
                if texts:
                    alts.append(f"(typeof({field}) = 'text' AND {field} IN ({','.join('?' * len(texts))}))")
                    params += texts
                if nums:
                    alts.append(f"+{field} IN ({','.join('?' * len(nums))})")
                    params += nums
            else:
                json_path = "$." + field
                if null:
                    alts.append("coalesce(json_type(meta, ?), 'null') = 'null'")
                    params.append(json_path)
                if texts:
                    alts.append(f"(json_type(meta, ?) = 'text' AND json_extract(meta, ?) IN ({','.join('?' * len(texts))}))")
                    params += [json_path, json_path] + texts
                if nums:
                    alts.append(f"json_extract(meta, ?) IN ({','.join('?' * len(nums))})")
                    params += [json_path] + nums
            clauses.append("(" + " OR ".join(alts) + ")" if alts else "0")
        if path_like is not None:
            if not isinstance(path_like, str):
                raise TypeError(f"path_like must be a str, got {type(path_like).__name__}")
            like_limit = (self._db.getlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH)
                          if hasattr(self._db, "getlimit") else 50000)
            if "\0" in path_like:
                raise ValueError("path_like must not contain NUL characters")
            try:
                nbytes = len(path_like.encode("utf-8"))
            except UnicodeEncodeError:
                raise ValueError(f"path_like {path_like!r} is not valid Unicode (lone surrogate)") from None
            if nbytes > like_limit:
                raise ValueError(f"path_like is {nbytes} bytes long, more than SQLite's {like_limit}")
            clauses.append("path LIKE ?")
            params.append(path_like)
        max_params = (self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
                      if hasattr(self._db, "getlimit") else 999)
        if len(params) > max_params:
            raise ValueError(f"where holds {len(params)} values and field paths, more than SQLite's {max_params}")
        q = "SELECT id FROM items" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id"
        try:
            rows = self._db.execute(q, params).fetchall()
        except sqlite3.OperationalError as e:
            if "malformed JSON" not in str(e):
                raise
            raise CollectionError("the meta of an item in this collection is not valid JSON (NaN or Infinity "
                                  "values?), so it cannot be filtered on") from None
        return np.fromiter((r[0] for r in rows), np.int64, len(rows))

    def close(self) -> None:
        """Closes the metadata database and gives up the writer lock (uncommitted changes are
        discarded)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._writer is not None:
                self._writer.release()
                self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _meta_json(record: Dict[str, Any]) -> Optional[str]:
    """A record's `meta` as strict JSON (SQLite's JSON functions refuse NaN and Infinity)."""
    meta = record.get("meta")
    if meta is None:
        return None
    try:
        return json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta of {record['key']!r} is not storable as JSON: {e}") from None


def _read_config(path: str) -> Dict[str, Any]:
    cfg_path = os.path.join(path, "collection.json")
    if not os.path.isfile(cfg_path):
        raise CollectionError(f"no collection at {path!r} (collection.json missing); create one with "
                              "`cliprt embed SRC --model M --index DIR`")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise CollectionError(f"{cfg_path!r} is unreadable: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("version") != VERSION:
        raise CollectionError(f"{cfg_path!r} is not a cliprt collection (version {VERSION})")
    return config


def _connect(path: str, read_only: bool = False) -> sqlite3.Connection:
    """The metadata database; a reader's connection is read-only (SQLite itself may still
    keep its shared-memory file beside the database)."""
    try:
        if read_only:
            db = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro", uri=True,
                                 check_same_thread=False)
            db.execute("SELECT 1 FROM items LIMIT 1").fetchall()
        else:
            db = sqlite3.connect(path, check_same_thread=False, timeout=30)
            db.executescript(_SCHEMA)
            db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as e:
        raise CollectionError(f"metadata database {path!r} is unreadable: {e}") from None
    return db
