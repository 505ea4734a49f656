"""Float64 numpy oracles for cliprt's codecs, scores and top-k contract.

Everything here is written from the specification in csrc/include/cliprt/codec.h,
scan.h and types.h (and the scalar reference kernels in csrc/src/cpu/scan_scalar.cpp),
not from the library's output:

* ``encode``/``decode`` reproduce the storage codecs bit for bit.
* ``scores`` is the float64 score of the *prepared* query against the dequantised
  database rows, exactly as scan.h defines it (the library computes the same quantity
  with float32 arithmetic, hence the tolerances below).
* ``exact_scores`` is the float64 score of the (normalised) float32 query against the
  (normalised) float32 originals: what exact rescoring returns.
* ``exact_topk`` orders by score descending, then id ascending.
* ``assert_topk_matches`` / ``assert_rescored_matches`` compare a library result with
  the oracle without depending on how near-ties (within the tolerance) were resolved.
"""
from __future__ import annotations

import numpy as np

STORAGES = ("f32", "f16", "bf16", "i8", "b1")
METRICS = ("cosine", "ip")
# Effective default rescoring of an index created with the default keep_originals.
DEFAULT_RESCORE = {"f32": 0, "f16": 0, "bf16": 0, "i8": 2, "b1": 64}

F32_EPS = float(np.finfo(np.float32).eps)  # 2**-23; unit roundoff u = eps / 2

# Tolerances, relative to the "absolute dot" sum_d |q_d| * |x_d| of the prepared query
# and the dequantised row (see ``scores(..., return_abs=True)``), taken as the largest
# value over the rows for one query. Every rounding error of a dot product is bounded by
# (number of roundings) * u * (that absolute dot), so this is the natural scale; a real
# mistake (a dropped or wrong dimension, a wrong code, a wrong scale) moves a score by at
# least ~|q_d x_d| ~ absdot / D >= 1.3e-3 * absdot for D <= 771, two orders of magnitude
# above every tolerance here.
#   f32, f16, bf16: float32 accumulation over D terms (FMA or not, any order). The worst
#     case is D * u * absdot (= 4.6e-5 at D = 771), the random-walk expectation is about
#     sqrt(D) * u * absdot (~ 1.7e-6 at D = 771). 2e-5 keeps a > 10x margin over the
#     realistic error while still catching any single-dimension mistake. f16 and bf16
#     widen exactly to float32, so they share the f32 error model.
#   i8, b1: the integer dot is exact (|dot| <= 771 * 127^2 < 2^24, so the conversion to
#     float32 is exact too); only the two float32 multiplications by the scales round:
#     <= 2 u |score| <= 1.2e-7 absdot. 1e-6 leaves an 8x margin.
#   rescore: float64 accumulation of float32 products, one final rounding to float32:
#     u * |score| + D * 2^-53 * absdot; 1e-6 is generous and still tight.
TOL = {"f32": 2e-5, "f16": 2e-5, "bf16": 2e-5, "i8": 1e-6, "b1": 1e-6, "rescore": 1e-6}
# Floor for the absolute tolerance (all-zero rows give absdot = 0).
ATOL_FLOOR = 1e-30


# ---------------------------------------------------------------------------------------
# scalar conversions

def f16_round(x) -> np.ndarray:
    """float32 -> IEEE binary16 (round to nearest even) -> float32."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def bf16_bits(x) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even on the float32 bits."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    r = np.where(nan, (b >> 16) | 0x40, r)
    return (r & 0xFFFF).astype(np.uint16)


def bf16_to_f32(bits) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def bf16_round(x) -> np.ndarray:
    return bf16_to_f32(bf16_bits(x))


# ---------------------------------------------------------------------------------------
# normalisation and codecs

def normalize(x) -> np.ndarray:
    """L2-normalised float32 rows (metric='cosine'). The spec: normalise in float64, cast
    to float32. The library does it as sum of squares in float64 (sequential), 1/norm
    rounded to float32, one float32 multiply per element, which equals the spec within
    one ulp; we mirror that recipe so the i8/bf16 codes compare bit-exactly. Where 1/norm
    is not representable in float32 (norm < 1/FLT_MAX, i.e. tiny nonzero vectors) the
    recipe would give inf; there the spec (float64 normalisation) is used."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    x64 = x.astype(np.float64)
    ss = np.cumsum(x64 * x64, axis=1)[:, -1] if x.shape[1] else np.zeros(x.shape[0])
    if np.any(~(ss > 0)):
        raise ValueError("zero vector cannot be normalised")
    inv64 = 1.0 / np.sqrt(ss)
    with np.errstate(over="ignore"):
        inv = inv64.astype(np.float32)
    out = (x * np.where(np.isfinite(inv), inv, np.float32(1))[:, None]).astype(np.float32)
    big = ~np.isfinite(inv)
    if big.any():
        out[big] = (x64[big] * inv64[big, None]).astype(np.float32)
    return out


