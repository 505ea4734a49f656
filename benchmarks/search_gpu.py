#!/usr/bin/env python3
"""GPU search benchmark: the cliprt device index against torch (matmul + topk, same
precision) and cupy (matmul + argpartition), on one CUDA device, in one run.

Measures, with CUDA events (median of many runs after warm-up, query batches rotated so
repeats do not hit caches):
  * the device's copy bandwidth (device-to-device copy, bytes read + written per second)
    and tensor/CUDA-core rates (torch.mm peaks: bf16, f16, f32, int8);
  * cliprt code-scan searches (rescore=0) for N in {1M, 10M}, D = 512, Q in {1, 32, 1024,
    16384}, k in {10, 100, 1000}, every storage; the databases are built on the device from
    device arrays (the device encoder), never through the host;
  * the same searches with torch and cupy where they have that precision;
  * recall@10 of each storage against exact float32 (clustered data, Q = 32, N = 1M), with
    and without cliprt's default rescoring.
Each result is set against its roofline: bytes scanned / copy bandwidth and FLOPs / the
measured rate of the matching unit; the slower of the two is the floor.

Writes --json (every measurement) and --out (a markdown table naming the GPU). A time budget
(--budget seconds) skips the remaining, most expensive configurations when it runs out, and
any configuration whose single run would take longer than --max-call seconds is measured
once or skipped; skips are reported, never silent.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

DIM = 512
STORAGES = ("i8", "bf16", "b1", "f16", "f32")  # the targets (i8, bf16) first
QS = (1, 32, 1024, 16384)
KS = (10, 100, 1000)
ROW_BYTES = {"f32": 4 * DIM, "f16": 2 * DIM, "bf16": 2 * DIM, "i8": DIM, "b1": DIM // 8}
# The unit each storage's scan runs on at large Q (cliprt: f32/f16 on CUDA cores, bf16 on
# bf16 tensor cores, i8 and b1 (as +-1 int8) on int8 tensor cores).
UNIT = {"f32": "f32", "f16": "f32", "bf16": "bf16", "i8": "int8", "b1": "int8"}


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001 - informational only
        return ""


class Clock:
    def __init__(self, budget):
        self.t0 = time.time()
        self.budget = budget

    def left(self):
        return self.budget - (time.time() - self.t0)


def time_calls(torch, fn, n_inputs, max_call, target=0.5, max_reps=50):
    """Median/p10/p90 milliseconds of fn(i) (i rotates over n_inputs), timed with CUDA
    events on the current stream; one warm-up call; returns None when the warm-up alone
    exceeds max_call seconds."""
    t = time.time()
    fn(0)
    torch.cuda.synchronize()
    first = time.time() - t
    if first > max_call:
        return None, first
    reps = int(min(max_reps, max(3, target / max(first, 1e-6))))
    times = []
    for r in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn((r + 1) % n_inputs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {"ms": statistics.median(times), "p10": times[len(times) // 10], "p90": times[(len(times) * 9) // 10],
            "reps": reps}, first


def copy_bandwidth(torch):
    n = 2 << 30  # 2 GiB per buffer
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del src, dst
    return 2 * n / statistics.median(times)


def peak_rates(torch):
    """FLOP/s (int8: OP/s) of large square matmuls: the tensor-core and CUDA-core peaks."""
    out = {}
    m = 8192
    for name, dt in (("bf16", torch.bfloat16), ("f16", torch.float16), ("f32", torch.float32)):
        a = torch.randn(m, m, device="cuda", dtype=dt)
        b = torch.randn(m, m, device="cuda", dtype=dt)
        torch.backends.cuda.matmul.allow_tf32 = False
        r, _ = time_calls(torch, lambda i: a @ b, 1, 10.0, target=0.3, max_reps=10)
        out[name] = 2 * m ** 3 / (r["ms"] / 1e3)
        del a, b
    try:
        a = torch.randint(-127, 127, (m, m), device="cuda", dtype=torch.int8)
        b = torch.randint(-127, 127, (m, m), device="cuda", dtype=torch.int8).t()
        r, _ = time_calls(torch, lambda i: torch._int_mm(a, b), 1, 10.0, target=0.3, max_reps=10)
        out["int8"] = 2 * m ** 3 / (r["ms"] / 1e3)
    except Exception:  # noqa: BLE001 - no int8 matmul in this torch: assume 2x bf16
        out["int8"] = 2 * out["bf16"]
    return out


def clustered(torch, n, centers, gen, noise=0.35):
    """Rows near random cluster centres, L2-normalised, float32 on the device (built in
    chunks so a 10M x 512 database needs no more than its own 20 GB)."""
    x = torch.empty(n, DIM, device="cuda")
    step = 1 << 20
    for c0 in range(0, n, step):
        m = min(step, n - c0)
        idx = torch.randint(0, centers.shape[0], (m,), device="cuda", generator=gen)
        part = centers[idx] + noise * torch.randn(m, DIM, device="cuda", generator=gen)
        x[c0:c0 + m] = torch.nn.functional.normalize(part, dim=1)
    return x


def i8_codes(torch, x):
    """The i8 codec (per-row absmax) in torch, for the int8 baseline (in chunks of rows)."""
    out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    step = 1 << 20
    for c0 in range(0, x.shape[0], step):
        part = x[c0:c0 + step]
        amax = part.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
        out[c0:c0 + step] = torch.round(part * (127.0 / amax)).clamp(-127, 127).to(torch.int8)
    return out


def torch_topk(torch, db, q, k, storage):
    """Chunked matmul + topk in the storage's precision; the score matrix is never whole."""
    n = db.shape[0]
    per = 4 if storage in ("f32", "i8") else 2
    chunk = max(k, min(n, (2 << 30) // max(1, q.shape[0] * per)))
    chunk -= chunk % 8  # torch._int_mm wants multiples of 8
    best_s = best_i = None
    for c0 in range(0, n, chunk):
        part = db[c0:c0 + chunk]
        s = torch._int_mm(q, part.t()).float() if storage == "i8" else q @ part.t()
        ts, ti = torch.topk(s, min(k, s.shape[1]), dim=1)
        ti = ti + c0
        if best_s is None:
            best_s, best_i = ts, ti
        else:
            cs, ci = torch.cat([best_s, ts], 1), torch.cat([best_i, ti], 1)
            best_s, pos = torch.topk(cs, k, dim=1)
            best_i = torch.gather(ci, 1, pos)
    return best_s, best_i


def cupy_topk(cp, db, q, k):
    n = db.shape[0]
    chunk = max(k, min(n, (2 << 30) // max(1, q.shape[0] * db.dtype.itemsize)))
    best_s = best_i = None
    for c0 in range(0, n, chunk):
        s = q @ db[c0:c0 + chunk].T
        kk = min(k, s.shape[1])
        part = cp.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < s.shape[1] else cp.broadcast_to(
            cp.arange(s.shape[1]), s.shape)
        ps = cp.take_along_axis(s, part, 1)
        if best_s is None:
            best_s, best_i = ps, part + c0
        else:
            cs, ci = cp.concatenate([best_s, ps], 1), cp.concatenate([best_i, part + c0], 1)
            sel = cp.argpartition(-cs, k - 1, axis=1)[:, :k]
            best_s, best_i = cp.take_along_axis(cs, sel, 1), cp.take_along_axis(ci, sel, 1)
    order = cp.argsort(-best_s, axis=1)
    return cp.take_along_axis(best_s, order, 1), cp.take_along_axis(best_i, order, 1)


def recall(found, truth):
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=180.0, help="seconds for the whole run")
    ap.add_argument("--max-call", type=float, default=1.5, help="seconds one search may take")
    ap.add_argument("--ns", default="10000000,1000000", help="database sizes, comma-separated")
    args = ap.parse_args()
    clock = Clock(args.budget)

    import torch
    import cliprt
    try:
        import cupy as cp
    except ImportError:
        cp = None
    if not torch.cuda.is_available():
        sys.exit("search_gpu.py needs a CUDA device (torch.cuda.is_available() is False)")

    gpu = torch.cuda.get_device_name(0)
    info = {"gpu": gpu, "driver": sh("nvidia-smi --query-gpu=driver_version --format=csv,noheader"),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cupy": getattr(cp, "__version__", None),
            "cliprt": cliprt.build_info(), "commit": sh("git rev-parse --short HEAD"),
            "dirty": bool(sh("git status --porcelain --untracked-files=no")), "host": platform.node()}
    bw = copy_bandwidth(torch)
    peaks = peak_rates(torch)
    info.update(copy_bandwidth=bw, peaks=peaks)
    print(f"{gpu}: copy {bw / 1e12:.2f} TB/s, bf16 {peaks['bf16'] / 1e12:.0f} TFLOP/s, "
          f"int8 {peaks['int8'] / 1e12:.0f} TOP/s, f32 {peaks['f32'] / 1e12:.0f} TFLOP/s", flush=True)

    results = []
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(4096, DIM, device="cuda", generator=gen), dim=1)
    rotations = 4

    def record(**kw):
        results.append(kw)
        status = kw.get("status", "ok")
        ms = f"{kw['ms']:.3f} ms" if "ms" in kw else status
        print(f"{kw['system']:>14} {kw['storage']:>4} N={kw['n']:>9} Q={kw['q']:>5} k={kw['k']:>4}: {ms}", flush=True)

    for n in [int(v) for v in args.ns.split(",")]:
        x = clustered(torch, n, centers, gen)
        queries = {q: [clustered(torch, q, centers, gen) for _ in range(rotations)] for q in QS}
        truth = None
        if n <= 1_000_000:
            qr = queries[32][0]
            truth = torch.topk(qr @ x.t(), 10, dim=1).indices.cpu().numpy()
        for storage in STORAGES:
            if clock.left() < 0:
                results.append({"system": "cliprt", "kind": "build", "storage": storage, "n": n,
                                "status": "skipped: time budget"})
                continue
            keep = storage in ("i8", "b1") and n <= 1_000_000
            t = time.time()
            ix = cliprt.Index(DIM, "cosine", storage, keep_originals=keep, device="cuda")
            ix.add(x)
            torch.cuda.synchronize()
            build_s = time.time() - t
            results.append({"system": "cliprt", "kind": "build", "storage": storage, "n": n, "seconds": build_s})
            print(f"built {storage} N={n} in {build_s:.1f} s", flush=True)
            stream = torch.cuda.current_stream()
            if truth is not None:
                for r in (0, None) if keep else (0,):
                    _, ids = ix.search(queries[32][0], k=10, rescore=r)
                    results.append({"system": "cliprt", "kind": "recall", "storage": storage, "n": n, "q": 32, "k": 10,
                                    "rescore": ix.default_rescore_for(10) if r is None else 0,
                                    "recall": recall(ids.cpu().numpy(), truth)})
            for q in QS:
                for k in KS:
                    base = {"system": "cliprt", "storage": storage, "n": n, "q": q, "k": k}
                    bytes_scanned = n * ROW_BYTES[storage]
                    flops = 2.0 * q * n * DIM
                    floor = max(bytes_scanned / bw, flops / peaks[UNIT[storage]])
                    if clock.left() < 0 or floor > args.max_call:
                        record(**base, status="skipped: time budget" if clock.left() < 0 else
                               f"skipped: roofline alone {floor:.1f} s")
                        continue
                    qs = queries[q]
                    res, first = time_calls(torch, lambda i: ix.search(qs[i], k=k, rescore=0, stream=stream), rotations,
                                            args.max_call)
                    if res is None:
                        record(**base, status=f"single run {first:.2f} s (not repeated)", ms=first * 1e3, reps=1)
                    else:
                        record(**base, **res)
                    res = results[-1]
                    sec = res["ms"] / 1e3
                    res.update(floor_ms=floor * 1e3, pct_roofline=100 * floor / sec,
                               pct_copy_bw=100 * bytes_scanned / sec / bw,
                               pct_unit=100 * flops / sec / peaks[UNIT[storage]], unit=UNIT[storage])
            ix = None  # free the device index before the baselines
            torch.cuda.empty_cache()

            # baselines in the same precision
            if storage == "b1":
                continue
            if storage == "i8":
                db = i8_codes(torch, x)
            else:
                db = x.to({"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[storage])
            for q in QS:
                for k in KS:
                    base = {"system": "torch", "storage": storage, "n": n, "q": q, "k": k}
                    if storage == "i8" and q <= 16:
                        record(**base, status="n/a: torch._int_mm needs Q > 16")
                        continue
                    flops = 2.0 * q * n * DIM
                    if clock.left() < 0 or flops / peaks[UNIT[storage]] > args.max_call:
                        record(**base, status="skipped: time budget")
                        continue
                    qs = [(i8_codes(torch, v) if storage == "i8" else v.to(db.dtype)) for v in queries[q]]
                    try:
                        res, first = time_calls(torch, lambda i: torch_topk(torch, db, qs[i], k, storage), rotations,
                                                args.max_call)
                    except Exception as e:  # noqa: BLE001 - report, keep going
                        record(**base, status=f"error: {type(e).__name__}: {str(e)[:80]}")
                        continue
                    if res is None:
                        record(**base, status=f"single run {first:.2f} s (not repeated)", ms=first * 1e3, reps=1)
                    else:
                        record(**base, **res)
            if cp is not None and storage in ("f32", "f16") and n <= 1_000_000:
                cdb = cp.asarray(db)
                for q in (1, 32, 1024):
                    for k in KS:
                        base = {"system": "cupy", "storage": storage, "n": n, "q": q, "k": k}
                        if clock.left() < 0:
                            record(**base, status="skipped: time budget")
                            continue
                        cqs = [cp.asarray(v.to(db.dtype)) for v in queries[q]]
                        try:
                            res, first = time_calls(torch, lambda i: cupy_topk(cp, cdb, cqs[i], k), rotations,
                                                    args.max_call)
                        except Exception as e:  # noqa: BLE001 - report, keep going
                            record(**base, status=f"error: {type(e).__name__}: {str(e)[:80]}")
                            continue
                        if res is None:
                            record(**base, status=f"single run {first:.2f} s (not repeated)", ms=first * 1e3, reps=1)
                        else:
                            record(**base, **res)
                cdb = None
            db = None
            torch.cuda.empty_cache()
        x = queries = None
        torch.cuda.empty_cache()

    # speed-ups over torch, and the done-when checks
    by = {(r["system"], r["storage"], r["n"], r.get("q"), r.get("k")): r for r in results if "ms" in r}
    for r in results:
        if r["system"] == "cliprt" and "ms" in r:
            t = by.get(("torch", r["storage"], r["n"], r["q"], r["k"]))
            if t:
                r["speedup_vs_torch"] = t["ms"] / r["ms"]
    checks = []
    big = max(int(v) for v in args.ns.split(","))
    for q in (1, 32):
        r = by.get(("cliprt", "i8", big, q, 10))
        if r:
            checks.append({"check": f"i8 N={big} Q={q} k=10 >= 80% of copy bandwidth",
                           "value": f"{r['pct_copy_bw']:.0f}%", "pass": r["pct_copy_bw"] >= 80})
    for n in sorted({r["n"] for r in results}):
        r = by.get(("cliprt", "bf16", n, 1024, 100))
        if r:
            checks.append({"check": f"bf16 N={n} Q=1024 k=100 >= 70% of bf16 tensor rate",
                           "value": f"{r['pct_unit']:.0f}%", "pass": r["pct_unit"] >= 70})
            if "speedup_vs_torch" in r:
                checks.append({"check": f"bf16 N={n} Q=1024 k=100 >= 2x torch mm+topk",
                               "value": f"{r['speedup_vs_torch']:.2f}x", "pass": r["speedup_vs_torch"] >= 2})
        for s in ("bf16", "i8"):
            a, b = by.get(("cliprt", s, n, 1024, 1000)), by.get(("cliprt", s, n, 1024, 10))
            if a and b:
                checks.append({"check": f"{s} N={n} Q=1024: k=1000 <= 1.5x k=10",
                               "value": f"{a['ms'] / b['ms']:.2f}x", "pass": a["ms"] / b["ms"] <= 1.5})

    with open(args.json, "w") as f:
        json.dump({"info": info, "results": results, "checks": checks}, f, indent=1, default=str)
    write_markdown(args.out, info, results, checks)
    print(open(args.out).read())


def write_markdown(path, info, results, checks):
    lines = [f"# GPU search: {info['gpu']}", "",
             f"cliprt {info['cliprt'].get('version')} (commit {info['commit']}{', dirty' if info['dirty'] else ''}), "
             f"torch {info['torch']} (CUDA {info['cuda']}), cupy {info['cupy']}, driver {info['driver']}.",
             f"Measured: copy bandwidth {info['copy_bandwidth'] / 1e12:.2f} TB/s (read + write), "
             + ", ".join(f"{k} {v / 1e12:.0f} T{'OP' if k == 'int8' else 'FLOP'}/s" for k, v in info["peaks"].items())
             + ".", "",
             "D = 512, clustered unit vectors, cosine; cliprt searches are code scans (rescore=0); latency is the "
             "median over rotated query batches (CUDA events). floor = max(bytes / copy bandwidth, FLOPs / unit "
             "rate); % roofline = floor / latency.", ""]
    if checks:
        lines += ["| target | value | pass |", "|---|---|---|"]
        lines += [f"| {c['check']} | {c['value']} | {'yes' if c['pass'] else 'NO'} |" for c in checks]
        lines.append("")
    rec = [r for r in results if r.get("kind") == "recall"]
    if rec:
        lines += ["| storage | rescore | recall@10 (N=1M, Q=32) |", "|---|---|---|"]
        lines += [f"| {r['storage']} | {r['rescore']} | {r['recall']:.3f} |" for r in rec]
        lines.append("")
    rows = [r for r in results if r["system"] == "cliprt" and "kind" not in r]
    by = {(r["system"], r["storage"], r["n"], r["q"], r["k"]): r for r in results if "kind" not in r}
    lines += ["| N | storage | Q | k | cliprt ms | floor ms | % roofline | % copy BW | % unit | torch ms | cupy ms | "
              "vs torch |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(r):
        if r is None:
            return ""
        if "ms" not in r:
            return r.get("status", "")
        return f"{r['ms']:.3f}" if r.get("reps", 0) > 1 else f"{r['ms']:.1f} (1 run)"

    def pct(r, key):
        return f"{r[key]:.0f}" if key in r else ""

    for r in rows:
        t = by.get(("torch", r["storage"], r["n"], r["q"], r["k"]))
        c = by.get(("cupy", r["storage"], r["n"], r["q"], r["k"]))
        floor = f"{r['floor_ms']:.3f}" if "floor_ms" in r else ""
        speedup = f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else ""
        lines.append(f"| {r['n']:,} | {r['storage']} | {r['q']} | {r['k']} | {ms(r)} | {floor} | "
                     f"{pct(r, 'pct_roofline')} | {pct(r, 'pct_copy_bw')} | {pct(r, 'pct_unit')} | {ms(t)} | "
                     f"{ms(c)} | {speedup} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
