"""What the sources refuse to read, and how the ingest records it: files that are not
regular files (FIFOs, sockets, devices, directories, links to them) are never opened, and
items larger than max_item_bytes (a file's size, a tar member's declared size) are never
read; each is a failure of the run and of the collection, under the incremental rules."""
from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from cliprt.sources import DEFAULT_MAX_ITEM_BYTES, SourceItem, check_item, iter_source

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="os.mkfifo is POSIX-only")


def _jpeg(path, seed: int, size=(40, 44)) -> bytes:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(path)
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        _jpeg(root / f"{i}.jpg", i, size=(30 + 12 * i, 44))    # of growing sizes
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("torch", reason="needs the 'export' extra to build the test model")
    pytest.importorskip("open_clip", reason="needs the 'export' extra to build the test model")
    import _tiny_clip

    return _tiny_clip.exported(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def encoder(model):
    from cliprt.encode import Encoder

    return Encoder.load(model)


class SpyEncoder:
    """The encoder, recording every item handed to its image pipeline."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.seen = []

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def iter_images(self, items, **kwargs):
        def spy():
            for it in items:
                self.seen.append(it)
                yield it
        return self._encoder.iter_images(spy(), **kwargs)


def _collection(tmp_path, encoder, name="col"):
    from cliprt.collection import Collection

    return Collection.create(tmp_path / name, model="tiny", dim=encoder.dim)


# ------------------------------------------------------------------ sources, no model needed

@needs_fifo
def test_sources_refuse_what_is_not_a_regular_file_without_opening_it(photos, tmp_path):
    os.mkfifo(photos / "b.jpg")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(photos / "s.png"))
    os.symlink("/dev/null", photos / "dev.jpg")                 # a link to a character device
    os.symlink(photos / "b.jpg", photos / "link-to-fifo.jpg")
    os.symlink(tmp_path / "nowhere.jpg", photos / "dangling.jpg")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", photos / "dirlink.jpg")  # a link to a directory, not followed
    (photos / "real.jpg").mkdir()                               # a real directory is walked
    _jpeg(photos / "real.jpg" / "inside.jpg", 9)
    try:
        items = {os.path.basename(it.key): it for it in iter_source(photos)}
    finally:
        sock.close()
    ok = {"0.jpg", "1.jpg", "2.jpg", "inside.jpg"}
    assert set(items) == ok | {"b.jpg", "s.png", "dev.jpg", "link-to-fifo.jpg", "dangling.jpg", "dirlink.jpg"}
    for name in ok:
        assert items[name].error is None and items[name].data == items[name].key
    why = {name: it.error for name, it in items.items() if name not in ok}
    assert all(it.data == b"" for name, it in items.items() if name not in ok)
    assert "FIFO" in why["b.jpg"] and "not opened" in why["b.jpg"]
    assert "socket" in why["s.png"]
    assert "character device" in why["dev.jpg"] and "symbolic link" in why["dev.jpg"]
    assert "FIFO" in why["link-to-fifo.jpg"] and "symbolic link" in why["link-to-fifo.jpg"]
    assert "missing file" in why["dangling.jpg"]
    assert "directory" in why["dirlink.jpg"]
    # stat'ed, not opened: the FIFO's size and mtime are there for the incremental rules
    assert items["b.jpg"].size == 0 and items["b.jpg"].mtime == os.stat(photos / "b.jpg").st_mtime

    # a file list naming a FIFO and a directory; a FIFO given as the source itself
    lst = tmp_path / "list.txt"
    lst.write_text(f"{photos / '0.jpg'}\n{photos / 'b.jpg'}\n{photos / 'real.jpg'}\n")
    listed = list(iter_source(lst))
    assert [it.error is None for it in listed] == [True, False, False]
    assert "FIFO" in listed[1].error and "a directory" in listed[2].error
    (single,) = iter_source(os.fspath(photos / "b.jpg"))
    assert "FIFO" in single.error and single.data == b""


def test_file_over_the_cap_is_refused_by_its_size(photos):
    sizes = {os.path.basename(p): os.path.getsize(p) for p in map(os.fspath, photos.iterdir())}
    assert len(set(sizes.values())) == 3
    cap = sorted(sizes.values())[1]                     # the smallest two fit, the largest does not
    items = {os.path.basename(it.key): it for it in iter_source(photos, max_item_bytes=cap)}
    for name, it in items.items():
        if sizes[name] > cap:
            assert it.error == f"{it.path!r}: {sizes[name]} bytes, more than max_item_bytes={cap}; not read"
            assert it.data == b"" and it.size == sizes[name]
        else:
            assert it.error is None
    assert sum(it.error is not None for it in items.values()) == 1
    with pytest.raises(ValueError, match="max_item_bytes"):
        list(iter_source(photos, max_item_bytes=0))
    # items from the caller: a path over the cap, bytes over the cap
    data = (photos / "0.jpg").read_bytes()
    assert check_item(SourceItem("k", data, "k", len(data), 1.0), len(data)).error is None
    refused = check_item(SourceItem("k", data, "k", len(data), 1.0), len(data) - 1)
    assert refused.data == b"" and "more than max_item_bytes" in refused.error and refused.size == len(data)
    path = os.fspath(photos / "0.jpg")
    assert "more than" in check_item(SourceItem("p", path, path, None, None), len(data) - 1).error
    assert DEFAULT_MAX_ITEM_BYTES == 64 << 20


class _Zeros(io.RawIOBase):
    """`n` zero bytes, produced as they are read (a big tar member without holding it)."""

    def __init__(self, n: int):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def _shard(path, members):
    """A tar.gz of (name, bytes or a size of zeros), compressed fast."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if isinstance(content, int):
                info.size = content
                tf.addfile(info, io.BufferedReader(_Zeros(content), 1 << 20))
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return path


BIG = 300 << 20        # 300 MiB of zeros: about 300 KB once gzipped


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bomb")
    small = _jpeg(folder / "small.jpg", 3)
    return _shard(folder / "bomb.tar.gz", [("s/a.jpg", small), ("s/big.jpg", BIG), ("s/b.jpg", small)]), small


def test_tar_member_over_the_cap_is_not_read(bomb, monkeypatch):
    shard, small = bomb
    assert os.path.getsize(shard) < 2 << 20
    extracted = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile",
                        lambda self, member: (extracted.append(getattr(member, "name", member)), real(self, member))[1])
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        items = [(it.key.split("::")[1], it.error, len(it.data)) for it in iter_source(shard)]
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(n, e is None, k) for n, e, k in items] == [("s/a.jpg", True, len(small)), ("s/big.jpg", False, 0),
                                                       ("s/b.jpg", True, len(small))]
    assert f"{BIG} bytes, more than max_item_bytes={DEFAULT_MAX_ITEM_BYTES}; not read" in items[1][1]
    assert extracted == ["s/a.jpg", "s/b.jpg"]              # the big member is never extracted
    assert peak < 32 << 20, f"reading the shard peaked at {peak / 2**20:.0f} MiB"
    assert seconds < 30


