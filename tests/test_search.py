"""Search, allow-lists, removal, reconstruction and id assignment of cliprt.Index,
checked against the float64 oracles in reference.py."""
from __future__ import annotations

import numpy as np
import pytest

import cliprt
from cliprt import _core

import reference as ref

STORAGES = ref.STORAGES
METRICS = ref.METRICS
DIMS = (1, 3, 257, 771)
NS = (1, 2, 1000)
NQ = 13  # not a multiple of any kernel's query tile (2, 3, 4, 6, 12): exercises the tails


def make_data(rng, n, d, metric="ip"):
    """Gaussian rows; for ip the row norms vary (0.25x .. 4x) so ip and cosine rank
    differently."""
    x = rng.standard_normal((n, d), dtype=np.float32)
    if metric == "ip" and n:
        x *= rng.uniform(0.25, 4.0, (n, 1)).astype(np.float32)
    return x


def check_batch(got_s, got_i, ref_s, ids, k, tol, what):
    nq = ref_s.shape[0]
    assert got_s.shape == (nq, k) and got_i.shape == (nq, k), f"{what}: shapes {got_s.shape} {got_i.shape}"
    for r in range(nq):
        ref.assert_topk_matches(got_s[r], got_i[r], ref_s[r], ids, k, tol[r], f"{what} q{r}")


def check_rescored_batch(got_s, got_i, code_s, code_tol, exact_s, exact_tol, ids, k, n_cand, what):
    nq = code_s.shape[0]
    assert got_s.shape == (nq, k) and got_i.shape == (nq, k)
    for r in range(nq):
        ref.assert_rescored_matches(got_s[r], got_i[r], code_s[r], exact_s[r], ids, k, n_cand,
                                    code_tol[r], exact_tol[r], f"{what} q{r}")


# ---------------------------------------------------------------------------------------
# the full matrix: storage x metric x SIMD variant x dim x N x k, with and without rescoring

@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("storage", STORAGES)
def test_search_matches_reference(rng, simd_variant, storage, metric, dim, n):
    x = make_data(rng, n, dim, metric)
    q = make_data(rng, NQ, dim, metric)
    ix = cliprt.Index(dim, metric, storage)
    np.testing.assert_array_equal(ix.add(x), np.arange(n))
    ids = np.arange(n)
    code_s, code_a = ref.scores(storage, metric, q, x, return_abs=True)
    code_tol = ref.tolerances(storage, code_a)
    what = f"{storage}/{metric}/{simd_variant} dim={dim} n={n}"
    plain = {}
    for k in (1, n, n + 5):
        s, i = ix.search(q, k=k, rescore=0)
        check_batch(s, i, code_s, ids, k, code_tol, f"{what} k={k} rescore=0")
        plain[k] = (s, i)

    r = ix.default_rescore
    assert r == ref.DEFAULT_RESCORE[storage]
    exact_s, exact_a = ref.exact_scores(metric, q, x, return_abs=True)
    exact_tol = ref.tolerances("rescore", exact_a)
    for k in (1, n, n + 5):
        s, i = ix.search(q, k=k)
        if r == 0:
            # default for f32/f16/bf16 is no rescoring: identical to rescore=0
            np.testing.assert_array_equal(s, plain[k][0])
            np.testing.assert_array_equal(i, plain[k][1])
        else:
            rk = ix.default_rescore_for(k)
            check_rescored_batch(s, i, code_s, code_tol, exact_s, exact_tol, ids, k, k * rk,
                                 f"{what} k={k} rescore=default({rk})")


@pytest.mark.parametrize("rescore", [1, 3])
@pytest.mark.parametrize("storage", STORAGES)
def test_explicit_rescore_with_originals(rng, simd_variant, storage, rescore):
    n, dim = 700, 45
    x = make_data(rng, n, dim)
    q = make_data(rng, NQ, dim)
    ix = cliprt.Index(dim, "ip", storage, keep_originals=True)
    ix.add(x)
    code_s, code_a = ref.scores(storage, "ip", q, x, return_abs=True)
    exact_s, exact_a = ref.exact_scores("ip", q, x, return_abs=True)
    for k in (1, 10, n):
        s, i = ix.search(q, k=k, rescore=rescore)
        check_rescored_batch(s, i, code_s, ref.tolerances(storage, code_a), exact_s,
                             ref.tolerances("rescore", exact_a), np.arange(n), k, k * rescore,
                             f"{storage} rescore={rescore} k={k}")