def prepare(metric: str, x) -> np.ndarray:
    """The float32 rows the codecs see: normalised for cosine, as given for ip."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    return normalize(x) if metric == "cosine" else x


def encode(storage: str, x):
    """Encodes float32 rows (n, D) -> (codes, scale).

    codes: f32 float32, f16 float16, bf16 uint16 bit patterns, i8 int8, b1 uint8 bits
    (0/1, one per dimension); scale: float32 (n,) (1 for f32/f16/bf16)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    n, d = x.shape
    scale = np.ones(n, dtype=np.float32)
    if storage == "f32":
        return x.copy(), scale
    if storage == "f16":
        return x.astype(np.float16), scale
    if storage == "bf16":
        return bf16_bits(x), scale
    if storage == "i8":
        # codec.h: scale = max|x| / 127, code = rint(x * (127 / max|x|)) clamped to
        # [-127, 127], computed in float32 like the encoder. Where 127 / max|x| overflows
        # float32 (max|x| < ~3.7e-37) the float32 recipe is meaningless (0 * inf); the
        # spec's real-number value (float64) is used instead.
        amax = np.max(np.abs(x), axis=1).astype(np.float32)
        nz = amax > 0
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            inv = (np.float32(127.0) / np.where(nz, amax, np.float32(1))).astype(np.float32)
        ok = nz & np.isfinite(inv)
        v = np.zeros_like(x)
        v[ok] = np.rint((x[ok] * inv[ok, None]).astype(np.float32))
        tiny = nz & ~np.isfinite(inv)
        if tiny.any():
            v[tiny] = np.rint(x[tiny].astype(np.float64) * (127.0 / amax[tiny].astype(np.float64))[:, None])
        codes = np.clip(v, -127, 127).astype(np.int8)
        scale = np.where(nz, (amax / np.float32(127.0)).astype(np.float32), np.float32(0)).astype(np.float32)
        return codes, scale
    if storage == "b1":
        bits = (x > 0).astype(np.uint8)
        x64 = x.astype(np.float64)
        s = np.sqrt(np.cumsum(x64 * x64, axis=1)[:, -1] / d)  # sequential, float64
        return bits, s.astype(np.float32)
    raise ValueError(storage)


def decode(storage: str, codes, scale) -> np.ndarray:
    """Dequantised float32 rows (n, D)."""
    scale = np.asarray(scale, dtype=np.float32)
    if storage == "f32":
        return np.asarray(codes, dtype=np.float32).copy()
    if storage == "f16":
        return np.asarray(codes, dtype=np.float16).astype(np.float32)
    if storage == "bf16":
        return bf16_to_f32(codes)
    if storage == "i8":
        return (np.asarray(codes).astype(np.float32) * scale[:, None]).astype(np.float32)
    if storage == "b1":
        c = np.asarray(codes).astype(bool)
        return np.where(c, scale[:, None], -scale[:, None]).astype(np.float32)
    raise ValueError(storage)


def stored(storage: str, metric: str, x) -> np.ndarray:
    """What reconstruct() must return for rows x added to an index."""
    codes, scale = encode(storage, prepare(metric, x))
    return decode(storage, codes, scale)


# ---------------------------------------------------------------------------------------
# scores