def test_damaged_tar_shard_is_failures_not_a_crash(tmp_path):
    small = _jpeg(tmp_path / "x.jpg", 5)
    whole = _shard(tmp_path / "whole.tar.gz", [(f"s/{i}.jpg", os.urandom(150_000) if i else small)
                                               for i in range(3)]).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    items = list(iter_source(cut))
    assert items[0].error is None and items[0].data == small
    assert items[-1].error is not None and "truncated or corrupt" in items[-1].error
    assert all(it.error is None for it in items[:-1])
    # a non-file member named like an image is refused, not skipped without a word
    with tarfile.open(tmp_path / "links.tar", "w") as tf:
        info = tarfile.TarInfo("s/link.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "s/0.jpg"
        tf.addfile(info)
    (item,) = iter_source(tmp_path / "links.tar")
    assert "symbolic link" in item.error and item.data == b""


# ------------------------------------------------------------------ ingest and the CLI

def test_ingest_records_refused_items_and_never_hands_them_to_the_encoder(encoder, photos, tmp_path):
    import cliprt

    os.symlink("/dev/null", photos / "dev.jpg")
    (photos / "dir.jpg").mkdir()
    lst = tmp_path / "list.txt"
    names = ["0.jpg", "1.jpg", "2.jpg", "dev.jpg", "dir.jpg"]
    lst.write_text("".join(f"{photos / n}\n" for n in names))
    big = max(names[:3], key=lambda n: os.path.getsize(photos / n))
    cap = os.path.getsize(photos / big) - 1
    col = _collection(tmp_path, encoder)
    spy = SpyEncoder(encoder)
    ticks = []
    report = cliprt.ingest(col, lst, spy, max_item_bytes=cap, progress=ticks.append)
    assert (report.embedded, report.failed, report.skipped, report.total) == (2, 3, 0, 2) and sum(ticks) == 5
    refused = {os.fspath(photos / n) for n in (big, "dev.jpg", "dir.jpg")}
    assert {f["path"] for f in report.failures} == refused
    assert not refused & set(spy.seen) and len(spy.seen) == 2
    assert {f["path"] for f in col.failures()} == refused
    assert report.to_json()["failed"] == 3
    # a rerun skips the known failures; retry_failed records them again, still unread
    report = cliprt.ingest(col, lst, spy, max_item_bytes=cap)
    assert (report.embedded, report.failed, report.skipped) == (0, 0, 5)
    report = cliprt.ingest(col, lst, spy, max_item_bytes=cap, retry_failed=True)
    assert (report.embedded, report.failed, report.skipped) == (0, 3, 2)
    # a larger cap and retry_failed: the big photo is embedded, its failure gone
    report = cliprt.ingest(col, lst, spy, retry_failed=True)
    assert (report.embedded, report.failed, report.total) == (1, 2, 3)
    assert {f["path"] for f in col.failures()} == refused - {os.fspath(photos / big)}
    # items from the caller are checked the same way
    data = (photos / "0.jpg").read_bytes()
    spy.seen.clear()
    report = col.ingest([SourceItem("mem::x", data, "mem::x", len(data), 1.0),
                         SourceItem("mem::dev", os.fspath(photos / "dev.jpg"), "mem::dev", None, None)],
                        spy, max_item_bytes=len(data) - 1)
    assert (report.embedded, report.failed) == (0, 2) and spy.seen == []
    col.close()


def test_only_refused_items_is_a_report_not_an_error(encoder, tmp_path):
    import cliprt

    folder = tmp_path / "odd"
    folder.mkdir()
    os.symlink("/dev/null", folder / "dev.jpg")
    col = _collection(tmp_path, encoder)
    report = cliprt.ingest(col, folder, encoder)
    assert (report.embedded, report.failed, report.total) == (0, 1, 0)
    assert len(col.failures()) == 1
    col.close()


def test_tar_bomb_through_the_ingest(encoder, bomb, tmp_path):
    shard, _ = bomb
    col = _collection(tmp_path, encoder)
    spy = SpyEncoder(encoder)
    report = col.ingest(shard, spy)
    assert (report.embedded, report.failed) == (2, 1)
    assert report.failures[0]["path"] == f"{shard}::s/big.jpg" and report.failures[0]["size"] == BIG
    assert all(len(d) < 1 << 20 for d in spy.seen)
    col.close()


@needs_fifo
def test_embed_with_a_fifo_in_the_folder_finishes(model, photos, tmp_path):
    """`cliprt embed` used to open the FIFO and wait for a writer forever: run in a child
    process with a timeout, a regression fails here instead of hanging the suite."""
    from _cliprt_process import run_cliprt
    from cliprt.collection import Collection

    os.mkfifo(photos / "b.jpg")
    col = tmp_path / "col"
    proc = run_cliprt("embed", photos, "--model", model, "--index", col, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert (s["embedded"], s["failed"], s["total"]) == (3, 1, 3)
    (failure,) = s["failures"]
    assert failure["path"] == os.fspath(photos / "b.jpg") and "FIFO" in failure["error"]
    with Collection.open(col) as c:
        assert [f["path"] for f in c.failures()] == [os.fspath(photos / "b.jpg")]
    # the known failure is skipped next time; --retry-failed refuses it again, still unopened
    proc = run_cliprt("embed", photos, "--model", model, "--index", col, "--json", "--retry-failed", timeout=120)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert (s["embedded"], s["failed"], s["skipped"]) == (0, 1, 3)


def test_embed_max_item_bytes_option(model, photos, tmp_path, capsys):
    from cliprt import cli

    rc = cli.main(["embed", os.fspath(photos), "--model", model, "--index", os.fspath(tmp_path / "col"),
                   "--json", "--max-item-bytes", "1K"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads(out)
    assert (s["embedded"], s["failed"]) == (0, 3)
    assert all("more than max_item_bytes=1024; not read" in f["error"] for f in s["failures"])
