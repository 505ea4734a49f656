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

``--fixers`` measures instead what cliprt's replay of ftfy (cliprt.text.ftfy_fast) gains
end to end: the same ClipTokenizer with ``ftfy_replay=True`` (default) and with
``ftfy_replay=False`` (each text that needs fixing goes through ``ftfy.fix_text``), on
texts that all need it: non-ASCII captions (every caption holds at least one non-ASCII
item: words of other languages, CLIP-vocabulary emoji and symbols, curly quotes, dashes;
1% with mojibake; see ``make_nonascii_captions``), the mixed test
corpus, and the mojibake-heavy corpus of tests/test_text_ftfy_guard.py. It also times the
fixer alone on each corpus. The replay is kept if it is at least 1.2x faster end to end on
the non-ASCII captions (median).

    python benchmarks/tokenize_bench.py [--repeats 5] [--n 10000] [--markdown PATH] [--fixers]

With --markdown the table replaces its own section of the file (the open_clip comparison
is the part before the first "## " heading, --fixers writes the section "## Replay of
ftfy vs ftfy.fix_text"); the other section is kept.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from encode import cpu_name, cpu_simd  # noqa: E402
from test_tokenize import make_captions, make_corpus  # noqa: E402

BATCH = 32
FIXERS_TITLE = "## Replay of ftfy vs ftfy.fix_text"
# the decision rule of the --fixers table: the replay stays if it is at least this much
# faster end to end on non-ASCII captions (one batch, median)
KEEP_REPLAY_RATIO = 1.2


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


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "python/cliprt/text",
                                "python/cliprt/tokenize.py"], cwd=os.path.join(HERE, ".."),
                               capture_output=True, text=True).stdout.strip()
        return out + (" (tokenizer sources modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions():
    import ftfy
    import numpy as np
    import tokenizers

    return (f"Python {platform.python_version()}, tokenizers {tokenizers.__version__}, "
            f"ftfy {ftfy.__version__}, numpy {np.__version__}")


def _import_open_clip():
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    import open_clip  # sets TOKENIZERS_PARALLELISM=false on import (fork safety)

    # cliprt's runtime does not import open_clip: measure it with the setting it would have
    if parallelism is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    return open_clip


def _vs_open_clip(args):
    """The table of cliprt vs open_clip (the top of the markdown file)."""
    import numpy as np

    open_clip = _import_open_clip()
    from open_clip.tokenizer import default_bpe

    from cliprt.text import ClipTokenizer

    def make_ref():
        return open_clip.get_tokenizer("ViT-B-32")

    def make_ours():
        return ClipTokenizer.from_vocab(default_bpe())

    ref, ours = make_ref(), make_ours()
    words = _clip_words(ours)[0]
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
    meta = (f"CPU: {cpu_name()}, {os.cpu_count()} cores; {_versions()}; git {_git_commit()}; "
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
    return "# " + "\n".join(lines) + "\n"


def _clip_words(tok):
    """The whole words of the CLIP vocabulary (tokens with the end-of-word suffix, mapped
    back to text), in vocabulary order: ``(ASCII letters only, non-ASCII)``."""
    table = {c: b for b, c in enumerate(tok._byte_table)}
    ascii_words, other = [], []
    for t, _ in sorted(tok._tok.get_vocab().items(), key=lambda kv: kv[1]):
        if not t.endswith("</w>"):
            continue
        w = bytes(table[c] for c in t[:-4]).decode("utf-8", errors="replace")
        if w.isascii():
            if w.isalpha():
                ascii_words.append(w)
        elif "\ufffd" not in w and not any(c.isspace() for c in w):
            other.append(w)
    return ascii_words, other


# non-ASCII words of captions in other languages (put into English-like captions)
MULTILINGUAL = (
    "café naïve résumé façade crème brûlée Zürich München Straße Größe smörgåsbord Ærø São "
    "jalapeño niño año señora Kraków Łódź żółty český přítel İstanbul ağaç Việt "
    "phở Ελλάδα θάλασσα Москва кошка собака улица Київ مرحبا قطة שלום חתול नमस्ते बिल्ली "
    "แมว 東京 猫 写真 犬 公園 北京 小猫 한국 고양이 사진 ქართული Հայաստան").split()


def make_nonascii_captions(n, vocab_nonascii, seed=7):
    """Caption-like strings that all need ftfy: ``make_captions`` (English caption words),
    with one to three non-ASCII items put in each: a word of another language
    (``MULTILINGUAL``), a non-ASCII whole word of the CLIP vocabulary (mostly emoji and
    punctuation; Zipf weights by vocabulary order), curly quotes around a word, a dash or
    an ellipsis; 1% of the captions mis-decoded (UTF-8 read as cp1252)."""
    rng = random.Random(seed)
    weights = [1.0 / (r + 1) for r in range(len(vocab_nonascii))]
    out = []
    for text in make_captions(n, seed=seed):
        ws = text.split(" ")
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            i = rng.randrange(len(ws))
            if r < 0.45:
                ws.insert(i, rng.choice(MULTILINGUAL))
            elif r < 0.75:
                ws.insert(i, rng.choices(vocab_nonascii, weights=weights)[0])
            elif r < 0.9:
                ws[i] = "\u201c" + ws[i] + "\u201d"
            else:
                ws.insert(i, rng.choice(["\u2014", "\u2013", "\u2026"]))
        text = " ".join(ws)
        if rng.random() < 0.01:
            text = text.encode("utf-8").decode("cp1252", errors="replace")
        out.append(text)
    return out


FIXER_NOTES = """\
Both columns are the same ClipTokenizer (warm word cache), once with the replay of ftfy
(cliprt.text.ftfy_fast, `ftfy_replay=True`, the default) and once with
`ftfy_replay=False`, which calls `ftfy.fix_text` for every text that needs fixing (the
ids are checked to be identical first). Every corpus here is all or mostly non-ASCII, so
the ASCII shortcut that skips ftfy does not apply. "one batch" / "batches of 32": texts/s,
median of the repeats, the two tokenizers interleaved; "ratio by CPU time": the one-batch
ratio by process CPU time; "fixer alone": texts/s of the fix function by itself (no
tokenization). Non-ASCII captions: `make_nonascii_captions` in the script; test corpus:
tests/test_tokenize.py `make_corpus`; ftfy guard corpus: tests/test_text_ftfy_guard.py
(mojibake-heavy; its texts up to ~6 pieces over several lines). Decision rule: the replay
is kept if "one batch" is at least {keep}x on the non-ASCII captions. Regenerate with
`python benchmarks/tokenize_bench.py --fixers --markdown benchmarks/results/tokenize.md`."""


def _fixers(args):
    """The table of the replay vs ftfy.fix_text (a section of the markdown file)."""
    import ftfy
    import numpy as np

    _import_open_clip()
    from open_clip.tokenizer import default_bpe
    from test_text_ftfy_guard import make_ftfy_corpus

    from cliprt.text import ClipTokenizer, text_fixer

    replay = ClipTokenizer.from_vocab(default_bpe())
    plain = ClipTokenizer.from_vocab(default_bpe(), ftfy_replay=False)
    corpora = [("non-ASCII captions", make_nonascii_captions(args.n, _clip_words(replay)[1])),
               ("mixed (test corpus)", make_corpus(args.n)),
               ("ftfy guard corpus", make_ftfy_corpus(args.n))]
    fixers = [text_fixer(replay=True), text_fixer(replay=False)]
    assert fixers[1] is ftfy.fix_text

    def fix_all(fix):
        return lambda texts: list(map(fix, texts))

    load_before = _loadavg()
    rows = []
    for name, texts in corpora:
        assert np.array_equal(replay(texts), plain(texts)), f"{name}: ids differ"  # warms both
        share = sum(not t.isascii() for t in texts) / len(texts)
        (r_rep, r_ftfy), (c_rep, c_ftfy) = _interleaved_rates(
            [replay, plain], texts, None, args.repeats)
        (b_rep, b_ftfy), _ = _interleaved_rates([replay, plain], texts, BATCH, args.repeats)
        (f_rep, f_ftfy), _ = _interleaved_rates(
            [fix_all(f) for f in fixers], texts, None, args.repeats)
        rows.append((name, len(texts), share, r_ftfy, r_rep, c_rep / c_ftfy, b_ftfy, b_rep,
                     f_ftfy, f_rep))

    keep = rows[0][4] / rows[0][3] >= KEEP_REPLAY_RATIO
    cols = ["corpus", "n", "non-ASCII", "one batch: ftfy.fix_text", "replay", "ratio",
            "ratio by CPU time", f"batches of {BATCH}: ftfy.fix_text", "replay", "ratio",
            "fixer alone: ftfy.fix_text", "replay", "ratio"]
    lines = [FIXERS_TITLE, "",
             f"End-to-end CLIP tokenization, texts/s (median of {args.repeats}): the replay "
             f"of ftfy vs ftfy.fix_text in the same tokenizer.", "",
             f"CPU: {cpu_name()}, {os.cpu_count()} cores ({cpu_simd()}); {_versions()}; "
             f"git {_git_commit()}; {datetime.date.today().isoformat()}; load average "
             f"{load_before} at the start, {_loadavg()} at the end", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, n, share, r_ftfy, r_rep, cpu_ratio, b_ftfy, b_rep, f_ftfy, f_rep in rows:
        lines.append(
            f"| {name} | {n} | {share:.0%} | {r_ftfy:,.0f} | {r_rep:,.0f} | "
            f"{r_rep / r_ftfy:.1f}x | {cpu_ratio:.1f}x | {b_ftfy:,.0f} | {b_rep:,.0f} | "
            f"{b_rep / b_ftfy:.1f}x | {f_ftfy:,.0f} | {f_rep:,.0f} | {f_rep / f_ftfy:.1f}x |")
    lines += ["", f"Decision: the replay is {'kept' if keep else 'NOT worth keeping'} "
              f"({rows[0][4] / rows[0][3]:.1f}x end to end on non-ASCII captions, "
              f"threshold {KEEP_REPLAY_RATIO}x).", "", FIXER_NOTES.format(keep=KEEP_REPLAY_RATIO)]
    return "\n".join(lines) + "\n"


def _write_section(path, text, title=None):
    """Write ``text`` into the markdown file ``path`` in place of its section ``title``
    (a ``## `` heading line; ``None``: the part before the first such heading), keeping
    the other sections; a missing section is added at the end."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    parts = [""]                 # parts[0]: before the first "## " heading
    for line in old.splitlines(keepends=True):
        if line.startswith("## "):
            parts.append("")
        parts[-1] += line
    heads = [p.split("\n", 1)[0] for p in parts]
    block = text.rstrip("\n") + "\n"
    if title is None:
        parts[0] = block + ("\n" if len(parts) > 1 else "")
    elif title in heads[1:]:
        i = heads.index(title, 1)
        parts[i] = block + ("\n" if i < len(parts) - 1 else "")
    else:
        if parts[-1] and not parts[-1].endswith("\n\n"):
            parts[-1] = parts[-1].rstrip("\n") + "\n\n"
        parts.append(block)
    with open(path, "w") as f:
        f.write("".join(parts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--markdown", help="also write the table to this file (its own section)")
    ap.add_argument("--fixers", action="store_true",
                    help="the replay of ftfy vs ftfy.fix_text instead of cliprt vs open_clip")
    args = ap.parse_args()
    text = _fixers(args) if args.fixers else _vs_open_clip(args)
    print(text)
    if args.markdown:
        _write_section(args.markdown, text, FIXERS_TITLE if args.fixers else None)


if __name__ == "__main__":
    main()