def scores(storage: str, metric: str, queries, db, return_abs: bool = False):
    """float64 (nq, n) scores of the prepared queries against the dequantised rows, as
    scan.h defines them. With return_abs, also sum_d |q_d| |x_d| of the same operands
    (the scale of the rounding error of the float32 computation)."""
    q = prepare(metric, queries)
    x = prepare(metric, db)
    nq, d = q.shape
    if x.shape[0] == 0:
        z = np.zeros((nq, 0))
        return (z, z) if return_abs else z
    codes, xscale = encode(storage, x)
    if storage in ("f32", "f16", "bf16"):
        xd = decode(storage, codes, xscale).astype(np.float64)
        qd = (bf16_round(q) if storage == "bf16" else q).astype(np.float64)
        s = qd @ xd.T
        a = np.abs(qd) @ np.abs(xd).T
    elif storage == "i8":
        qc, qscale = encode("i8", q)
        qc64, xc64 = qc.astype(np.int64), codes.astype(np.int64)
        dot = qc64 @ xc64.T
        sc = qscale.astype(np.float64)[:, None] * xscale.astype(np.float64)[None, :]
        s = dot.astype(np.float64) * sc
        a = (np.abs(qc64) @ np.abs(xc64).T).astype(np.float64) * sc
    elif storage == "b1":
        qb, qscale = encode("b1", q)
        qb64, xb64 = qb.astype(np.int64), codes.astype(np.int64)
        ham = qb64 @ (1 - xb64).T + (1 - qb64) @ xb64.T
        sc = qscale.astype(np.float64)[:, None] * xscale.astype(np.float64)[None, :]
        s = (d - 2 * ham).astype(np.float64) * sc
        a = d * sc
    else:
        raise ValueError(storage)
    return (s, a) if return_abs else s


def exact_scores(metric: str, queries, db, return_abs: bool = False):
    """float64 scores of the float32 (normalised) queries against the float32
    (normalised) originals: what exact rescoring computes."""
    q = prepare(metric, queries).astype(np.float64)
    x = prepare(metric, db).astype(np.float64)
    if x.shape[0] == 0:
        z = np.zeros((q.shape[0], 0))
        return (z, z) if return_abs else z
    s = q @ x.T
    return (s, np.abs(q) @ np.abs(x).T) if return_abs else s


def tolerances(storage: str, absdot) -> np.ndarray:
    """Per-query absolute tolerance: TOL[storage] times the largest absolute dot of the
    query over the rows (``storage`` may also be "rescore")."""
    absdot = np.atleast_2d(absdot)
    m = absdot.max(axis=1) if absdot.shape[1] else np.zeros(absdot.shape[0])
    return TOL[storage] * m + ATOL_FLOOR


# ---------------------------------------------------------------------------------------
# top-k

def exact_topk(scores_, k: int, ids=None):
    """Top-k of each row of scores (1-D or 2-D) by score descending, then id ascending.
    Returns (scores, ids) padded with (-inf, -1) past the number of columns."""
    s = np.asarray(scores_, dtype=np.float64)
    single = s.ndim == 1
    s = np.atleast_2d(s)
    n = s.shape[1]
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    out_s = np.full((s.shape[0], k), -np.inf)
    out_i = np.full((s.shape[0], k), -1, dtype=np.int64)
    m = min(k, n)
    for r in range(s.shape[0]):
        order = np.lexsort((ids, -s[r]))[:m]
        out_s[r, :m] = s[r, order]
        out_i[r, :m] = ids[order]
    if single:
        return out_s[0], out_i[0]
    return out_s, out_i


def _check_structure(got_scores, got_ids, ids, k: int, what: str):
    got_scores = np.asarray(got_scores)
    got_ids = np.asarray(got_ids)
    assert got_scores.shape == (k,), f"{what}: scores shape {got_scores.shape}, expected ({k},)"
    assert got_ids.shape == (k,), f"{what}: ids shape {got_ids.shape}, expected ({k},)"
    assert got_scores.dtype == np.float32, f"{what}: scores dtype {got_scores.dtype}"
    assert got_ids.dtype == np.int64, f"{what}: ids dtype {got_ids.dtype}"
    n_avail = min(k, len(ids))
    tail_s, tail_i = got_scores[n_avail:], got_ids[n_avail:]
    assert np.all(np.isneginf(tail_s)) and np.all(tail_i == -1), (
        f"{what}: slots past the {n_avail} available rows must be (-inf, -1), got "
        f"scores {tail_s[:8]} ids {tail_i[:8]}")
    head_s, head_i = got_scores[:n_avail], got_ids[:n_avail]
    assert np.all(head_i >= 0), f"{what}: empty slot among the first {n_avail}: ids {head_i}"
    assert np.all(np.isfinite(head_s)), f"{what}: non-finite score among returned: {head_s}"
    assert len(np.unique(head_i)) == n_avail, f"{what}: duplicate ids returned: {head_i}"
    unknown = np.setdiff1d(head_i, ids)
    assert unknown.size == 0, f"{what}: returned ids that are not candidates: {unknown[:10]}"
    # Sorted by score descending, ties by smaller id.
    if n_avail > 1:
        ds = np.diff(head_s.astype(np.float64))
        assert np.all(ds <= 0), f"{what}: scores not sorted descending: {head_s}"
        tie = ds == 0
        assert np.all(np.diff(head_i)[tie] > 0), f"{what}: equal scores not ordered by id: {head_s} {head_i}"
    return head_s.astype(np.float64), head_i, n_avail


