"""Argument validation of the public API (clear ValueError / TypeError, nothing stored is
lost on a rejected call) and hypothesis property tests of search."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cliprt

import reference as ref

STORAGES = ref.STORAGES
METRICS = ref.METRICS
DIM = 6
N0 = 40


def _populated(storage, metric, seed=1234):
    rng = np.random.default_rng(seed)
    ix = cliprt.Index(DIM, metric, storage)
    ix.add(rng.standard_normal((N0, DIM)), ids=np.arange(N0) * 3)
    q = rng.standard_normal((4, DIM)).astype(np.float32)
    return ix, q


def _snapshot(ix, q):
    res = [ix.search(q, k=N0 + 2, rescore=0)]
    if ix.default_rescore:
        res.append(ix.search(q, k=7))
    return len(ix), ix.ids().copy(), ix.reconstruct(ix.ids()), res


def _assert_unchanged(ix, q, before):
    n, ids, rec, res = before
    assert len(ix) == n
    np.testing.assert_array_equal(ix.ids(), ids)
    np.testing.assert_array_equal(ix.reconstruct(ids), rec)
    after = [ix.search(q, k=N0 + 2, rescore=0)]
    if ix.default_rescore:
        after.append(ix.search(q, k=7))
    for (s0, i0), (s1, i1) in zip(res, after):
        np.testing.assert_array_equal(i1, i0)
        np.testing.assert_array_equal(s1, s0)


def _rows(n=3, dim=DIM, fill=None, dtype=np.float32):
    x = np.random.default_rng(7).standard_normal((n, dim)).astype(dtype)
    if fill is not None:
        x[-1, -1] = fill  # the bad value sits in the last row, after valid ones
    return x


# (name, exception, callable(ix) performing the bad add)
BAD_ADDS = [
    ("wrong dim", ValueError, lambda ix: ix.add(_rows(dim=DIM + 1))),
    ("wrong dim 1-D", ValueError, lambda ix: ix.add(np.ones(DIM - 1))),
    ("3-D", ValueError, lambda ix: ix.add(np.ones((2, 3, DIM)))),
    ("0-D", ValueError, lambda ix: ix.add(np.float32(1.0))),
    ("str dtype", TypeError, lambda ix: ix.add(np.array([["1.0"] * DIM]))),
    ("object dtype", TypeError, lambda ix: ix.add(np.array([[1.0] * DIM], dtype=object))),
    ("int dtype", TypeError, lambda ix: ix.add(np.ones((2, DIM), dtype=np.int32))),
    ("int list", TypeError, lambda ix: ix.add([[1] * DIM])),
    ("bool dtype", TypeError, lambda ix: ix.add(np.ones((2, DIM), dtype=bool))),
    ("complex dtype", TypeError, lambda ix: ix.add(np.ones((2, DIM), dtype=np.complex64))),
    ("NaN", ValueError, lambda ix: ix.add(_rows(fill=np.nan))),
    ("+Inf", ValueError, lambda ix: ix.add(_rows(fill=np.inf))),
    ("-Inf", ValueError, lambda ix: ix.add(_rows(fill=-np.inf))),
    ("float64 beyond float32", ValueError, lambda ix: ix.add(_rows(fill=1e39, dtype=np.float64))),
    ("duplicate ids within add", ValueError, lambda ix: ix.add(_rows(), ids=[1000, 1001, 1000])),
    ("id already stored", ValueError, lambda ix: ix.add(_rows(), ids=[1000, 1001, 3])),
    ("negative id", ValueError, lambda ix: ix.add(_rows(), ids=[1000, 1001, -5])),
    ("id -1", ValueError, lambda ix: ix.add(_rows(1), ids=[-1])),
    ("too few ids", ValueError, lambda ix: ix.add(_rows(), ids=[1000, 1001])),
    ("too many ids", ValueError, lambda ix: ix.add(_rows(), ids=[1000, 1001, 1002, 1003])),
    ("float ids", TypeError, lambda ix: ix.add(_rows(), ids=[1000.0, 1001.0, 1002.0])),
    ("2-D ids", ValueError, lambda ix: ix.add(_rows(), ids=[[1000], [1001], [1002]])),
    ("uint64 id beyond int64", ValueError,
     lambda ix: ix.add(_rows(), ids=np.array([1000, 1001, 2**64 - 1], dtype=np.uint64))),
]
COSINE_BAD_ADDS = [
    ("zero-norm vector", ValueError, lambda ix: ix.add(_rows(fill=None) * np.array([[1], [1], [0]], np.float32))),
]
IP_RANGE_BAD_ADDS = {  # storages with a smaller finite range than float32 (ip keeps values as given)
    "f16": ("beyond f16 range", ValueError, lambda ix: ix.add(_rows(fill=70000.0))),
    "bf16": ("beyond bf16 range", ValueError, lambda ix: ix.add(_rows(fill=np.float32(3.3999e38)))),
}


def _bad_add_params():
    out = []
    for storage in STORAGES:
        for metric in METRICS:
            cases = list(BAD_ADDS)
            if metric == "cosine":
                cases += COSINE_BAD_ADDS
            elif storage in IP_RANGE_BAD_ADDS:
                cases.append(IP_RANGE_BAD_ADDS[storage])
            for name, exc, fn in cases:
                out.append(pytest.param(storage, metric, exc, fn, id=f"{storage}-{metric}-{name}"))
    return out


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("storage,metric,exc,bad_add", _bad_add_params())
def test_rejected_add_stores_nothing(storage, metric, exc, bad_add):
    ix, q = _populated(storage, metric)
    before = _snapshot(ix, q)
    with pytest.raises(exc) as info:
        bad_add(ix)
    assert str(info.value), "error without a message"
    _assert_unchanged(ix, q, before)
    # the index still works normally afterwards: auto ids continue after the stored ones
    np.testing.assert_array_equal(ix.add(_rows(2)), [3 * (N0 - 1) + 1, 3 * (N0 - 1) + 2])
    assert len(ix) == N0 + 2


def test_add_range_limit_is_inclusive():
    # the largest finite value of the storage is accepted
    ix = cliprt.Index(3, "ip", "f16")
    ix.add(np.array([[65504.0, -65504.0, 1.0]]))
    np.testing.assert_array_equal(ix.reconstruct(0), [65504.0, -65504.0, 1.0])


# (name, exception, kwargs / queries); run against every storage
def _bad_searches(q):
    return [
        ("wrong dim", ValueError, dict(queries=np.ones((2, DIM + 2)))),
        ("wrong dim 1-D", ValueError, dict(queries=np.ones(DIM + 1))),
        ("3-D", ValueError, dict(queries=np.ones((1, 2, DIM)))),
        ("0-D", ValueError, dict(queries=np.float64(1.0))),
        ("str dtype", TypeError, dict(queries=np.array(["1"] * DIM))),
        ("object dtype", TypeError, dict(queries=np.array([1.0] * DIM, dtype=object))),
        ("int dtype", TypeError, dict(queries=np.ones(DIM, dtype=np.int64))),
        ("NaN", ValueError, dict(queries=np.where(np.arange(DIM) == DIM - 1, np.nan, q[0]))),
        ("Inf", ValueError, dict(queries=np.where(np.arange(DIM) == 0, np.inf, q[0]))),
        ("-Inf", ValueError, dict(queries=np.where(np.arange(DIM) == 0, -np.inf, q[0]))),
        ("k=0", ValueError, dict(k=0)),
        ("k=-1", ValueError, dict(k=-1)),
        ("k=True", TypeError, dict(k=True)),
        ("k=False", TypeError, dict(k=False)),
        ("k=2.0", TypeError, dict(k=2.0)),
        ("k=2.5", TypeError, dict(k=2.5)),
        ("k='3'", TypeError, dict(k="3")),
        ("k=None", TypeError, dict(k=None)),
        ("rescore=-1", ValueError, dict(rescore=-1)),
        ("rescore=True", TypeError, dict(rescore=True)),
        ("rescore=1.5", TypeError, dict(rescore=1.5)),
        ("threads=0", ValueError, dict(threads=0)),
        ("threads=1.0", TypeError, dict(threads=1.0)),
        ("allow float", TypeError, dict(allow=[1.0, 2.0])),
        ("allow 2-D", ValueError, dict(allow=[[0, 3], [6, 9]])),
    ]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("storage", STORAGES)
def test_bad_search_arguments(storage, metric):
    ix, q = _populated(storage, metric)
    before = _snapshot(ix, q)
    for name, exc, kw in _bad_searches(q):
        kw = dict(kw)
        queries = kw.pop("queries", q)
        with pytest.raises(exc):
            ix.search(queries, **kw)
    _assert_unchanged(ix, q, before)
    # numpy integers are integers
    s, i = ix.search(q, k=np.int64(3), rescore=np.int32(0), threads=np.uint8(1))
    assert s.shape == (4, 3)


@pytest.mark.parametrize("storage", STORAGES)
def test_zero_query_cosine_rejected(storage):
    ix, q = _populated(storage, "cosine")
    with pytest.raises(ValueError):
        ix.search(np.zeros(DIM), k=3)
    with pytest.raises(ValueError):
        ix.search(np.stack([q[0], np.zeros(DIM, np.float32)]), k=3)


@pytest.mark.parametrize("storage,keep", [("f32", None), ("f16", None), ("bf16", None), ("f32", False),
                                          ("i8", False), ("b1", False)])
def test_rescore_without_originals(storage, keep):
    ix = cliprt.Index(DIM, "ip", storage, keep_originals=keep)
    assert ix.keep_originals is False
    assert ix.default_rescore == 0
    ix.add(_rows(20))
    with pytest.raises(ValueError, match="keep_originals"):
        ix.search(_rows(1), k=3, rescore=2)
    # rescore None / 0 / False work
    for r in (None, 0, False):
        s, i = ix.search(_rows(1), k=3, rescore=r)
        assert i.shape == (1, 3) and np.all(i >= 0)


@pytest.mark.parametrize("storage", STORAGES)
def test_keep_originals_defaults(storage):
    ix = cliprt.Index(DIM, "cosine", storage)
    assert ix.keep_originals == (storage in ("i8", "b1"))
    assert ix.default_rescore == ref.DEFAULT_RESCORE[storage]
    assert ix.dim == DIM and ix.metric == "cosine" and ix.storage == storage


@pytest.mark.parametrize("storage,rescore", [("f32", 0), ("f16", 2), ("bf16", 2)])
def test_default_rescore_when_float_storage_keeps_originals(storage, rescore):
    ix = cliprt.Index(DIM, "cosine", storage, keep_originals=True)
    assert ix.default_rescore == rescore


@pytest.mark.parametrize("kwargs,exc", [
    (dict(dim=4, metric="l2"), ValueError),
    (dict(dim=4, metric="COSINE"), ValueError),
    (dict(dim=4, storage="f64"), ValueError),
    (dict(dim=4, storage="int8"), ValueError),
    (dict(dim=0), ValueError),
    (dict(dim=-3), ValueError),
    (dict(dim=65537), ValueError),
    (dict(dim=4.0), TypeError),
    (dict(dim=True), TypeError),
    (dict(dim="4"), TypeError),
])
def test_bad_constructor_arguments(kwargs, exc):
    with pytest.raises(exc):
        cliprt.Index(**kwargs)


@pytest.mark.parametrize("storage", STORAGES)
def test_bad_remove_and_reconstruct_arguments(storage):
    ix, q = _populated(storage, "ip")
    before = _snapshot(ix, q)
    with pytest.raises(TypeError):
        ix.remove([3.0])
    with pytest.raises(ValueError):
        ix.remove([[3, 6]])
    with pytest.raises(TypeError):
        ix.reconstruct([3.0])
    with pytest.raises(KeyError):
        ix.reconstruct([3, 4])  # 4 was never stored (ids are multiples of 3)
    _assert_unchanged(ix, q, before)


# ---------------------------------------------------------------------------------------
# hypothesis properties

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                    HealthCheck.too_slow])


@st.composite
def search_case(draw, storages=STORAGES):
    return dict(
        storage=draw(st.sampled_from(storages)),
        metric=draw(st.sampled_from(METRICS)),
        dim=draw(st.integers(1, 40)),
        n=draw(st.integers(0, 80)),
        nq=draw(st.integers(1, 5)),
        k=draw(st.integers(1, 100)),
        dup=draw(st.booleans()),      # duplicate some rows (exact ties)
        scale=draw(st.sampled_from([1.0, 1e-3, 1e3])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _make(case):
    rng = np.random.default_rng(case["seed"])
    n, d = case["n"], case["dim"]
    x = (rng.standard_normal((n, d)) * case["scale"]).astype(np.float32)
    if case["dup"] and n >= 2:
        src = rng.integers(0, n, n // 2)
        x[rng.integers(0, n, n // 2)] = x[src]
    q = (rng.standard_normal((case["nq"], d)) * case["scale"]).astype(np.float32)
    ids = rng.permutation(4 * n + 1)[:n].astype(np.int64)
    return rng, x, q, ids


@PROPERTY_SETTINGS
@given(case=search_case())
def test_property_search_results(simd_variant, case):
    rng, x, q, ids = _make(case)
    storage, metric, k = case["storage"], case["metric"], case["k"]
    ix = cliprt.Index(case["dim"], metric, storage)
    ix.add(x, ids=ids)
    s, i = ix.search(q, k=k, rescore=0)
    assert s.shape == (len(q), k) and i.shape == (len(q), k)
    code_s, code_a = ref.scores(storage, metric, q, x, return_abs=True)
    tol = ref.tolerances(storage, code_a)
    for r in range(len(q)):
        # sorted, no duplicates, (-inf, -1) padding, scores match the reference
        ref.assert_topk_matches(s[r], i[r], code_s[r], ids, k, tol[r], f"q{r}")
    s, i = ix.search(q, k=k)
    assert s.shape == (len(q), k)
    if ix.default_rescore:
        exact_s, exact_a = ref.exact_scores(metric, q, x, return_abs=True)
        etol = ref.tolerances("rescore", exact_a)
        for r in range(len(q)):
            ref.assert_rescored_matches(s[r], i[r], code_s[r], exact_s[r], ids, k, k * ix.default_rescore,
                                        tol[r], etol[r], f"rescored q{r}")


@PROPERTY_SETTINGS
@given(case=search_case(storages=("f32",)), n_removed=st.integers(0, 30), n_allowed=st.integers(-1, 90))
def test_property_f32_matches_reference(case, n_removed, n_allowed):
    rng, x, q, ids = _make(case)
    metric, k, n = case["metric"], case["k"], case["n"]
    ix = cliprt.Index(case["dim"], metric, "f32")
    ix.add(x, ids=ids)
    removed = ids[rng.permutation(n)[: min(n_removed, n)]]
    assert ix.remove(removed) == len(removed)
    live = ~np.isin(ids, removed)
    allow = None
    if n_allowed >= 0:  # -1: no allow-list
        allow = np.concatenate([ids[rng.permutation(n)[: min(n_allowed, n)]], [4 * n + 7]])
        live &= np.isin(ids, allow)
    s, i = ix.search(q, k=k, allow=allow)
    ref_s, ref_a = ref.exact_scores(metric, q, x[live], return_abs=True)
    tol = ref.tolerances("f32", ref_a)
    for r in range(len(q)):
        ref.assert_topk_matches(s[r], i[r], ref_s[r], ids[live], k, tol[r], f"q{r}")
        # tie-aware exactness: the reference's ids strictly above the k-th best by more
        # than the tolerance are all returned
        if live.sum():
            kth = np.sort(ref_s[r])[::-1][min(k, live.sum()) - 1]
            must = ids[live][ref_s[r] > kth + tol[r]]
            assert np.isin(must, i[r]).all()


@pytest.mark.parametrize("k,r", [(1, 640), (10, 64), (100, 7), (1000, 4)])
def test_b1_default_candidate_pool(k, r):
    """b1 keeps max(640, 4k) candidates by default rather than growing R*k linearly."""
    assert cliprt.Index(DIM, "cosine", "b1").default_rescore_for(k) == r
    assert cliprt.Index(DIM, "cosine", "i8").default_rescore_for(k) == 2


def test_storage_specs():
    from cliprt.index import parse_storage_spec

    assert parse_storage_spec("i8") == ("i8", None)
    assert parse_storage_spec("b1@0") == ("b1", 0)
    assert parse_storage_spec("bf16@12") == ("bf16", 12)
    for bad in ("", "int8", "i8@", "i8@-1", "b1@x", "@2", "f32@1@2"):
        with pytest.raises(ValueError, match="unknown storage"):
            parse_storage_spec(bad)
