"""Guard for cliprt.text.ftfy_fast: ``fix_text`` equals ``ftfy.fix_text`` on a large corpus.

The corpus (``CORPUS_SIZE`` strings, seeded) is generated to reach every part of the replay:
mojibake made by real round trips (UTF-8 bytes read as Latin-1, Windows-125x, MacRoman,
cp437, ISO-8859-2, ..., once or twice, of a whole text or of one word in it, with the
non-breaking spaces or undecodable bytes such round trips lose), HTML entities (named,
numeric, double-escaped, without semicolon, with ``<`` on the same or an earlier line),
many scripts, emoji sequences, decomposed accents, ligatures and full-width forms, curly
quotes, control and C1 characters, terminal escapes, surrogates, and every kind of line
break, on one line or several. The test fails with the first differing strings.
"""
from __future__ import annotations

import html
import random
import unicodedata

import pytest

ftfy = pytest.importorskip("ftfy")

CORPUS_SIZE = 40_000
CORPUS_SEED = 20261207

PHRASES = [
    # Latin scripts with diacritics
    "café crème brûlée", "naïve façade", "Größe der Straße, übermäßig", "¿Qué tal, niño? año",
    "Zażółć gęślą jaźń", "Příliš žluťoučký kůň", "İstanbul ılık şoğuk", "Tiếng Việt có dấu",
    "Ærø smørrebrød på Åland", "Łódź", "œuvre Œdipe", "São Paulo à la carte", "résumé",
    "Ça va? À bientôt", "ÀÉÎÕÜ ÑÇ", "Ångström", "façade—naïve",
    # other scripts
    "Ελληνικά: καλημέρα κόσμε", "Съешь же ещё этих мягких французских булок",
    "Їжак і ґанок", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ",
    "東京タワーの写真", "北京欢迎你", "한국어 텍스트", "ქართული ენა", "Հայերեն",
    "ｶﾀｶﾅ ﾃｷｽﾄ", "ＦＵＬＬＷＩＤＴＨ ＡＢＣ １２３ ｆｕｌｌ！", "𝐁𝐨𝐥𝐝 𝟙𝟚𝟛", "ᚠᛇᚻ", "ⲁⲃⲅ",
    # punctuation, symbols, quotes
    "“double” ‘single’ „low“ «guillemets» ‹angle›", "em—dash en–dash … ellipsis",
    "€100 £50 ¥300 ¢ ° ± × ÷ µ ¶ § © ® ™", "½ ¼ ¾ ² ³ ¹", "• bullet · middot",
    "┌─┐│└┘ ╔═╗", "l’été d’or", "doesn’t", "ﬁne ﬂow ﬀ ĳ", "№ ℃ ℉ Ω",
    # emoji
    "😀 🐱 👍🏽 ✨ 🔥", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 🇯🇵 🇺🇸", "❤️ ☕ ⚽", "🫠 \U0001faea",
    # ASCII
    "a photo of a cat", "Tom & Jerry", "1 < 2 > 0", "AT&T", "rock 'n' roll", "x = y + 1;",
]

# encodings that UTF-8 bytes get mistaken for: ftfy's own list and a few it does not undo
MOJIBAKE_ENCODINGS = [
    "latin-1", "cp1252", "sloppy-windows-1252", "sloppy-windows-1252", "mac_roman", "cp437",
    "iso-8859-2", "sloppy-windows-1251", "sloppy-windows-1250", "sloppy-windows-1253",
    "sloppy-windows-1254", "sloppy-windows-1257", "cp850", "koi8_r", "iso-8859-15",
]
SEPARATORS = [" ", " ", " ", "", ", ", ". ", "\n", "\n", "\r\n", "\r", "\u2028", "\u2029",
              "\x85", "\t", "\u00a0", " \n", "\n\n"]
