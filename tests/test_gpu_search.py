"""The device index (cliprt.Index on a CUDA device) against the CPU index and the float64
oracles in reference.py.

gpu-marked tests need a CUDA build and a visible device (conftest skips them otherwise,
with the reason). Every gpu test runs with the core's poison hook on: scratch buffers and
outputs are filled with 0xFF bytes before each launch, so a slot a kernel forgets to write
shows up as NaN or id -1 in the wrong place. i8 and b1 code scores are exact integer
arithmetic on both sides, so without rescoring the device results must equal the CPU's
bit for bit (ties broken by id); float storages and rescored results are checked against
the oracle with the per-storage tolerances. The non-gpu tests at the top check what a
machine without a device must do: raise a clear RuntimeError, never crash.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading

import numpy as np
import pytest

import cliprt
from cliprt import _core, _device

import reference as ref

STORAGES = ref.STORAGES


def _cuda_visible() -> bool:
    return bool(cliprt.build_info().get("cuda")) and getattr(_core, "cuda_device_count", lambda: 0)() > 0


def make_data(rng, n, d, metric="ip"):
    x = rng.standard_normal((n, d), dtype=np.float32)
    if metric == "ip" and n:
        x *= rng.uniform(0.25, 4.0, (n, 1)).astype(np.float32)
    return x


# ---------------------------------------------------------------------------------------
# without a device


@pytest.mark.skipif(_cuda_visible(), reason="a CUDA device is visible: the no-device error cannot be observed")
def test_cuda_without_device_raises_runtime_error(rng, tmp_path):
    ix = cliprt.Index(8, storage="i8")
    ix.add(rng.standard_normal((20, 8), dtype=np.float32))
    pattern = "no CUDA device|built without CUDA"
    for device in ("cuda", "cuda:0", "CUDA:1"):
        with pytest.raises(RuntimeError, match=pattern):
            ix.to(device)
    with pytest.raises(RuntimeError, match=pattern):
        cliprt.Index(8, device="cuda")
    ix.save(tmp_path / "ix")
    with pytest.raises(RuntimeError, match=pattern):
        cliprt.Index.load(tmp_path / "ix", device="cuda")
    assert len(ix) == 20 and ix.device == "cpu"  # the CPU index is untouched


def _emulation_skip_reason():
    if shutil.which("g++") is None:
        return "g++ not found"
    if not os.environ.get("CUDA_HOME") and shutil.which("nvcc") is None:
        return "no CUDA headers (neither CUDA_HOME nor nvcc)"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("part", ["kernels", "index"])
def test_device_code_under_cpu_emulation(part, tmp_path):
    """The CUDA kernels, and the whole device index on an emulated runtime, checked against
    the CPU core on a CPU emulation of CUDA (tests/cuda_emulation/): runs without a GPU."""
    reason = _emulation_skip_reason()
    if reason:
        pytest.skip(f"kernel emulation: {reason}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "tests", "cuda_emulation", "run_emulation.sh")
    proc = subprocess.run(["bash", script, part], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_device_names():
    assert _device.parse_device("cpu") is None
    assert _device.parse_device("cuda") == 0
    assert _device.parse_device(" cuda:3 ") == 3
    for bad in ("gpu", "cuda:", "cuda:-1", "cuda:x"):
        with pytest.raises(ValueError, match="unknown device"):
            _device.parse_device(bad)
    with pytest.raises(TypeError, match="device must be"):
        _device.parse_device(1.5)
    ix = cliprt.Index(4)
    assert ix.device == "cpu" and ix.to("cpu") is ix


def test_stream_handles():
    assert _device.stream_handle(None) is None
    assert _device.stream_handle(7) == 7
    with pytest.raises(ValueError, match=">= 0"):
        _device.stream_handle(-1)
    with pytest.raises(TypeError, match="stream must be"):
        _device.stream_handle("default")

    class Protocol:
        def __cuda_stream__(self):
            return (0, 1234)

    assert _device.stream_handle(Protocol()) == 1234


def test_cpu_index_takes_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((50, 16), dtype=np.float32)
    q = rng.standard_normal((3, 16), dtype=np.float32)
    ix = cliprt.Index(16, storage="bf16")
    ix.add(torch.from_numpy(x))
    s, i = ix.search(torch.from_numpy(q), k=5)
    s2, i2 = ix.search(q, k=5)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_array_equal(s, s2)
    with pytest.raises(TypeError, match="floating point"):
        ix.search(torch.zeros((2, 16), dtype=torch.int64), k=1)


# ---------------------------------------------------------------------------------------
# on a device

gpu = pytest.mark.gpu


@pytest.fixture
def poison():
    _core.cuda_set_debug(poison=True)
    try:
        yield
    finally:
        _core.cuda_set_debug()


def assert_same(got, want, what):
    np.testing.assert_array_equal(got[1], want[1], err_msg=f"{what}: ids")
    np.testing.assert_array_equal(got[0], want[0], err_msg=f"{what}: scores")


def check_code_results(storage, metric, q, x, ids, got, k, what):
    code_s, code_a = ref.scores(storage, metric, q, x, return_abs=True)
    tol = ref.tolerances(storage, code_a)
    s, i = got
    assert s.shape == (len(q), k) and i.shape == (len(q), k), what
    for r in range(len(q)):
        ref.assert_topk_matches(s[r], i[r], code_s[r], ids, k, tol[r], f"{what} q{r}")


def check_rescored(storage, metric, q, x, ids, got, k, n_cand, what):
    code_s, code_a = ref.scores(storage, metric, q, x, return_abs=True)
    exact_s, exact_a = ref.exact_scores(metric, q, x, return_abs=True)
    code_tol = ref.tolerances(storage, code_a)
    exact_tol = ref.tolerances("rescore", exact_a)
    s, i = got
    for r in range(len(q)):
        ref.assert_rescored_matches(s[r], i[r], code_s[r], exact_s[r], ids, k, n_cand, code_tol[r], exact_tol[r],
                                    f"{what} q{r}")


# dims: tile-aligned, odd, and the common CLIP widths; 6007 rows: no tile size divides it.
MATRIX = [(s, d, "cosine" if d in (64, 512) else "ip") for s in STORAGES for d in (64, 257, 512, 768)]


@gpu
@pytest.mark.parametrize("storage,dim,metric", MATRIX)
def test_matches_cpu(rng, poison, storage, dim, metric):
    n = 6007
    x = make_data(rng, n, dim, metric)
    cpu = cliprt.Index(dim, metric, storage)
    cpu.add(x)
    dev = cpu.to("cuda")
    assert dev.device == "cuda:0" and len(dev) == n
    ids = np.arange(n)
    exact = storage in ("i8", "b1")
    # 1 query (CUDA cores), 5 (CUDA cores, 8-query tile), 13 and 100 (tensor cores for
    # bf16 / i8 / b1: 64- and 128-query tiles)
    for nq in (1, 5, 13, 100):
        q = make_data(rng, nq, dim, metric)
        for k in (1, 10, 100, 1000, 5000):
            what = f"{storage}/{metric} dim={dim} nq={nq} k={k}"
            got = dev.search(q, k=k, rescore=0)
            if exact:
                assert_same(got, cpu.search(q, k=k, rescore=0), what)
            else:
                check_code_results(storage, metric, q, x, ids, got, k, what)
            r = dev.default_rescore_for(k)
            if r and k <= 1000:
                check_rescored(storage, metric, q, x, ids, dev.search(q, k=k), k, k * r, f"{what} rescored")


@gpu
@pytest.mark.parametrize("storage", STORAGES)
def test_k_past_rows_empty_and_one_row(rng, poison, storage):
    dim = 33
    empty = cliprt.Index(dim, storage=storage).to("cuda")
    s, i = empty.search(rng.standard_normal((3, dim), dtype=np.float32), k=4)
    assert np.all(np.isneginf(s)) and np.all(i == -1)
    for n in (1, 7):
        x = make_data(rng, n, dim)
        cpu = cliprt.Index(dim, "ip", storage)
        cpu.add(x)
        dev = cpu.to("cuda")
        q = make_data(rng, 4, dim)
        for k in (1, n, n + 3, 50):
            got = dev.search(q, k=k, rescore=0)
            check_code_results(storage, "ip", q, x, np.arange(n), got, k, f"{storage} n={n} k={k}")
            assert np.all(got[1][:, n:] == -1) and np.all(np.isneginf(got[0][:, n:]))


@gpu
@pytest.mark.parametrize("storage", STORAGES)
def test_ties_smaller_id_first(rng, poison, storage):
    dim, n = 48, 3000
    base = make_data(rng, 40, dim)
    x = base[rng.integers(0, 40, n)]  # every row repeated ~75 times: massive ties
    cpu = cliprt.Index(dim, "cosine", storage)
    cpu.add(x)
    dev = cpu.to("cuda")
    q = make_data(rng, 20, dim)
    for k in (1, 10, 300, 2500):
        got = dev.search(q, k=k, rescore=0)
        if storage in ("i8", "b1"):
            assert_same(got, cpu.search(q, k=k, rescore=0), f"{storage} k={k}")
        else:
            check_code_results(storage, "cosine", q, x, np.arange(n), got, k, f"{storage} k={k}")


@gpu
@pytest.mark.parametrize("storage", STORAGES)
def test_deleted_and_allowed(rng, poison, storage):
    dim, n = 70, 5000
    x = make_data(rng, n, dim)
    cpu = cliprt.Index(dim, "ip", storage)
    cpu.add(x)
    removed = rng.choice(n, 700, replace=False)
    cpu.remove(removed)
    dev = cpu.to("cuda")  # deletions copied
    more = rng.choice(np.setdiff1d(np.arange(n), removed), 300, replace=False)
    assert dev.remove(more) == cpu.remove(more) == 300  # deletions made on the device
    assert len(dev) == len(cpu) == n - 1000
    live = np.setdiff1d(np.arange(n), np.concatenate([removed, more]))
    q = make_data(rng, 9, dim)
    for k in (10, 1000):
        got = dev.search(q, k=k, rescore=0)
        assert not np.isin(got[1], removed).any() and not np.isin(got[1], more).any()
        check_code_results(storage, "ip", q, x[live], live, got, k, f"{storage} deleted k={k}")
    for allow in (live[:3], rng.choice(n, n // 2, replace=False), np.array([n + 5, 10**12]), np.zeros(0, np.int64)):
        got = dev.search(q, k=10, rescore=0, allow=allow)
        want = cpu.search(q, k=10, rescore=0, allow=allow)
        allowed = np.intersect1d(allow, live)
        if storage in ("i8", "b1"):
            assert_same(got, want, f"{storage} allow {len(allow)}")
        else:
            check_code_results(storage, "ip", q, x[allowed], allowed, got, 10, f"{storage} allow {len(allow)}")


@gpu
@pytest.mark.parametrize("storage", STORAGES)
def test_device_add_encodes_like_cpu(rng, poison, storage):
    dim = 257
    x = make_data(rng, 1500, dim, "cosine")
    ids = rng.choice(10**9, 1000, replace=False)
    cpu = cliprt.Index(dim, "cosine", storage, keep_originals=True)
    dev = cliprt.Index(dim, "cosine", storage, keep_originals=True, device="cuda")
    np.testing.assert_array_equal(dev.add(x[:1000], ids=ids), cpu.add(x[:1000], ids=ids))
    np.testing.assert_array_equal(dev.add(x[1000:]), cpu.add(x[1000:]))
    np.testing.assert_array_equal(dev.ids(), cpu.ids())
    probe = np.concatenate([ids[:50], cpu.ids()[-50:]])
    np.testing.assert_array_equal(dev.reconstruct(probe).view(np.uint32), cpu.reconstruct(probe).view(np.uint32))
    back = dev.to("cpu")
    np.testing.assert_array_equal(back.reconstruct(probe).view(np.uint32), cpu.reconstruct(probe).view(np.uint32))
    q = make_data(rng, 6, dim)
    assert_same(back.search(q, k=20), cpu.search(q, k=20), f"{storage} add -> to('cpu')")
    # rejected adds: the CPU's messages, nothing stored
    bad = x[:4].copy()
    bad[2, 9] = np.nan
    for index in (cpu, dev):
        with pytest.raises(ValueError, match=r"vectors contain NaN or Inf \(row 2, column 9\)"):
            index.add(bad)
        with pytest.raises(ValueError, match="already in the index"):
            index.add(x[:1], ids=ids[:1])
    assert len(dev) == len(cpu) == 1500
    with pytest.raises(KeyError):
        dev.reconstruct([-5])


@gpu
def test_device_add_from_device_arrays(rng, poison):
    cp = pytest.importorskip("cupy")
    torch = pytest.importorskip("torch")
    dim = 96
    x = make_data(rng, 900, dim, "cosine")
    cpu = cliprt.Index(dim, "cosine", "i8")
    cpu.add(x)
    for lib, arr in (("cupy", cp.asarray(x)), ("torch", torch.from_numpy(x).cuda().double())):
        dev = cliprt.Index(dim, "cosine", "i8", device="cuda")
        dev.add(arr)
        np.testing.assert_array_equal(dev.reconstruct(np.arange(900)).view(np.uint32),
                                      cpu.reconstruct(np.arange(900)).view(np.uint32), err_msg=lib)


@gpu
def test_round_trip_and_save(rng, poison, tmp_path):
    dim = 130
    x = make_data(rng, 4000, dim, "cosine")
    cpu = cliprt.Index(dim, "cosine", "b1")
    cpu.add(x)
    cpu.remove(np.arange(0, 4000, 9))
    back = cpu.to("cuda").to("cpu")
    assert back.device == "cpu" and len(back) == len(cpu)
    np.testing.assert_array_equal(back.ids(), cpu.ids())
    q = make_data(rng, 7, dim)
    assert_same(back.search(q, k=15), cpu.search(q, k=15), "round trip")
    dev = cpu.to("cuda")
    dev.save(tmp_path / "ix")
    loaded = cliprt.Index.load(tmp_path / "ix", device="cuda")
    assert loaded.device == "cuda:0"
    assert_same(loaded.search(q, k=15), dev.search(q, k=15), "saved and loaded")


@gpu
def test_large_index_uses_sampled_threshold(rng, poison):
    # more rows than the small-scan limit: thresholds come from a sample of the rows
    dim, n = 64, 120_000
    x = make_data(rng, n, dim, "cosine")
    for storage in ("i8", "bf16"):
        cpu = cliprt.Index(dim, "cosine", storage)
        cpu.add(x)
        dev = cpu.to("cuda")
        for nq in (1, 40):
            q = make_data(rng, nq, dim)
            for k in (10, 1000):
                got = dev.search(q, k=k, rescore=0)
                if storage == "i8":
                    assert_same(got, cpu.search(q, k=k, rescore=0), f"{storage} nq={nq} k={k}")
                else:
                    check_code_results(storage, "cosine", q, x, np.arange(n), got, k, f"{storage} nq={nq} k={k}")


@gpu
@pytest.mark.parametrize("storage", ["f32", "bf16", "i8", "b1"])
def test_forced_sample_and_overflow_give_same_results(rng, poison, storage):
    dim, n = 64, 20_000
    cpu = cliprt.Index(dim, "ip", storage)
    cpu.add(make_data(rng, n, dim))
    dev = cpu.to("cuda")
    q = make_data(rng, 30, dim)
    want = dev.search(q, k=100, rescore=0)
    try:
        for knobs in ({"force_sample": True}, {"cap_limit": 2}, {"force_sample": True, "cap_limit": 5}):
            _core.cuda_set_debug(poison=True, **knobs)
            assert_same(dev.search(q, k=100, rescore=0), want, f"{storage} {knobs}")
    finally:
        _core.cuda_set_debug(poison=True)


@gpu
def test_query_errors_match_cpu(rng, poison):
    dim = 40
    cpu = cliprt.Index(dim, "cosine", "i8")
    cpu.add(make_data(rng, 100, dim))
    dev = cpu.to("cuda")
    q = make_data(rng, 3, dim)
    bad = q.copy()
    bad[1, 7] = np.inf
    zero = q.copy()
    zero[2] = 0
    for queries, exc, pattern in ((bad, ValueError, r"queries contain NaN or Inf \(row 1, column 7\)"),
                                  (zero, ValueError, "query 2 has zero norm"),
                                  (q[:, :5], ValueError, "queries have dim 5, index has dim 40"),
                                  (q.astype(np.int64), TypeError, "floating point")):
        for index in (cpu, dev):
            with pytest.raises(exc, match=pattern):
                index.search(queries, k=3)
    for index in (cpu, dev):
        with pytest.raises(ValueError, match="k must be >= 1"):
            index.search(q, k=0)
    cp = pytest.importorskip("cupy")
    with pytest.raises(ValueError, match=r"queries contain NaN or Inf \(row 1, column 7\)"):
        dev.search(cp.asarray(bad), k=3)
    with pytest.raises(TypeError, match="floating point"):
        dev.search(cp.zeros((2, dim), dtype=cp.int32), k=3)


@gpu
def test_query_kinds_and_result_types(rng, poison):
    dim = 64
    cpu = cliprt.Index(dim, "cosine", "bf16")
    cpu.add(make_data(rng, 3000, dim))
    dev = cpu.to("cuda")
    q = make_data(rng, 12, dim)
    want = dev.search(q, k=10)
    assert isinstance(want[0], np.ndarray) and want[0].dtype == np.float32 and want[1].dtype == np.int64
    s1, i1 = dev.search(q[0], k=10)
    assert s1.shape == (10,)
    np.testing.assert_array_equal(i1, want[1][0])
    cp = pytest.importorskip("cupy")
    for arr in (cp.asarray(q), cp.asarray(q, dtype=cp.float64), cp.asfortranarray(cp.asarray(q))):
        s, i = dev.search(arr, k=10)
        assert isinstance(s, cp.ndarray) and s.dtype == cp.float32 and i.dtype == cp.int64
        assert_same((cp.asnumpy(s), cp.asnumpy(i)), want, f"cupy {arr.dtype}")
    s, i = dev.search(cp.asarray(q[3]), k=10)
    assert s.shape == (10,) and isinstance(s, cp.ndarray)
    torch = pytest.importorskip("torch")
    for t in (torch.from_numpy(q).cuda(), torch.from_numpy(q).cuda().half().float(), torch.from_numpy(q).cuda().t().t()):
        s, i = dev.search(t, k=10)
        assert isinstance(s, torch.Tensor) and s.is_cuda and s.dtype == torch.float32 and i.dtype == torch.int64
    s, i = dev.search(torch.from_numpy(q).cuda(), k=10)
    assert_same((s.cpu().numpy(), i.cpu().numpy()), want, "torch")
    s, i = dev.search(torch.from_numpy(q), k=10)  # a CPU tensor is a host query
    assert isinstance(s, np.ndarray)


@gpu
def test_stream_argument(rng, poison):
    cp = pytest.importorskip("cupy")
    torch = pytest.importorskip("torch")
    dim = 128
    cpu = cliprt.Index(dim, "ip", "i8")
    cpu.add(make_data(rng, 5000, dim))
    dev = cpu.to("cuda")
    q = make_data(rng, 20, dim)
    want = cpu.search(q, k=25, rescore=0)
    cs = cp.cuda.Stream(non_blocking=True)
    ts = torch.cuda.Stream()
    for stream in (cs, ts, cs.ptr, 0, None):
        assert_same(dev.search(q, k=25, rescore=0, stream=stream), want, f"host queries, stream {stream!r}")
    with cs:
        qd = cp.asarray(q) * 1  # produced on cs
        s, i = dev.search(qd, k=25, rescore=0, stream=cs)
        assert_same((cp.asnumpy(s), cp.asnumpy(i)), want, "cupy stream")
    with torch.cuda.stream(ts):
        qt = torch.from_numpy(q).cuda() * 1
        s, i = dev.search(qt, k=25, rescore=0, stream=ts)
        ts.synchronize()
        assert_same((s.cpu().numpy(), i.cpu().numpy()), want, "torch stream")
    # default stream: the search waits for the producer's current stream
    qd = cp.asarray(q) * 1
    s, i = dev.search(qd, k=25, rescore=0)
    assert_same((cp.asnumpy(s), cp.asnumpy(i)), want, "producer stream")


@gpu
def test_threads(rng, poison):
    dim = 96
    cpu = cliprt.Index(dim, "cosine", "i8")
    cpu.add(make_data(rng, 20_000, dim))
    dev = cpu.to("cuda")
    queries = [make_data(rng, nq, dim) for nq in (1, 3, 16, 64, 200, 1, 9, 33)]
    want = [dev.search(q, k=30) for q in queries]
    errors = []

    def work(t):
        try:
            for rep in range(5):
                j = (t + rep) % len(queries)
                assert_same(dev.search(queries[j], k=30), want[j], f"thread {t} rep {rep}")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