def assert_topk_matches(got_scores, got_ids, ref_scores_row, ids, k: int, tol: float, what: str = ""):
    """Tie-aware check of one result row against the reference.

    ref_scores_row[j] is the reference score of candidate ids[j] (the live / allowed
    rows). Checks: shapes and dtypes; (-inf, -1) past the available rows; no duplicate
    or unknown ids; sorted descending with ties by id; each returned score within tol of
    the reference score of its id; every returned id's reference score >= the true k-th
    best reference score - tol."""
    ids = np.asarray(ids, dtype=np.int64)
    ref = np.asarray(ref_scores_row, dtype=np.float64)
    assert ref.shape == ids.shape
    head_s, head_i, n_avail = _check_structure(got_scores, got_ids, ids, k, what)
    if n_avail == 0:
        return
    lookup = dict(zip(ids.tolist(), ref.tolist()))
    r = np.array([lookup[i] for i in head_i.tolist()])
    err = np.abs(head_s - r)
    bad = err > tol
    assert not bad.any(), (
        f"{what}: returned scores differ from the reference by up to {err.max():.3g} (tol {tol:.3g}); "
        f"ids {head_i[bad][:5]} got {head_s[bad][:5]} ref {r[bad][:5]}")
    kth = np.sort(ref)[::-1][n_avail - 1]
    low = r < kth - tol
    assert not low.any(), (
        f"{what}: returned ids {head_i[low][:5]} (ref {r[low][:5]}) are below the true "
        f"k-th best reference score {kth!r} - tol {tol:.3g}")


def assert_rescored_matches(got_scores, got_ids, code_ref_row, exact_ref_row, ids, k: int, n_candidates: int,
                            code_tol: float, exact_tol: float, what: str = ""):
    """Check of one rescored result row: the library keeps the n_candidates best by code
    score, then returns the k best of those by exact score.

    Tie-aware: every returned id must have a code score >= the n_candidates-th best code
    score - code_tol and a returned score within exact_tol of its exact score; every id
    that is surely a candidate (code score > that threshold + code_tol) and whose exact
    score beats the worst returned exact score by more than exact_tol must be returned."""
    ids = np.asarray(ids, dtype=np.int64)
    code = np.asarray(code_ref_row, dtype=np.float64)
    exact = np.asarray(exact_ref_row, dtype=np.float64)
    n_cand = min(n_candidates, len(ids))
    head_s, head_i, n_avail = _check_structure(got_scores, got_ids, ids, k, what)
    assert n_avail == min(k, n_cand)
    if n_avail == 0:
        return
    pos = {v: j for j, v in enumerate(ids.tolist())}
    idx = np.array([pos[i] for i in head_i.tolist()])
    err = np.abs(head_s - exact[idx])
    assert np.all(err <= exact_tol), (
        f"{what}: rescored scores differ from the exact scores by up to {err.max():.3g} (tol {exact_tol:.3g})")
    cthr = np.sort(code)[::-1][n_cand - 1]
    not_cand = code[idx] < cthr - code_tol
    assert not not_cand.any(), (
        f"{what}: ids {head_i[not_cand][:5]} returned although their code scores {code[idx][not_cand][:5]} are "
        f"below the {n_cand}-th best code score {cthr!r}")
    sure = code > cthr + code_tol
    worst = exact[idx].min()
    must = ids[sure & (exact > worst + exact_tol)]
    missing = np.setdiff1d(must, head_i)
    assert missing.size == 0, f"{what}: sure candidates {missing[:5]} with better exact scores were not returned"