CONTROLS = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x80",
            "\x81", "\x85", "\x8d", "\x9d", "\x9f", "\u200b", "\u200d", "\ufeff", "\u202e",
            "\u206a", "\ufff9", "\U000e0001", "\ufffd", "\x1b[31m", "\x1b[0m", "\x1b[1;32m",
            "\x1b]0;title\x07", "\ud83d", "\ude00", "\ud83d\ude00", "\udbff\udfff"]
ENTITIES = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&apos;", "&nbsp;", "&eacute;",
            "&Eacute;", "&EACUTE;", "&hellip;", "&mdash;", "&copy;", "&euro;", "&amp;amp;",
            "&amp;eacute;", "&eacute", "&amp", "&#233;", "&#xe9;", "&#XE9;", "&#x1F600;",
            "&#128512;", "&#0;", "&#x80;", "&#150;", "&#xD800;", "&#1114112;", "&notit;",
            "&notin;", "&bogus;", "& ", "&;", "&#;"]


def _mojibake(rng: random.Random, text: str) -> str:
    enc = rng.choice(MOJIBAKE_ENCODINGS)
    raw = text.encode("utf-8", errors="surrogatepass")  # CESU-style bytes for surrogates
    if rng.random() < 0.1:   # the bytes lost a non-breaking space or became lossy
        raw = raw.replace(b"\xc2\xa0", b"\xc2 ")
    bad = raw.decode(enc, errors=rng.choice(["replace", "ignore", "replace"]))
    r = rng.random()
    if r < 0.15:             # mis-decoded twice
        bad = bad.encode("utf-8", errors="surrogatepass").decode(rng.choice(["latin-1", "sloppy-windows-1252"]),
                                         errors="replace")
    elif r < 0.25:           # what a lossy channel keeps
        bad = bad.replace("\xa0", " ") if rng.random() < 0.5 else bad.replace("\x9d", "?")
    elif r < 0.3:            # the reverse: text in a legacy encoding read as UTF-8
        bad = text.encode(rng.choice(["latin-1", "cp1252", "mac_roman"]), errors="replace"
                          ).decode("utf-8", errors="replace")
    return bad


def _entities(rng: random.Random, text: str) -> str:
    r = rng.random()
    if r < 0.3:
        return html.escape(text, quote=rng.random() < 0.5)
    if r < 0.6:              # characters as numeric or named references
        out = []
        for c in text:
            if ord(c) > 0x7F and rng.random() < 0.6:
                name = html.entities.codepoint2name.get(ord(c))
                out.append(f"&{name};" if name and rng.random() < 0.5 else
                           rng.choice([f"&#{ord(c)};", f"&#x{ord(c):x};"]))
            else:
                out.append(c)
        return "".join(out)
    return text + rng.choice(ENTITIES) + rng.choice(["", " ", "x", ";"])


