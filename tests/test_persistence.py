"""Save/load round trips of cliprt.Index (format: csrc/include/cliprt/persist.h).

Every storage x metric x keep_originals combination is saved and loaded with mmap on and
off; search results (ids and scores) and reconstruct() output must be bit-identical before
and after. Appending saves, copies to another directory, removals, empty indexes and the
documented errors are covered too.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import cliprt
from cliprt import Index

STORAGES = ("f32", "f16", "bf16", "i8", "b1")
METRICS = ("cosine", "ip")
DIM = 37          # not a multiple of any group width: exercises the padded last group
N = 613           # not a multiple of the 16-row block
K = 10


def _data(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _queries(ix_data: np.ndarray, seed: int = 99, nrand: int = 7) -> np.ndarray:
    """Some stored vectors (exact hits) plus random queries."""
    rnd = np.random.default_rng(seed).standard_normal((nrand, ix_data.shape[1])).astype(np.float32)
    return np.concatenate([ix_data[[0, 5, len(ix_data) // 2, len(ix_data) - 1]], rnd])


def _search_variants(ix: Index):
    """Search settings to compare: defaults, no rescoring, explicit rescoring, a filter."""
    out = [dict(), dict(rescore=0), dict(k=1), dict(k=3 * K, threads=1)]
    if ix.keep_originals:
        out.append(dict(rescore=2))
    ids = np.sort(ix.ids())
    if len(ids):
        out.append(dict(allow=ids[::3]))
        out.append(dict(allow=ids[:5]))
    return out


def _results(ix: Index, q: np.ndarray):
    res = []
    for kw in _search_variants(ix):
        kw = dict(kw)
        k = kw.pop("k", K)
        res.append((repr(kw), k, *ix.search(q, k=k, **kw)))
    return res


def _assert_same_results(a: Index, b: Index, q: np.ndarray):
    ra, rb = _results(a, q), _results(b, q)
    assert [r[:2] for r in ra] == [r[:2] for r in rb]
    for (what, k, sa, ia), (_, _, sb, ib) in zip(ra, rb):
        np.testing.assert_array_equal(ia, ib, err_msg=f"ids differ for search(k={k}, {what})")
        np.testing.assert_array_equal(sa, sb, err_msg=f"scores differ for search(k={k}, {what})")


def _assert_same_index(a: Index, b: Index, q: np.ndarray):
    assert (b.dim, b.metric, b.storage, b.keep_originals) == (a.dim, a.metric, a.storage, a.keep_originals)
    assert len(b) == len(a)
    assert b.default_rescore == a.default_rescore
    np.testing.assert_array_equal(np.sort(a.ids()), np.sort(b.ids()))
    ids = a.ids()
    if len(ids):
        np.testing.assert_array_equal(a.reconstruct(ids), b.reconstruct(ids))
    _assert_same_results(a, b, q)


def _assert_segments_untouched(before, after):
    """Every segment file present before is still there with the same inode, mtime and size."""
    for name in before:
        if name.startswith("seg-"):
            assert after[name] == before[name], name


def _file_stats(d) -> dict:
    """name -> (inode, mtime_ns, size) for every file in directory d."""
    out = {}
    for name in os.listdir(d):
        st = os.stat(os.path.join(d, name))
        out[name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def _seg_files(d) -> set:
    return {n for n in os.listdir(d) if n.startswith("seg-") and n.endswith(".cseg")}


# ---------------------------------------------------------------------------------------
# Round trips over every configuration


@pytest.mark.parametrize("keep_originals", [False, True], ids=["nokeep", "keep"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("storage", STORAGES)
def test_round_trip_all_configs(tmp_path, storage, metric, keep_originals):
    x = _data(N, seed=1)
    ix = Index(DIM, metric=metric, storage=storage, keep_originals=keep_originals)
    ix.add(x)
    q = _queries(x)
    before = _results(ix, q)
    recon_before = ix.reconstruct(np.arange(N))
    d = tmp_path / "ix"
    ix.save(d)
    assert (d / "MANIFEST").is_file()
    for mmap in (True, False):
        loaded = Index.load(d, mmap=mmap)
        loaded.verify()
        assert loaded.keep_originals == keep_originals
        _assert_same_index(ix, loaded, q)
        after = _results(loaded, q)
        for (what, k, s0, i0), (_, _, s1, i1) in zip(before, after):
            np.testing.assert_array_equal(i0, i1, err_msg=f"mmap={mmap} search(k={k}, {what})")
            np.testing.assert_array_equal(s0, s1, err_msg=f"mmap={mmap} search(k={k}, {what})")
        np.testing.assert_array_equal(recon_before, loaded.reconstruct(np.arange(N)))
        # Single-vector forms behave the same.
        np.testing.assert_array_equal(ix.reconstruct(7), loaded.reconstruct(7))
        s_a, i_a = ix.search(q[0], k=4)
        s_b, i_b = loaded.search(q[0], k=4)
        np.testing.assert_array_equal(i_a, i_b)
        np.testing.assert_array_equal(s_a, s_b)
        if not keep_originals:
            with pytest.raises(ValueError):
                loaded.search(q, k=3, rescore=2)
        # verify=False loads the same data.
        _assert_same_index(ix, Index.load(d, mmap=mmap, verify=False), q)


@pytest.mark.parametrize("storage", ["f32", "i8", "b1"])
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_round_trip_explicit_sparse_ids(tmp_path, storage, mmap):
    rng = np.random.default_rng(5)
    x = _data(300, seed=5)
    ids = rng.choice(10**12, size=300, replace=False).astype(np.int64)
    ix = Index(DIM, storage=storage)
    ix.add(x, ids=ids)
    ix.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix", mmap=mmap)
    np.testing.assert_array_equal(loaded.ids(), ix.ids())
    for i in ids[:20]:
        assert int(i) in loaded
    _assert_same_index(ix, loaded, _queries(x))
    # Auto ids continue after the largest stored id.
    new = loaded.add(_data(2, seed=6))
    assert new.tolist() == [int(ids.max()) + 1, int(ids.max()) + 2]


def test_loaded_index_is_same_kind_of_object(tmp_path):
    ix = Index(DIM, metric="ip", storage="bf16")
    ix.add(_data(20))
    ix.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    assert isinstance(loaded, Index)
    assert "bf16" in repr(loaded) and "size=20" in repr(loaded)


def test_path_like_and_str_paths(tmp_path):
    ix = Index(DIM)
    ix.add(_data(10))
    ix.save(str(tmp_path / "a"))
    ix2 = Index.load(str(tmp_path / "a"))
    ix2.save(tmp_path / "b")
    assert len(Index.load(tmp_path / "b")) == 10


# ---------------------------------------------------------------------------------------
# Removals


@pytest.mark.parametrize("storage", ["f16", "i8", "b1"])
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_removed_ids_survive_save_load(tmp_path, storage, mmap):
    x = _data(N, seed=2)
    ix = Index(DIM, storage=storage)
    ix.add(x)
    q = np.concatenate([x[:40], _queries(x)])
    gone1 = np.arange(0, 40, 2)            # includes exact-hit queries' own rows
    assert ix.remove(gone1) == len(gone1)
    d = tmp_path / "ix"
    ix.save(d)
    loaded = Index.load(d, mmap=mmap)
    loaded.verify()
    assert len(loaded) == N - len(gone1)
    _assert_same_index(ix, loaded, q)
    for i in gone1:
        assert int(i) not in loaded
        with pytest.raises(KeyError):
            loaded.reconstruct(int(i))
    _, got = loaded.search(q, k=50)
    assert not np.isin(got, gone1).any()
    # Removing again is a no-op; removing more on the loaded index and re-saving in place.
    assert loaded.remove(gone1) == 0
    gone2 = np.arange(1, 40, 2)
    assert loaded.remove(gone2) == len(gone2)
    ix.remove(gone2)
    segs_before = _file_stats(d)
    loaded.save(d)
    segs_after = _file_stats(d)
    for name in _seg_files(d):
        if name in segs_before:
            assert segs_after[name] == segs_before[name], f"segment file {name} was rewritten"
    again = Index.load(d, mmap=mmap)
    again.verify()
    assert len(again) == N - 40
    _, got = again.search(q, k=50)
    assert not np.isin(got, np.arange(40)).any()
    _assert_same_index(ix, again, q)
    # Superseded deletion files are kept for one generation (a reader that read the previous
    # MANIFEST may still be opening them) and removed by the save after that.
    dels = sorted(n for n in os.listdir(d) if ".del-" in n)
    assert len(dels) == 2, sorted(os.listdir(d))
    again.save(d)
    assert sorted(n for n in os.listdir(d) if ".del-" in n) == dels[-1:], sorted(os.listdir(d))


def test_remove_everything_round_trips(tmp_path):
    x = _data(50)
    ix = Index(DIM, storage="i8")
    ix.add(x)
    ix.remove(np.arange(50))
    ix.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    loaded.verify()
    assert len(loaded) == 0
    assert loaded.ids().size == 0
    s, i = loaded.search(x[:3], k=4)
    assert (i == -1).all() and np.isneginf(s).all()
    # New auto ids do not reuse removed ids.
    assert loaded.add(x[:1]).tolist() == [50]


def test_removed_then_readded_id_round_trips(tmp_path):
    x = _data(30, seed=3)
    ix = Index(DIM)
    ix.add(x)
    ix.remove([4])
    ix.add(x[10:11] * -1.0, ids=[4])   # id 4 now names a different vector
    ix.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    assert len(loaded) == 30
    np.testing.assert_array_equal(loaded.reconstruct(4), ix.reconstruct(4))
    s, i = loaded.search(-x[10], k=1)
    assert i == 4


# ---------------------------------------------------------------------------------------
# Appending saves and copies


@pytest.mark.parametrize("storage", ["f32", "i8"])
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_add_to_loaded_then_save_appends(tmp_path, storage, mmap):
    d = tmp_path / "ix"
    x1, x2, x3 = _data(400, seed=11), _data(250, seed=12), _data(77, seed=13)
    ix = Index(DIM, storage=storage)
    ix.add(x1)
    ix.save(d)
    stats1 = _file_stats(d)
    segs1 = _seg_files(d)
    assert len(segs1) == 1

    loaded = Index.load(d, mmap=mmap)
    new_ids = loaded.add(x2)
    assert new_ids.tolist() == list(range(400, 650))
    loaded.save(d)
    stats2 = _file_stats(d)
    segs2 = _seg_files(d)
    assert segs1 < segs2 and len(segs2) == 2, (segs1, segs2)
    for name in segs1:
        assert stats2[name] == stats1[name], f"{name} was rewritten by an appending save"

    # A third round through a fresh load appends again.
    loaded2 = Index.load(d, mmap=mmap)
    loaded2.add(x3)
    loaded2.save(d)
    stats3 = _file_stats(d)
    segs3 = _seg_files(d)
    assert segs2 < segs3 and len(segs3) == 3
    for name in segs2:
        assert stats3[name] == stats2[name], f"{name} was rewritten by an appending save"

    ref = Index(DIM, storage=storage)
    ref.add(np.concatenate([x1, x2, x3]))
    final = Index.load(d, mmap=mmap)
    final.verify()
    assert len(final) == 727
    q = np.concatenate([x1[:3], x2[:3], x3[:3], _queries(x1)])
    _assert_same_index(loaded2, final, q)
    # Same content as an index built in one go (scores are per-row, so identical).
    _assert_same_index(ref, final, q)
    assert not [n for n in os.listdir(d) if ".tmp" in n]


def test_save_twice_from_same_object_appends(tmp_path):
    d = tmp_path / "ix"
    ix = Index(DIM, storage="b1")
    ix.add(_data(100, seed=1))
    ix.save(d)
    stats1 = _file_stats(d)
    # Saving again with no changes rewrites no segment file.
    ix.save(d)
    stats_same = _file_stats(d)
    for name in _seg_files(d):
        assert stats_same[name] == stats1[name]
    assert _seg_files(d) == set(n for n in stats1 if n.startswith("seg-"))
    ix.add(_data(100, seed=2))
    ix.save(d)
    _assert_segments_untouched(stats1, _file_stats(d))
    assert len(_seg_files(d)) == 2
    loaded = Index.load(d)
    _assert_same_index(ix, loaded, _data(5, seed=3))


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_save_to_other_directory_copies(tmp_path, mmap):
    a, b = tmp_path / "a", tmp_path / "b"
    x = _data(300, seed=21)
    ix = Index(DIM, storage="i8")
    ix.add(x)
    ix.remove([3, 4])
    ix.save(a)
    stats_a = _file_stats(a)
    loaded = Index.load(a, mmap=mmap)
    loaded.add(_data(50, seed=22))
    loaded.save(b)
    assert _file_stats(a) == stats_a, "saving elsewhere modified the source directory"
    stats_b = _file_stats(b)
    inodes_a = {v[0] for v in stats_a.values()}
    assert not inodes_a & {v[0] for v in stats_b.values()}, "copy shares inodes with the source"
    assert len(_seg_files(b)) >= 2
    # The copy stands alone.
    q = np.concatenate([x[:5], _queries(x)])
    expect = _results(loaded, q)
    shutil.rmtree(a)
    copy = Index.load(b, mmap=mmap)
    copy.verify()
    assert len(copy) == 348
    for (what, k, s0, i0), (_, _, s1, i1) in zip(expect, _results(copy, q)):
        np.testing.assert_array_equal(i0, i1, err_msg=what)
        np.testing.assert_array_equal(s0, s1, err_msg=what)
    # After saving to b, the loaded index's next save to b appends.
    loaded.add(_data(10, seed=23))
    loaded.save(b)
    stats_b2 = _file_stats(b)
    for name in _seg_files(b):
        if name in stats_b:
            assert stats_b2[name] == stats_b[name]
    assert len(Index.load(b)) == 358


def test_loaded_index_usable_after_directory_removed(tmp_path):
    x = _data(200, seed=31)
    ix = Index(DIM, storage="i8")
    ix.add(x)
    ix.save(tmp_path / "ix")
    q = _queries(x)
    loaded = {m: Index.load(tmp_path / "ix", mmap=m) for m in (True, False)}
    shutil.rmtree(tmp_path / "ix")
    for m, lx in loaded.items():
        _assert_same_index(ix, lx, q)
        lx.verify()
        # It can be saved somewhere new, from its still-open files.
        lx.save(tmp_path / f"re-{m}")
        _assert_same_index(ix, Index.load(tmp_path / f"re-{m}"), q)


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_save_back_after_source_directory_removed(tmp_path, mmap):
    """The directory an index was loaded from is deleted; saving there again must write
    every segment afresh, not assume the old files are still present."""
    d = tmp_path / "ix"
    x = _data(300, seed=41)
    ix = Index(DIM, storage="i8")
    ix.add(x)
    ix.remove([0, 1])
    ix.save(d)
    loaded = Index.load(d, mmap=mmap)
    shutil.rmtree(d)
    loaded.add(_data(20, seed=42))
    loaded.save(d)
    again = Index.load(d, mmap=mmap)
    again.verify()
    assert len(again) == 318
    _assert_same_index(loaded, again, _queries(x))


def test_overwrite_with_a_different_index(tmp_path):
    """Saving an unrelated index into an existing index directory replaces it."""
    d = tmp_path / "ix"
    a = Index(DIM, storage="f16")
    a.add(_data(100, seed=1))
    a.save(d)
    b = Index(DIM, metric="ip", storage="i8")
    b.add(_data(40, seed=2))
    b.save(d)
    loaded = Index.load(d)
    loaded.verify()
    assert (loaded.storage, loaded.metric, len(loaded)) == ("i8", "ip", 40)
    _assert_same_index(b, loaded, _data(4, seed=3))
    # The replaced index's file stays for one generation (for readers of its manifest).
    assert len(_seg_files(d)) == 2, sorted(os.listdir(d))
    loaded.save(d)
    assert len(_seg_files(d)) == 1, sorted(os.listdir(d))


# ---------------------------------------------------------------------------------------
# Empty indexes, ids, verify


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_empty_index_round_trips(tmp_path, storage, mmap):
    ix = Index(DIM, metric="ip", storage=storage)
    ix.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix", mmap=mmap)
    loaded.verify()
    assert len(loaded) == 0
    assert (loaded.dim, loaded.metric, loaded.storage, loaded.keep_originals) == (
        DIM, "ip", storage, ix.keep_originals)
    assert loaded.ids().size == 0
    s, i = loaded.search(_data(2), k=3)
    assert s.shape == (2, 3) and (i == -1).all() and np.isneginf(s).all()
    # And it can grow and be saved again in place.
    x = _data(20, seed=4)
    assert loaded.add(x).tolist() == list(range(20))
    loaded.save(tmp_path / "ix")
    again = Index.load(tmp_path / "ix", mmap=mmap)
    assert len(again) == 20
    _assert_same_index(loaded, again, x[:3])


def test_next_id_persists(tmp_path):
    ix = Index(DIM)
    ix.add(_data(10))
    ix.remove(np.arange(5, 10))
    ix.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    assert loaded.add(_data(3, seed=1)).tolist() == [10, 11, 12]


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_verify_passes_on_good_index(tmp_path, mmap):
    d = tmp_path / "ix"
    ix = Index(DIM, storage="i8")
    ix.add(_data(500))
    ix.save(d)
    ix.remove([1, 2, 3])
    ix.add(_data(100, seed=9))
    ix.save(d)
    Index.load(d, mmap=mmap).verify()
    Index.load(d, mmap=mmap, verify=False).verify()
    ix.verify()  # the saving object can verify too


# ---------------------------------------------------------------------------------------
# Errors


def test_save_into_nonempty_non_index_directory_raises(tmp_path):
    d = tmp_path / "stuff"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    ix = Index(DIM)
    ix.add(_data(10))
    with pytest.raises(ValueError):
        ix.save(d)
    assert sorted(os.listdir(d)) == ["notes.txt"]
    assert (d / "notes.txt").read_text() == "hello"
    # A nested empty directory also counts as "not empty".
    e = tmp_path / "nested"
    (e / "sub").mkdir(parents=True)
    with pytest.raises(ValueError):
        ix.save(e)
    assert sorted(os.listdir(e)) == ["sub"]


def test_save_into_existing_empty_directory(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    ix = Index(DIM)
    ix.add(_data(10))
    ix.save(d)
    assert len(Index.load(d)) == 10


def test_load_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "does-not-exist")
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "does-not-exist", mmap=False)
    # Loading does not create anything.
    assert not (tmp_path / "does-not-exist").exists()


def test_load_plain_file_raises_format_error(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x" * 100)
    with pytest.raises(cliprt.FormatError):
        Index.load(f)


def test_format_error_is_value_error():
    assert issubclass(cliprt.FormatError, ValueError)


def test_save_into_missing_parent_raises_os_error(tmp_path):
    ix = Index(DIM)
    ix.add(_data(5))
    with pytest.raises(OSError):
        ix.save(tmp_path / "no" / "such" / "parent")
    assert not (tmp_path / "no").exists()


def test_append_through_a_symlinked_path(tmp_path):
    """The directory is recognised as "the one the index was loaded from" by its real
    path, so saving through another name for it still appends."""
    real = tmp_path / "real"
    link = tmp_path / "link"
    ix = Index(DIM, storage="f16")
    ix.add(_data(100, seed=1))
    ix.save(real)
    os.symlink(real, link)
    stats = _file_stats(real)
    loaded = Index.load(link)
    loaded.add(_data(10, seed=2))
    loaded.save(real)
    _assert_segments_untouched(stats, _file_stats(real))
    assert len(_seg_files(real)) == 2
    assert len(Index.load(link)) == 110