@pytest.mark.parametrize("storage", STORAGES)
def test_many_queries_cross_query_groups(rng, simd_variant, storage):
    # 100 queries: more than one internal query group (48) and odd tails in every tile.
    n, dim, nq, k = 333, 70, 100, 7
    x = make_data(rng, n, dim)
    q = make_data(rng, nq, dim)
    ix = cliprt.Index(dim, "ip", storage)
    ix.add(x)
    code_s, code_a = ref.scores(storage, "ip", q, x, return_abs=True)
    s, i = ix.search(q, k=k, rescore=0)
    check_batch(s, i, code_s, np.arange(n), k, ref.tolerances(storage, code_a), f"{storage} nq={nq}")
    # small batches take other kernel tiles (1, 2, 3 queries; 14 = 12 + 2)
    for m in (1, 2, 3, 14):
        s, i = ix.search(q[:m], k=k, rescore=0)
        check_batch(s, i, code_s[:m], np.arange(n), k, ref.tolerances(storage, code_a[:m]), f"{storage} nq={m}")


@pytest.mark.parametrize("storage", ["f32", "i8"])
def test_large_index(rng, storage):
    n, dim, nq, k = 100003, 64, 50, 10
    x = make_data(rng, n, dim)
    q = make_data(rng, nq, dim)
    ix = cliprt.Index(dim, "ip", storage)
    ix.add(x)
    assert len(ix) == n
    code_s, code_a = ref.scores(storage, "ip", q, x, return_abs=True)
    code_tol = ref.tolerances(storage, code_a)
    ids = np.arange(n)
    s, i = ix.search(q, k=k, rescore=0)
    check_batch(s, i, code_s, ids, k, code_tol, f"{storage} n={n}")
    if ix.default_rescore:
        exact_s, exact_a = ref.exact_scores("ip", q, x, return_abs=True)
        s, i = ix.search(q, k=k)
        check_rescored_batch(s, i, code_s, code_tol, exact_s, ref.tolerances("rescore", exact_a), ids, k,
                             k * ix.default_rescore_for(k), f"{storage} n={n} default rescore")
    # this index is large enough for the multi-threaded path (> 6 MB of codes per
    # query group): one thread and two threads must agree bit for bit
    for kw in ({"rescore": 0}, {}, {"allow": rng.choice(n, n // 2, replace=False)}):
        a = ix.search(q, k=k, threads=1, **kw)
        b = ix.search(q, k=k, threads=2, **kw)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])


# ---------------------------------------------------------------------------------------
# threads

def _row_bytes(storage, dim):
    per = {"f32": (4, 1), "f16": (2, 1), "bf16": (4, 2), "i8": (4, 4), "b1": (8, 64)}[storage]
    return per[0] * -(-dim // per[1])


@pytest.mark.parametrize("storage", STORAGES)
def test_threads_identical(rng, simd_variant, storage):
    dim, nq, k = 256, 289, 5  # 289 queries = 7 query groups of <= 48
    # enough rows that codes x query groups exceed the 6 MB single-thread cut-off
    n = int(7.0e6 / (_row_bytes(storage, dim) * 7)) + 17
    x = rng.standard_normal((n, dim), dtype=np.float32)
    q = rng.standard_normal((nq, dim), dtype=np.float32)
    ix = cliprt.Index(dim, "cosine", storage)
    ix.add(x)
    removed = rng.choice(n, n // 10, replace=False)
    ix.remove(removed)
    allow = rng.choice(n, n // 2, replace=False)
    for kw in ({"rescore": 0}, {}, {"allow": allow, "rescore": 0}):
        a = ix.search(q, k=k, threads=1, **kw)
        b = ix.search(q, k=k, threads=2, **kw)
        np.testing.assert_array_equal(a[1], b[1], err_msg=f"{kw}")
        np.testing.assert_array_equal(a[0], b[0], err_msg=f"{kw}")
    # and the threaded answer is right (a few queries against the reference)
    live = np.setdiff1d(np.arange(n), removed)
    code_s, code_a = ref.scores(storage, "cosine", q[:4], x[live], return_abs=True)
    s, i = ix.search(q[:4], k=k, threads=2, rescore=0)
    check_batch(s, i, code_s, live, k, ref.tolerances(storage, code_a), f"{storage} threads=2")


# ---------------------------------------------------------------------------------------
# f32 exactness

@pytest.mark.parametrize("metric", METRICS)
def test_f32_topk_is_exact(rng, simd_variant, metric):
    n, dim, nq, k = 3000, 96, 20, 25
    x = make_data(rng, n, dim, metric)
    q = make_data(rng, nq, dim, metric)
    ix = cliprt.Index(dim, metric, "f32")
    ix.add(x)
    ref_s, ref_a = ref.exact_scores(metric, q, x, return_abs=True)
    tol = ref.tolerances("f32", ref_a)
    exp_s, exp_i = ref.exact_topk(ref_s, k)
    got_s, got_i = ix.search(q, k=k)
    n_strict = 0
    for r in range(nq):
        top = np.sort(ref_s[r])[::-1][: k + 1]
        if np.all(-np.diff(top) > 2 * tol[r]):
            # no near-ties around the top k: the ids must be exactly the reference's
            np.testing.assert_array_equal(got_i[r], exp_i[r], err_msg=f"query {r}")
            n_strict += 1
        ref.assert_topk_matches(got_s[r], got_i[r], ref_s[r], np.arange(n), k, tol[r], f"query {r}")
        np.testing.assert_allclose(got_s[r], exp_s[r], rtol=0, atol=tol[r])
    assert n_strict > 0, "every query had a near-tie: the strict comparison never ran"


# ---------------------------------------------------------------------------------------
# shapes, empty index, ties

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("storage", STORAGES)
def test_empty_index(storage, metric):
    ix = cliprt.Index(5, metric, storage)
    q = np.ones((3, 5), dtype=np.float32)
    for kw in ({}, {"rescore": 0}, {"allow": [0, 1, 2]}, {"allow": []}):
        s, i = ix.search(q, k=4, **kw)
        assert s.shape == (3, 4) and i.shape == (3, 4)
        assert s.dtype == np.float32 and i.dtype == np.int64
        assert np.all(np.isneginf(s)) and np.all(i == -1)
        s1, i1 = ix.search(q[0], k=4, **kw)
        assert s1.shape == (4,) and i1.shape == (4,)
        assert np.all(np.isneginf(s1)) and np.all(i1 == -1)
    assert len(ix) == 0
    assert ix.ids().shape == (0,)


@pytest.mark.parametrize("storage", STORAGES)
def test_index_emptied_by_remove(rng, storage):
    ix = cliprt.Index(9, "cosine", storage)
    ix.add(rng.standard_normal((40, 9)))
    assert ix.remove(np.arange(40)) == 40
    assert len(ix) == 0
    for kw in ({}, {"allow": np.arange(40)}):
        s, i = ix.search(rng.standard_normal(9), k=3, **kw)
        assert np.all(np.isneginf(s)) and np.all(i == -1)


@pytest.mark.parametrize("storage", STORAGES)
def test_single_query_returns_1d(rng, storage):
    dim, n = 19, 50
    ix = cliprt.Index(dim, "ip", storage)
    x = rng.standard_normal((n, dim))
    ix.add(x)
    q = rng.standard_normal(dim)
    for k in (1, 7, n + 3):
        s, i = ix.search(q, k=k)
        assert s.shape == (k,) and i.shape == (k,)
        assert s.dtype == np.float32 and i.dtype == np.int64
        s2, i2 = ix.search(q[None, :], k=k)
        assert s2.shape == (1, k)
        np.testing.assert_array_equal(s, s2[0])
        np.testing.assert_array_equal(i, i2[0])
    assert np.all(i[n:] == -1) and np.all(np.isneginf(s[n:]))
    s, i = ix.search(np.zeros((0, dim)), k=3)
    assert s.shape == (0, 3) and i.shape == (0, 3)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("storage", STORAGES)
def test_ties_smaller_id_first(rng, simd_variant, storage, metric):
    dim, groups, copies = 37, 5, 4
    for _ in range(20):  # draw until the groups' scores are well separated
        base = make_data(rng, groups, dim, metric)
        q = base[:1] + 0.3 * rng.standard_normal((1, dim), dtype=np.float32)
        code_s, code_a = ref.scores(storage, metric, q, base, return_abs=True)
        gaps = -np.diff(np.sort(code_s[0])[::-1])
        if gaps.min() > 100 * ref.tolerances(storage, code_a)[0]:
            break
    else:
        pytest.fail("could not draw well-separated groups")
    x = np.repeat(base, copies, axis=0)  # rows 4g .. 4g+3 are identical
    ids = rng.permutation(10 * groups * copies)[: groups * copies].astype(np.int64)
    ix = cliprt.Index(dim, metric, storage)
    ix.add(x, ids=ids)
    full_code = np.repeat(code_s, copies, axis=1)
    full_exact = np.repeat(ref.exact_scores(metric, q, base), copies, axis=1)
    for k in range(1, groups * copies + 2):
        s, i = ix.search(q[0], k=k, rescore=0)
        _, exp_i = ref.exact_topk(full_code[0], k, ids)
        np.testing.assert_array_equal(i, exp_i, err_msg=f"rescore=0 k={k}")
        if ix.default_rescore:
            s, i = ix.search(q[0], k=k)
            # the candidate cut (k * R rows) may split a group of equal code scores:
            # the smaller ids are the ones kept
            n_cand = min(k * ix.default_rescore_for(k), len(ids))
            _, cand = ref.exact_topk(full_code[0], n_cand, ids)
            pos = {v: j for j, v in enumerate(ids.tolist())}
            cs = np.array([full_exact[0][pos[c]] for c in cand.tolist()])
            _, exp_i = ref.exact_topk(cs, k, cand)
            np.testing.assert_array_equal(i, exp_i, err_msg=f"rescored k={k}")
        # equal scores are bitwise equal within each group
        for g in range(groups):
            sel = np.isin(i, ids[g * copies:(g + 1) * copies])
            assert len(set(s[sel].tolist())) <= 1


# ---------------------------------------------------------------------------------------
# allow-lists

def _sub(ids_all, wanted):
    pos = {v: j for j, v in enumerate(np.asarray(ids_all).tolist())}
    return np.array([pos[w] for w in np.asarray(wanted).tolist()], dtype=np.int64)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("storage", STORAGES)
def test_allow_selective(rng, simd_variant, storage, metric):
    n, dim, k = 5000, 33, 10
    x = make_data(rng, n, dim, metric)
    ids = rng.permutation(10**6)[:n].astype(np.int64)
    ix = cliprt.Index(dim, metric, storage)
    ix.add(x, ids=ids)
    q = make_data(rng, NQ, dim, metric)
    allow = ids[rng.choice(n, 3, replace=False)]
    sel = _sub(ids, allow)
    code_s, code_a = ref.scores(storage, metric, q, x[sel], return_abs=True)
    tol = ref.tolerances(storage, code_a)
    for kw in ({"rescore": 0}, {}):
        s, i = ix.search(q, k=k, allow=allow, **kw)
        assert s.shape == (NQ, k)
        for r in range(NQ):
            assert set(i[r, :3].tolist()) == set(allow.tolist())
            assert np.all(i[r, 3:] == -1) and np.all(np.isneginf(s[r, 3:]))
    s, i = ix.search(q, k=k, allow=allow, rescore=0)
    check_batch(s, i, code_s, allow, k, tol, "selective allow")
    if ix.default_rescore:
        # rescoring the gathered rows must use the right originals
        exact_s, exact_a = ref.exact_scores(metric, q, x[sel], return_abs=True)
        s, i = ix.search(q, k=k, allow=allow)
        check_batch(s, i, exact_s, allow, k, ref.tolerances("rescore", exact_a), "selective allow rescored")
    # a list (not an array) works too
    s2, i2 = ix.search(q, k=k, allow=allow.tolist(), rescore=0)
    np.testing.assert_array_equal(i2, ix.search(q, k=k, allow=allow, rescore=0)[1])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("storage", STORAGES)
def test_allow_half(rng, simd_variant, storage, metric):
    n, dim, k = 2000, 21, 15
    x = make_data(rng, n, dim, metric)
    ids = rng.permutation(3 * n)[:n].astype(np.int64)
    ix = cliprt.Index(dim, metric, storage)
    ix.add(x, ids=ids)
    q = make_data(rng, NQ, dim, metric)
    allow = ids[rng.choice(n, n // 2, replace=False)]
    sel = _sub(ids, allow)
    code_s, code_a = ref.scores(storage, metric, q, x[sel], return_abs=True)
    s, i = ix.search(q, k=k, allow=allow, rescore=0)
    check_batch(s, i, code_s, allow, k, ref.tolerances(storage, code_a), "half allow")
    if ix.default_rescore:
        exact_s, exact_a = ref.exact_scores(metric, q, x[sel], return_abs=True)
        s, i = ix.search(q, k=k, allow=allow)
        check_rescored_batch(s, i, code_s, ref.tolerances(storage, code_a), exact_s,
                             ref.tolerances("rescore", exact_a), allow, k, k * ix.default_rescore_for(k),
                             "half allow rescored")
    # allowing everything is the same as no allow-list
    a = ix.search(q, k=k, allow=ids, rescore=0)
    b = ix.search(q, k=k, rescore=0)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("n_allowed", [3, 1000])  # selective and non-selective paths
@pytest.mark.parametrize("storage", STORAGES)
def test_allow_unknown_and_duplicate_ids_ignored(rng, storage, n_allowed):
    n, dim, k = 2000, 16, 12
    x = make_data(rng, n, dim)
    ix = cliprt.Index(dim, "ip", storage)
    ix.add(x, ids=np.arange(n) * 2)  # even ids only
    q = make_data(rng, 4, dim)
    allow = rng.choice(n, n_allowed, replace=False) * 2
    noisy = np.concatenate([allow, allow[:2], [1, 3, 2 * n + 1, 10**12], allow[::-1]])
    a = ix.search(q, k=k, allow=allow)
    b = ix.search(q, k=k, allow=rng.permutation(noisy))
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    sel = _sub(np.arange(n) * 2, allow)
    code_s, code_a = ref.scores(storage, "ip", q, x[sel], return_abs=True)
    s, i = ix.search(q, k=k, allow=noisy, rescore=0)
    check_batch(s, i, code_s, allow, k, ref.tolerances(storage, code_a), "noisy allow")
    # only unknown ids: nothing is a candidate
    s, i = ix.search(q, k=k, allow=[1, 3, 5, 10**15])
    assert np.all(i == -1) and np.all(np.isneginf(s))
    s, i = ix.search(q, k=k, allow=np.zeros(0, dtype=np.int64))
    assert np.all(i == -1) and np.all(np.isneginf(s))


@pytest.mark.parametrize("n_allowed", [3, 20, 1500])
@pytest.mark.parametrize("storage", STORAGES)
def test_allow_with_removed_ids(rng, storage, n_allowed):
    n, dim, k = 3000, 24, 10
    x = make_data(rng, n, dim)
    ix = cliprt.Index(dim, "ip", storage)
    ix.add(x)
    q = make_data(rng, 5, dim)
    allow = rng.choice(n, n_allowed, replace=False)
    removed = np.unique(np.concatenate([allow[: max(1, n_allowed // 3)], rng.choice(n, 200, replace=False)]))
    assert ix.remove(removed) == len(removed)
    still = np.setdiff1d(allow, removed)
    for kw in ({"rescore": 0}, {}):
        s, i = ix.search(q, k=k, allow=allow, **kw)
        assert not np.isin(i, removed).any(), f"removed ids returned: {i[np.isin(i, removed)]}"
    code_s, code_a = ref.scores(storage, "ip", q, x[still], return_abs=True)
    s, i = ix.search(q, k=k, allow=allow, rescore=0)
    check_batch(s, i, code_s, still, k, ref.tolerances(storage, code_a), "allow minus removed")


# ---------------------------------------------------------------------------------------
# remove

@pytest.mark.parametrize("storage", STORAGES)
def test_remove(rng, simd_variant, storage):
    n, dim = 1000, 29
    x = make_data(rng, n, dim)
    ix = cliprt.Index(dim, "ip", storage)
    ix.add(x)
    q = make_data(rng, 6, dim)
    removed = rng.choice(n, 300, replace=False)
    req = np.concatenate([removed, removed[:10], [n, n + 7, 10**13]])  # duplicates, unknown ids
    assert ix.remove(rng.permutation(req)) == 300
    assert len(ix) == n - 300
    assert ix.remove(removed) == 0
    assert ix.remove([]) == 0
    assert ix.remove(np.array([n + 1, n + 2])) == 0
    assert len(ix) == n - 300
    live = np.setdiff1d(np.arange(n), removed)
    np.testing.assert_array_equal(np.sort(ix.ids()), live)
    for r in removed[:20]:
        assert r not in ix
    for r in live[:20]:
        assert r in ix
    code_s, code_a = ref.scores(storage, "ip", q, x[live], return_abs=True)
    tol = ref.tolerances(storage, code_a)
    for k in (1, 50, n):
        s, i = ix.search(q, k=k, rescore=0)
        assert not np.isin(i, removed).any()
        check_batch(s, i, code_s, live, k, tol, f"after remove k={k}")
        s, i = ix.search(q, k=k)
        assert not np.isin(i, removed).any()
    # scalar id
    assert ix.remove(int(live[0])) == 1
    assert live[0] not in ix


@pytest.mark.parametrize("storage", STORAGES)
def test_readd_removed_id(rng, storage):
    n, dim = 200, 12
    x = make_data(rng, n, dim)
    ix = cliprt.Index(dim, "ip", storage)
    ix.add(x)
    assert ix.remove([7, 8]) == 2
    new = make_data(rng, 1, dim)
    np.testing.assert_array_equal(ix.add(new, ids=[7]), [7])
    assert 7 in ix and 8 not in ix and len(ix) == n - 1
    np.testing.assert_array_equal(ix.reconstruct(7), ref.stored(storage, "ip", new)[0])
    x2 = x.copy()
    x2[7] = new[0]
    live = np.setdiff1d(np.arange(n), [8])
    q = np.concatenate([new, make_data(rng, 3, dim)])
    code_s, code_a = ref.scores(storage, "ip", q, x2[live], return_abs=True)
    tol = ref.tolerances(storage, code_a)
    s, i = ix.search(q, k=n, rescore=0)
    check_batch(s, i, code_s, live, n, tol, "re-added id")
    assert np.sum(i[0] == 7) == 1
    for allow in ([7], [7, 9, 10]):
        s, i = ix.search(q, k=5, allow=allow, rescore=0)
        assert np.all(np.sum(i == 7, axis=1) == 1)
        j = np.nonzero(i[0] == 7)[0][0]
        np.testing.assert_allclose(s[0, j], code_s[0, _sub(live, [7])[0]], rtol=0, atol=tol[0])
    s, i = ix.search(q, k=n, allow=np.arange(n + 5), rescore=0)
    check_batch(s, i, code_s, live, n, tol, "re-added id, allow all")


# ---------------------------------------------------------------------------------------
# reconstruct

def _code_step(storage, values):
    """One step of the storage's code grid around each value (used for cosine, where the
    library's normalisation may differ from the spec's float64 one by an ulp)."""
    a = np.abs(values).astype(np.float64)
    if storage == "f32":
        return 2 * np.spacing(a.astype(np.float32)).astype(np.float64) + 1e-45
    if storage == "f16":
        return np.maximum(a * 2.0**-10, 2.0**-24)
    if storage == "bf16":
        return np.maximum(a * 2.0**-7, 1e-40)
    if storage in ("i8", "b1"):
        return np.broadcast_to(a.max(axis=1, keepdims=True) * (1.0 / 127 if storage == "i8" else 1e-6), a.shape)
    raise ValueError(storage)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("storage", STORAGES)
def test_reconstruct(rng, storage, metric):
    n, dim = 300, 67
    x = make_data(rng, n, dim, metric)
    if metric == "ip":
        # magnitudes over many decades (f16 subnormals .. near the f16 maximum) and zero rows
        x = (rng.standard_normal((n, dim)) * 10.0 ** rng.uniform(-9, 4, (n, dim))).astype(np.float32)
        x = np.clip(x, -65504, 65504)
        x[0] = 0
        x[1, :3] = [65504, -65504, 1e-30]
    ids = rng.permutation(5 * n)[:n].astype(np.int64)
    ix = cliprt.Index(dim, metric, storage)
    ix.add(x, ids=ids)
    exp = ref.stored(storage, metric, x)
    got = ix.reconstruct(ids)
    assert got.shape == (n, dim) and got.dtype == np.float32
    if metric == "ip":
        np.testing.assert_array_equal(got, exp)  # the codecs are specified bit-exactly
    else:
        err = np.abs(got.astype(np.float64) - exp)
        assert np.all(err <= _code_step(storage, exp)), f"max error {err.max()}"
        bad = int(np.sum(got != exp))
        assert bad <= max(1, got.size // 10000), f"{bad} of {got.size} elements differ from the reference codes"
    one = ix.reconstruct(ids[5])
    assert one.shape == (dim,)
    np.testing.assert_array_equal(one, got[5])
    np.testing.assert_array_equal(ix.reconstruct(ids[[9, 3, 9]]), got[[9, 3, 9]])
    assert ix.reconstruct([]).shape == (0, dim)


@pytest.mark.parametrize("storage", STORAGES)
def test_reconstruct_unknown_or_removed_raises_keyerror(rng, storage):
    ix = cliprt.Index(8, "cosine", storage)
    ix.add(rng.standard_normal((10, 8)))
    ix.remove([4])
    for bad in (10, 4, 10**12, -1):
        with pytest.raises(KeyError):
            ix.reconstruct(bad)
    with pytest.raises(KeyError):
        ix.reconstruct([0, 1, 4])
    with pytest.raises(KeyError):
        ix.reconstruct([3, 99])
    assert ix.reconstruct([3]).shape == (1, 8)


# ---------------------------------------------------------------------------------------
# ids

def test_ids_auto_assigned_and_continue_after_explicit(rng):
    ix = cliprt.Index(4, "ip")
    np.testing.assert_array_equal(ix.add(rng.standard_normal((3, 4))), [0, 1, 2])
    np.testing.assert_array_equal(ix.add(rng.standard_normal((2, 4)), ids=[10, 5]), [10, 5])
    got = ix.add(rng.standard_normal((2, 4)))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [11, 12])
    np.testing.assert_array_equal(ix.add(rng.standard_normal((1, 4)), ids=[7]), [7])  # lower: no reset
    np.testing.assert_array_equal(ix.add(rng.standard_normal((2, 4))), [13, 14])
    np.testing.assert_array_equal(ix.ids(), [0, 1, 2, 10, 5, 11, 12, 7, 13, 14])  # storage order
    np.testing.assert_array_equal(ix.add(np.zeros((0, 4))), np.zeros(0, dtype=np.int64))
    assert len(ix) == 10
    ix.remove([14, 13])
    fresh = ix.add(rng.standard_normal((3, 4)))
    assert len(set(fresh.tolist()) | set([0, 1, 2, 10, 5, 11, 12, 7])) == 11  # new, distinct ids
    assert np.all(fresh >= 0)
    # a 1-D vector with a scalar id
    np.testing.assert_array_equal(ix.add(rng.standard_normal(4), ids=1000), [1000])


@pytest.mark.parametrize("explicit", [2**63 - 1, 2**63 - 2])
def test_auto_ids_after_largest_explicit_id(rng, explicit):
    """Auto-assigned ids must stay valid (non-negative, unused) or the add must be
    rejected without storing anything; they must never wrap around to negative ids."""
    ix = cliprt.Index(4, "ip")
    if explicit == 2**63 - 1:  # reserved: no id could follow it
        with pytest.raises(ValueError, match="ids must be in"):
            ix.add(rng.standard_normal((1, 4)), ids=[explicit])
        assert len(ix) == 0
        return
    ix.add(rng.standard_normal((1, 4)), ids=[explicit])
    try:
        got = ix.add(rng.standard_normal((3, 4)))
    except (ValueError, OverflowError):
        assert len(ix) == 1
        np.testing.assert_array_equal(ix.ids(), [explicit])
        return
    assert np.all(got >= 0), f"auto-assigned ids wrapped around: {got}"
    assert explicit not in got.tolist() and len(set(got.tolist())) == 3


# ---------------------------------------------------------------------------------------
# input conversions

@pytest.mark.parametrize("storage", STORAGES)
def test_input_dtypes_and_layouts(rng, storage):
    n, dim = 120, 10
    x32 = rng.standard_normal((n, dim), dtype=np.float32)
    q32 = rng.standard_normal((4, dim), dtype=np.float32)
    a = cliprt.Index(dim, "ip", storage)
    a.add(x32)
    want = a.search(q32, k=9)
    variants = [x32.astype(np.float64), np.asfortranarray(x32),
                np.repeat(x32, 2, axis=1)[:, ::2], x32.tolist()]
    for xv in variants:
        b = cliprt.Index(dim, "ip", storage)
        b.add(xv)
        np.testing.assert_array_equal(b.reconstruct(np.arange(n)), a.reconstruct(np.arange(n)))
        for qv in (q32.astype(np.float64), np.asfortranarray(q32), q32.tolist()):
            got = b.search(qv, k=9)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])
    # float16 input is widened exactly
    h = x32.astype(np.float16)
    c = cliprt.Index(dim, "ip", storage)
    c.add(h)
    np.testing.assert_array_equal(c.reconstruct(np.arange(n)), ref.stored(storage, "ip", h.astype(np.float32)))


# ---------------------------------------------------------------------------------------
# several segments (an index loaded from disk, then grown)

@pytest.mark.parametrize("storage", STORAGES)
def test_loaded_then_grown_index(rng, tmp_path, storage):
    n, dim = 600, 20
    x = make_data(rng, n, dim, "cosine")
    ix = cliprt.Index(dim, "cosine", storage)
    ix.add(x[:250])
    ix.save(tmp_path / "ix")
    ix2 = cliprt.Index.load(tmp_path / "ix")
    np.testing.assert_array_equal(ix2.add(x[250:]), np.arange(250, n))
    removed = np.arange(0, n, 7)
    assert ix2.remove(removed) == len(removed)
    live = np.setdiff1d(np.arange(n), removed)
    q = make_data(rng, 5, dim, "cosine")
    code_s, code_a = ref.scores(storage, "cosine", q, x[live], return_abs=True)
    tol = ref.tolerances(storage, code_a)
    s, i = ix2.search(q, k=60, rescore=0)
    check_batch(s, i, code_s, live, 60, tol, "two segments")
    allow = np.arange(200, 300)  # straddles both segments
    for a in (allow, allow[::10]):
        st = np.setdiff1d(a, removed)
        sc, sa = ref.scores(storage, "cosine", q, x[st], return_abs=True)
        s, i = ix2.search(q, k=12, allow=a, rescore=0)
        check_batch(s, i, sc, st, 12, ref.tolerances(storage, sa), "two segments, allow")
        if ix2.default_rescore:
            es, ea = ref.exact_scores("cosine", q, x[st], return_abs=True)
            s, i = ix2.search(q, k=12, allow=a)
            check_rescored_batch(s, i, sc, ref.tolerances(storage, sa), es, ref.tolerances("rescore", ea),
                                 st, 12, 12 * ix2.default_rescore_for(12), "two segments, allow, rescored")
    got = ix2.reconstruct(live)
    err = np.abs(got.astype(np.float64) - ref.stored(storage, "cosine", x[live]))
    assert np.all(err <= _code_step(storage, ref.stored(storage, "cosine", x[live])))


# ---------------------------------------------------------------------------------------
# tiny magnitudes: the codecs and the cosine normalisation are specified in real numbers

@pytest.mark.parametrize("storage", STORAGES)
def test_cosine_normalises_tiny_vectors(storage):
    """A nonzero vector whose norm is below 1/FLT_MAX (~2.9e-39) still has a well-defined
    direction: it must be stored as the unit vector and be found by search."""
    dim = 4
    tiny = np.array([[1e-39, 0, 0, 0]], dtype=np.float32)
    other = np.array([[0, 1, 0, 0]], dtype=np.float32)
    ix = cliprt.Index(dim, "cosine", storage)
    ix.add(np.concatenate([tiny, other]))
    rec = ix.reconstruct(0)
    assert np.all(np.isfinite(rec)), f"reconstruct of a tiny vector: {rec}"
    np.testing.assert_allclose(rec, ref.stored(storage, "cosine", tiny)[0], rtol=1e-6)
    s, i = ix.search(np.array([1.0, 0, 0, 0]), k=2, rescore=0)
    np.testing.assert_array_equal(i, [0, 1])
    assert np.all(np.isfinite(s))
    # and as a query
    s, i = ix.search(tiny[0], k=2, rescore=0)
    np.testing.assert_array_equal(i, [0, 1])
    assert np.all(np.isfinite(s))


def test_i8_ranking_invariant_to_query_scale(simd_variant):
    """ip ranking must not change when the query is scaled by a positive factor; the i8
    query code of a query with max|x| ~ 1e-37 is rint(x * 127 / max|x|) like any other."""
    ix = cliprt.Index(4, "ip", "i8")
    ix.add(np.array([[1, 0, 0, 0], [1, -5, -5, -5]], dtype=np.float32))
    q = np.array([1.0, 0, 0, 0], dtype=np.float32)
    want = ix.search(q, k=2, rescore=0)[1]
    np.testing.assert_array_equal(want, [0, 1])
    for scale in (1e-20, 1e-36, 1e-37, 1e-38):
        got = ix.search(q * np.float32(scale), k=2, rescore=0)[1]
        np.testing.assert_array_equal(got, want, err_msg=f"query scaled by {scale}")


def test_i8_codes_of_tiny_vector():
    x = np.array([[1e-38, 0, -5e-39, 0]], dtype=np.float32)
    ix = cliprt.Index(4, "ip", "i8")
    ix.add(x)
    codes, scale = ref.encode("i8", x)
    np.testing.assert_array_equal(codes, [[127, 0, -64, 0]])
    np.testing.assert_array_equal(ix.reconstruct(0), ref.decode("i8", codes, scale)[0])
