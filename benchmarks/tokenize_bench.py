"""Throughput of cliprt's CLIP tokenizer vs open_clip's SimpleTokenizer (texts/s).

Both tokenize the same 10,000 strings: the seeded mixed corpus of tests/test_tokenize.py
(unicode, emoji, HTML entities, whitespace runs, long texts, ...) and, separately, its
caption-like ASCII part. Each measurement is the median of --repeats runs over the whole
set; the first cliprt run is a warm-up (thread pool start). open_clip's tokenizer keeps a
per-word BPE cache, which every repeat after the first benefits from, as ours does.
open_clip's import turns tokenizers' threads off; the script turns them back on, as in
cliprt's runtime (which does not import open_clip).

    python benchmarks/tokenize_bench.py [--repeats 5] [--n 10000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from test_tokenize import make_corpus  # noqa: E402


def _median_rate(fn, texts, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(texts)
        times.append(time.perf_counter() - t0)
    return len(texts) / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()

    import numpy as np

    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    import open_clip  # sets TOKENIZERS_PARALLELISM=false on import (fork safety)

    # cliprt's runtime does not import open_clip: measure it with the setting it would have
    if parallelism is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    from open_clip.tokenizer import default_bpe

    from cliprt.tokenize import ClipTokenizer

    ref = open_clip.get_tokenizer("ViT-B-32")
    ours = ClipTokenizer.from_vocab(default_bpe())
    mixed = make_corpus(args.n)
    captions = [t for t in make_corpus(4 * args.n) if t.isascii() and "&" not in t][: args.n]

    print(f"cores: {os.cpu_count()}, repeats: {args.repeats} (median)")
    print(f"{'corpus':<22}{'n':>7}{'open_clip texts/s':>20}{'cliprt texts/s':>17}{'ratio':>8}")
    for name, texts in (("mixed (test corpus)", mixed), ("ASCII captions", captions)):
        assert np.array_equal(ours(texts), ref(texts).numpy()), f"{name}: ids differ"
        ours(texts)  # warm-up
        r_ref = _median_rate(ref, texts, args.repeats)
        r_ours = _median_rate(ours, texts, args.repeats)
        print(f"{name:<22}{len(texts):>7}{r_ref:>20,.0f}{r_ours:>17,.0f}{r_ours / r_ref:>7.1f}x")


if __name__ == "__main__":
    main()
