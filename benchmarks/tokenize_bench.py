"""Throughput of cliprt's CLIP tokenizer vs open_clip's SimpleTokenizer (texts/s).

Corpora (10,000 strings each by default):

* mixed: the seeded test corpus of tests/test_tokenize.py (``make_corpus``): caption-like
  ASCII, very long texts, unicode, emoji, HTML entities, mojibake, control characters,
  whitespace runs, special-token texts, ...
* ASCII captions: ``make_captions`` with words drawn (Zipf weights) from the ~30k whole
  ASCII words of the CLIP vocabulary: 3 to 20 words, punctuation, numbers, contractions.

Each corpus is tokenized as one batch of all strings and as consecutive batches of 32
(a typical encoder batch). Both tokenizers get the same strings in the same run, their
repeats interleaved (so a busy machine slows both alike); each figure is the median of
--repeats runs over the whole corpus, by the wall clock; the one-batch run is also
timed by the process's CPU time (steadier on a shared machine; both run single-threaded
once their caches are warm). Ids are checked to be identical first.

Caches, to compare like with like: open_clip's tokenizer memoizes the BPE of every word
piece (unbounded dict, kept across calls); cliprt memoizes the ids of every
whitespace-separated cleaned word (bounded dict, kept across calls). Neither memoizes
whole texts or their cleaning (ftfy, HTML unescaping), which both redo for every string
on every call. The "warm" columns are measured after a first pass over the corpus has
filled both caches; the "cold" columns are a single run of a freshly built tokenizer
(empty caches) on the 10k batch. Tokenizers' Rust threads are on for cliprt (open_clip's
import turns them off; the script restores the setting cliprt's runtime has), they only
encode words not seen before.

    python benchmarks/tokenize_bench.py [--repeats 5] [--n 10000] [--markdown PATH]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from test_tokenize import make_captions, make_corpus  # noqa: E402

BATCH = 32


def _batched(tok, texts, batch):
    if batch is None:
        tok(texts)
        return
    for i in range(0, len(texts), batch):
        tok(texts[i:i + batch])


def _interleaved_rates(fns, texts, batch, repeats):
    """texts/s of each fn, by the wall clock and by the process's CPU time: medians over
    repeats, the fns taking turns within a repeat."""
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            c0, t0 = time.process_time(), time.perf_counter()
            _batched(fn, texts, batch)
            wall[j].append(time.perf_counter() - t0)
            cpu[j].append(time.process_time() - c0)
    return ([len(texts) / statistics.median(t) for t in wall],
            [len(texts) / statistics.median(t) for t in cpu])


def _cold_rate(make, texts):
    tok = make()
    t0 = time.perf_counter()
    tok(texts)
    return len(texts) / (time.perf_counter() - t0)


NOTES = """\
Columns: "one batch" tokenizes the whole corpus in one call; "batches of 32" in calls of
32 strings; both with warm caches (a first pass over the corpus done), medians of the
repeats, interleaved. "ratio by CPU time" is the one-batch ratio measured with each
process's CPU time instead of the wall clock (less sensitive to other load on the
machine). "cold" is the first call of a newly built tokenizer. Caches: open_clip
memoizes the BPE of every word piece, cliprt the ids of every cleaned word; neither
memoizes whole texts or their cleaning (ftfy, HTML unescaping), which both redo for every
string on every call. Regenerate with
`python benchmarks/tokenize_bench.py --markdown benchmarks/results/tokenize.md`."""


def _loadavg():
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except (OSError, AttributeError):
        return "unknown"


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--",
                                "python/cliprt/tokenize.py"], cwd=os.path.join(here, ".."),
                               capture_output=True, text=True).stdout.strip()
        return out + (" (tokenize.py modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()

    import numpy as np

    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    import open_clip  # sets TOKENIZERS_PARALLELISM=false on import (fork safety)

    # cliprt's runtime does not import open_clip: measure it with the setting it would have
    if parallelism is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    import ftfy
    import tokenizers
    from open_clip.tokenizer import default_bpe

    from cliprt.tokenize import ClipTokenizer

    def make_ref():
        return open_clip.get_tokenizer("ViT-B-32")

    def make_ours():
        return ClipTokenizer.from_vocab(default_bpe())

    ref, ours = make_ref(), make_ours()
    vocab = ours._tok.get_vocab()
    words = [t[:-4] for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])
             if t.endswith("</w>") and t[:-4].isascii() and t[:-4].isalpha()]
    corpora = [("mixed (test corpus)", make_corpus(args.n)),
               ("ASCII captions", make_captions(args.n, words=words))]

    load_before = _loadavg()
    rows = []
    for name, texts in corpora:
        want = ref(texts).numpy()            # also warms open_clip's cache
        got = ours(texts)                    # also warms cliprt's cache
        assert np.array_equal(got, want), f"{name}: ids differ"
        cold_ref = _cold_rate(make_ref, texts)
        cold_ours = _cold_rate(make_ours, texts)
        (r_ref, r_ours), (c_ref, c_ours) = _interleaved_rates(
            [ref, ours], texts, None, args.repeats)
        (b_ref, b_ours), _ = _interleaved_rates([ref, ours], texts, BATCH, args.repeats)
        rows.append((name, len(texts), r_ref, r_ours, c_ours / c_ref, b_ref, b_ours,
                     cold_ref, cold_ours))

    head = (f"CLIP tokenizer throughput, texts/s (median of {args.repeats}); "
            f"cliprt vs open_clip {open_clip.__version__} SimpleTokenizer")
    meta = (f"CPU: {_cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
            f"tokenizers {tokenizers.__version__}, ftfy {ftfy.__version__}, "
            f"numpy {np.__version__}; git {_git_commit()}; "
            f"{datetime.date.today().isoformat()}; load average {load_before} at the start, "
            f"{_loadavg()} at the end")
    cols = ["corpus", "n",
            "one batch: open_clip", "cliprt", "ratio", "ratio by CPU time",
            f"batches of {BATCH}: open_clip", "cliprt", "ratio",
            "cold, one batch: open_clip", "cliprt", "ratio"]
    lines = [head, "", meta, "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, n, r_ref, r_ours, cpu_ratio, b_ref, b_ours, k_ref, k_ours in rows:
        lines.append(
            f"| {name} | {n} | {r_ref:,.0f} | {r_ours:,.0f} | {r_ours / r_ref:.1f}x | "
            f"{cpu_ratio:.1f}x | {b_ref:,.0f} | {b_ours:,.0f} | {b_ours / b_ref:.1f}x | "
            f"{k_ref:,.0f} | {k_ours:,.0f} | {k_ours / k_ref:.1f}x |")
    lines += ["", NOTES]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("# " + text)


if __name__ == "__main__":
    main()
