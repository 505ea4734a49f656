"""Longer fuzz run over the targets of tests/test_fuzz.py: the index loader (raw, re-sealed
and crafted-header mutations), the MANIFEST parser, the image decoder and the collection
filters, with the same generators and contracts as the tests and many more inputs.

    python benchmarks/fuzz_run.py --minutes 5            # the time split over the targets
    python benchmarks/fuzz_run.py --examples 2000        # inputs per target
    python benchmarks/fuzz_run.py --targets loader-header,manifest --examples 500

Inputs are drawn by hypothesis (random, a fresh seed per batch unless --seed) and run in
child processes in batches; a child that dies (a signal, an abort) counts as a crash of the
input it was on and the batch goes on in a new child. The table gives, per target: inputs
tried, ok, expected errors (FormatError, ImageError, ValueError / TypeError of select),
unexpected outcomes by kind and crashes; then one input for each unexpected kind, to replay.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(HERE, "..", "tests")

TARGETS = ("loader-raw", "loader-sealed", "loader-header", "manifest", "image", "collection")


def _fuzz():
    sys.path.insert(0, TESTS)
    import test_fuzz

    return test_fuzz


def strategy(target: str):
    F = _fuzz()
    st = F.st
    loader = {"loader-raw": F.raw_cases, "loader-sealed": F.sealed_cases, "loader-header": F.header_cases,
              "manifest": F.manifest_cases}
    if target in loader:
        return st.tuples(F._configs, loader[target], st.booleans(), st.booleans())
    if target == "image":
        return F.image_cases
    if target == "collection":
        return st.tuples(F._records, F._queries)
    raise ValueError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")


def draw(target: str, n: int, seed: int) -> list:
    """n inputs for target from its hypothesis strategy (generation only)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    out = []

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @hseed(seed)
    @given(strategy(target))
    def collect(x):
        out.append(x)

    collect()
    return out


def _kind(message: str) -> str:
    """A short name for a contract violation, from its message."""
    m = re.search(r"raised (\w+)", message)
    if m:
        return m.group(1)
    if message.startswith("loaded a malformed"):
        return "accepted-malformed"
    return "wrong-result"


def run_one(F, target: str, case, bases) -> list:
    """Outcomes of one input: a list of "ok" / "expected" / "bad:<kind>"."""
    if target.startswith("loader") or target == "manifest":
        config, c, mmap, verify = case
        try:
            out = F.run_loader_case(bases[config], c, mmap, verify)
        except F.ContractViolation as e:
            return ["bad:" + _kind(str(e))]
        return ["expected" if out == "FormatError" else out]
    if target == "image":
        item = F.image_item(case)
        outs = []
        for pre in F.image_preprocessors():
            try:
                outs.append("ok" if F.check_image(pre, item) == "ok" else "expected")
            except F.ContractViolation as e:
                outs.append("bad:" + _kind(str(e)))
        return outs
    records, queries = case
    work = tempfile.mkdtemp(prefix="cliprt-fuzz-")
    try:
        col, stored = F.make_collection(os.path.join(work, "c"), records)
        outs = []
        try:
            for where, path_like in queries:
                try:
                    outs.append("ok" if F.check_select(col, stored, where, path_like) == "ok" else "expected")
                except F.ContractViolation as e:
                    outs.append("bad:" + _kind(str(e)))
        finally:
            col.close()
        return outs
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _pin_cliprt(root: str) -> None:
    """Makes `import cliprt` load the package under `root` (the one the parent process
    imported), whatever import hooks (an editable install) would pick otherwise."""
    want = os.path.realpath(os.path.join(root, "cliprt", "__init__.py"))
    sys.path.insert(0, root)
    keep = []
    for finder in sys.meta_path:
        try:
            spec = finder.find_spec("cliprt", None)
        except Exception:
            spec = None
        if spec is not None and spec.origin and os.path.realpath(spec.origin) != want:
            continue
        keep.append(finder)
    sys.meta_path[:] = keep
    import cliprt

    if os.path.realpath(cliprt.__file__) != want:
        raise RuntimeError(f"the worker imported {cliprt.__file__}, not {want}")