def _piece(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.75:
        text = rng.choice(PHRASES)
        if rng.random() < 0.4:  # one word of it
            text = rng.choice(text.split(" "))
    elif r < 0.85:
        text = rng.choice(CONTROLS) + rng.choice(PHRASES) + rng.choice(CONTROLS)
    elif r < 0.95:
        text = rng.choice(ENTITIES)
    else:                        # random code points (no surrogates)
        hi = rng.choice([0x250, 0x3000, 0x10000, 0x110000])
        text = "".join(chr(c) for c in (rng.randrange(0x20, hi) for _ in range(rng.randint(1, 6)))
                       if not 0xD800 <= c < 0xE000)
    r = rng.random()
    if r < 0.3:
        text = _mojibake(rng, text)
    elif r < 0.45:
        text = _entities(rng, text)
    elif r < 0.5:
        text = unicodedata.normalize(rng.choice(["NFD", "NFKD"]), text)
    elif r < 0.55:
        text = text.upper()
    if rng.random() < 0.08:
        i = rng.randint(0, len(text))
        text = text[:i] + rng.choice(CONTROLS) + text[i:]
    return text


def make_ftfy_corpus(n: int = CORPUS_SIZE, seed: int = CORPUS_SEED) -> list[str]:
    """``n`` strings for comparing a text fixer with ``ftfy.fix_text`` (seeded)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [_piece(rng) for _ in range(rng.choice([1, 1, 2, 3, 4, 6]))]
        text = parts[0]
        for p in parts[1:]:
            text += rng.choice(SEPARATORS) + p
        r = rng.random()
        if r < 0.05:             # a whole text mis-decoded, line breaks and all
            text = _mojibake(rng, text)
        elif r < 0.1:            # a tag line before or after the rest
            text = rng.choice(["<b>bold</b>\n", "a < b\n", ""]) + text + rng.choice(
                ["", "\n<i>", "\n&amp; more"])
        out.append(text)
    return out


@pytest.fixture(scope="module")
def corpus():
    return make_ftfy_corpus()


@pytest.fixture(scope="module")
def reference(corpus):
    return [ftfy.fix_text(t) for t in corpus]


def test_corpus_reaches_every_part_of_the_replay(corpus, reference):
    """The corpus has what each part of the replay handles, in numbers (so that the
    comparison below checks something)."""
    from ftfy.badness import is_bad

    n = len(corpus)
    changed = sum(t != f for t, f in zip(corpus, reference))
    multi = [t for t in corpus if "\n" in t.rstrip("\n")]
    counts = {
        "changed by ftfy": changed,
        "non-ASCII": sum(not t.isascii() for t in corpus),
        "mojibake (ftfy's detector)": sum(is_bad(t) for t in corpus),
        "several lines": len(multi),
        "several lines, mojibake": sum(is_bad(t) for t in multi),
        "several lines, '<' and '&'": sum("<" in t and "&" in t for t in multi),
        "HTML entity": sum("&" in t and ";" in t for t in corpus),
        "\\r\\n": sum("\r\n" in t for t in corpus),
        "terminal escape": sum("\x1b[" in t for t in corpus),
        "surrogate": sum(any(0xD800 <= ord(c) < 0xE000 for c in t) for t in corpus),
        "C1 control": sum(any(0x80 <= ord(c) < 0xA0 for c in t) for t in corpus),
    }
    print(f"{n} strings: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert n == CORPUS_SIZE
    assert changed > n // 4
    assert counts["mojibake (ftfy's detector)"] > n // 10
    assert counts["several lines, mojibake"] > n // 50
    assert counts["several lines, '<' and '&'"] > n // 200
    for key in ("HTML entity", "\\r\\n", "terminal escape", "surrogate", "C1 control"):
        assert counts[key] > n // 100, key
    # the encoding fixer undoes mojibake in many strings, not just detects it
    assert sum(ftfy.fix_encoding(t) != t for t in corpus[:5000]) > 250


def test_fix_text_equals_ftfy_on_corpus(corpus, reference):
    from cliprt.text import ftfy_fast

    state = ftfy_fast.load()
    # every fast part is on with the installed ftfy: otherwise this compares ftfy with itself
    assert state.fix_maps is not None and state.bad_search is not None
    assert state.fix_encoding is ftfy_fast.fix_encoding_copy
    bad = [(t, f) for t, f in zip(corpus, reference) if ftfy_fast.fix_text(t) != f]
    shown = "\n".join(f"  {t!r}\n    ftfy:      {f!r}\n    ftfy_fast: {ftfy_fast.fix_text(t)!r}"
                      for t, f in bad[:10])
    assert not bad, f"{len(bad)} of {len(corpus)} strings differ:\n{shown}"


def test_fixer_switch_is_ftfy(corpus, reference):
    """``text_fixer(replay=False)`` is ftfy's own function (the benchmark's baseline)."""
    from cliprt.text import cleaning, ftfy_fast

    assert cleaning.text_fixer(replay=False) is ftfy.fix_text
    assert cleaning.text_fixer() is ftfy_fast.fix_text