def worker(target: str, path: str, cliprt_root: str) -> None:
    """Child process: runs the pickled inputs in `path`, one JSON line per input."""
    import shutil

    _pin_cliprt(cliprt_root)
    F = _fuzz()
    with open(path, "rb") as f:
        cases = pickle.load(f)
    root = tempfile.mkdtemp(prefix="cliprt-fuzz-bases-")
    try:
        bases = F.build_bases(root) if target.startswith("loader") or target == "manifest" else None
        for i, case in enumerate(cases):
            print(json.dumps({"i": i, "out": run_one(F, target, case, bases)}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_batch(target: str, cases: list, stats: dict, examples: dict, timeout: float) -> None:
    """Runs cases in child processes; a dead child is a crash of the input it was on."""
    start = 0
    while start < len(cases):
        rest = cases[start:]
        with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
            pickle.dump(rest, f)
        err = tempfile.TemporaryFile(mode="w+")
        done = -1
        try:
            import cliprt

            root = os.path.dirname(os.path.dirname(os.path.abspath(cliprt.__file__)))
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", target, f.name, root],
                                    stdout=subprocess.PIPE, stderr=err, text=True)
            try:
                for line in proc.stdout:
                    rec = json.loads(line)
                    done = rec["i"]
                    for out in rec["out"]:
                        stats[out] += 1
                        if out.startswith("bad:") and out not in examples:
                            examples[out] = rest[done]
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = proc.returncode
        finally:
            os.unlink(f.name)
        err.seek(0)
        last = (err.read().strip().splitlines() or [""])[-1][:120]
        err.close()
        if done + 1 < len(rest):   # the child stopped early: the next input crashed it
            why = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit {rc} ({last})"
            key = f"crash:{why}"
            stats[key] += 1
            examples.setdefault(key, rest[done + 1])
            start += done + 2
        else:
            start = len(cases)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, help="total run time, split evenly over the targets")
    ap.add_argument("--examples", type=int, help="inputs per target (default 1000 without --minutes)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, from: " + ", ".join(TARGETS))
    ap.add_argument("--batch", type=int, default=300, help="inputs per child process")
    ap.add_argument("--seed", type=int, help="first hypothesis seed (default: random)")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        strategy(t)   # validates the name
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    per_target_s = args.minutes * 60 / len(targets) if args.minutes else None
    max_examples = args.examples if args.examples else (None if args.minutes else 1000)
    print(f"seed {seed}; " + (f"{per_target_s:.0f} s per target" if per_target_s else f"{max_examples} inputs per target"),
          flush=True)
    rows = []
    all_examples = {}
    for t in targets:
        stats: collections.Counter = collections.Counter()
        examples: dict = {}
        tried = 0
        t0 = time.monotonic()
        batch_seed = seed
        while True:
            if max_examples is not None and tried >= max_examples:
                break
            if per_target_s is not None and time.monotonic() - t0 >= per_target_s:
                break
            n = args.batch if max_examples is None else min(args.batch, max_examples - tried)
            cases = draw(t, n, batch_seed)
            batch_seed += 1
            run_batch(t, cases, stats, examples, timeout=max(600.0, per_target_s or 0))
            tried += len(cases)
        rows.append((t, tried, sum(stats.values()), stats, time.monotonic() - t0))
        all_examples[t] = examples
        print(f"  {t}: {tried} inputs in {time.monotonic() - t0:.0f} s", flush=True)

    print()
    head = ("target", "inputs", "checks", "ok", "expected errors", "unexpected", "crashes")
    table = []
    for t, tried, checks, stats, _ in rows:
        bad = ", ".join(f"{k[4:]} {v}" for k, v in sorted(stats.items()) if k.startswith("bad:")) or "0"
        crashes = ", ".join(f"{k[6:]} {v}" for k, v in sorted(stats.items()) if k.startswith("crash:")) or "0"
        table.append((t, str(tried), str(checks), str(stats["ok"]), str(stats["expected"]), bad, crashes))
    widths = [max(len(r[i]) for r in [head] + table) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths)] + table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("\n(checks: one per input; an image input is checked by 4 preprocessors, a collection input runs "
          "1-6 queries)")
    for t, examples in all_examples.items():
        for k, case in sorted(examples.items()):
            text = repr(case)
            print(f"\n{t} {k}: {text[:600]}{' ...' if len(text) > 600 else ''}")
    return 1 if any(k.startswith(("bad:", "crash:")) for _, _, _, s, _ in rows for k in s) else 0


if __name__ == "__main__":
    sys.exit(main())
