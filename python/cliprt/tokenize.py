"""Text tokenizers for cliprt's text towers, built on the Rust ``tokenizers`` library.

* :class:`ClipTokenizer` -- the byte-level BPE of OpenAI CLIP / open_clip (vocabulary file
  ``bpe_simple_vocab_16e6.txt.gz``), producing the same ids as open_clip's ``SimpleTokenizer``
  with its default ``clean='lower'``: text repair with ftfy, two rounds of HTML unescaping,
  whitespace collapsing, lower-casing, ``[start] + tokens + [end]``, truncation that keeps
  the end token as the last id, zero padding to the context length.
* :class:`WordPieceTokenizer` -- BERT-style text towers, straight from a ``tokenizer.json``.

Neither torch nor open_clip is imported here: the runtime gets the vocabulary file path.
``tokenizers`` is needed for both classes, ``ftfy`` for :class:`ClipTokenizer` (imported on
first use).

How the CLIP pipeline is organised
----------------------------------
1. Cleaning (Python; it must match ftfy, ``html.unescape``, ``str.split`` and ``str.lower``
   exactly). An ASCII string without ``&``, ``\\r`` or control characters is left alone by
   ftfy and HTML unescaping, so it only goes through ``lower().split()``. Everything else
   goes through :func:`_fix_text`, which returns exactly ``ftfy.fix_text(text)`` but does
   most of the work itself: ftfy's fixing loop is replayed on the whole text (line by line
   where its per-line rules matter) with ftfy's character fixers folded into character
   maps applied only where a character needs it, ftfy's own HTML unescaper, NFC, ftfy's
   mojibake detector rewritten into an equivalent regex that the regex engine can skip
   through (:func:`_badness_regex`) and, where that detector fires, a step-by-step copy of
   ftfy's encoding fixer (used only with the ftfy source it was written from). The result
   is lower-cased and split into whitespace-separated words: for every character,
   lower-casing neither creates nor removes whitespace and the final-sigma rule stops at
   whitespace, so ``text.lower().split()`` are exactly the words of the reference's
   ``" ".join(text.split()).lower()``.
2. Words to ids. No piece of the reference split pattern contains a space, so the ids of a
   cleaned text are the ids of its words, concatenated. Each distinct word is encoded once
   by the Rust tokenizer (pre-tokenization, byte-level mapping, BPE) and its ids are kept in
   a per-tokenizer cache (bounded; open_clip's tokenizer likewise caches the BPE of each
   piece). Only the first ``context_length - 2`` words of a text are looked at when no
   more can reach the output (every word yields at least one id; checked afterwards).
3. Assembly in numpy: start token, the first ``context_length - 2`` ids, end token, zero
   padding, in a few vectorised operations over the whole batch.

The pre-tokenizer reproduces the reference split pattern
``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`` (case-insensitive in the
reference), with letters, numbers and white space as Unicode
:data:`~cliprt.unicode_classes.UNICODE_VERSION` defines them (tables shipped in the
package), not as the regex engine's own tables: the reference's classes follow its
installed ``regex`` release, so the ids of characters assigned in recent Unicode versions
differ between environments; cliprt's do not (see :mod:`cliprt.unicode_classes`).
After lower-casing, case-insensitivity only matters for two characters, which the
pattern spells out: U+017F (long s) also completes the ``'s`` contraction, and U+0345
(combining ypogegrammeni, whose case fold is a letter) matches no alternative at all, so
it is dropped like whitespace. The literal texts ``<start_of_text>`` / ``<end_of_text>``
are matched by the reference pattern too and become the special ids (``<ſtart_of_text>``
matches as well, case-insensitively, but is then BPE-encoded as one word); words containing
them take a slower, exact path (:meth:`ClipTokenizer._encode_with_specials`).
"""
from __future__ import annotations

import gzip
import html
import itertools
import operator
import os
import re
import threading
import unicodedata
from typing import Iterable, Sequence, Union

import numpy as np

from .unicode_classes import LETTERS, NUMBERS, UNICODE_VERSION, WHITE_SPACE, onig_class

__all__ = ["ClipTokenizer", "WordPieceTokenizer", "clean_text", "byte_to_unicode_table"]

START_TOKEN = "<start_of_text>"
END_TOKEN = "<end_of_text>"
WORD_END = "</w>"
DEFAULT_CONTEXT_LENGTH = 77
# The 16e6 file holds more merges than CLIP uses; the vocabulary is 49408 tokens:
# 256 byte symbols, 256 byte symbols with the end-of-word suffix, 48894 merges, 2 specials.
CLIP_VOCAB_SIZE = 49408
_N_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2

# Split pattern (Oniguruma syntax, as used by tokenizers' Split pre-tokenizer).
# The reference matches case-insensitively: the contractions list every character that
# matches them that way (U+017F long s folds to "s").
_CONTRACTIONS = r"'[sSſ]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"
# Letters, numbers and white space by cliprt's fixed Unicode version (cliprt.unicode_classes),
# spelled out rather than as \p{L} / \p{N} / \s, which follow the Unicode tables of the
# regex engine: tokenizers' Oniguruma and the reference's ``regex`` module each carry their own.
_LETTERS = onig_class(LETTERS)
_NUMBERS = onig_class(NUMBERS)
_PIECE_PATTERN = (
    _CONTRACTIONS
    + "|[" + _LETTERS + "]+"
    + "|[" + _NUMBERS + "]"
    # U+0345 folds to a letter, so the case-insensitive negated class excludes it while
    # the letter class does not take it: it matches nothing and is dropped.
    + "|[^" + onig_class(WHITE_SPACE) + _LETTERS + _NUMBERS + r"\x{345}]+"
)
# The reference also matches the special-token texts, case-insensitively. In lower-cased
# text the only other spelling that matches is "<ſtart_of_text>" (U+017F folds to "s"); it
# is not the special token and is BPE-encoded as one piece.
_START_VARIANT = "<\u017ftart_of_text>"
_SPECIALS_PATTERN = "<[s\u017f]tart_of_text>|" + END_TOKEN
_PIECE_PATTERN_WITH_SPECIALS = _SPECIALS_PATTERN + "|" + _PIECE_PATTERN
# every word containing a special-token text (or its variant) contains this
_SPECIAL_MARK = "_of_text>"


def byte_to_unicode_table() -> list[str]:
    """The 256 printable characters that stand for the bytes 0..255 in the BPE vocabulary.

    Bytes that are printable and not blank in Latin-1 stand for themselves; the remaining
    68 bytes (controls, space, NBSP, soft hyphen, ...) take the code points 256, 257, ...
    in byte order. The vocabulary lists the 256 symbols with the self-mapped bytes first,
    which is what :func:`_base_symbols` returns.
    """
    table = [""] * 256
    extra = 0
    for b in range(256):
        if _is_self_mapped(b):
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _is_self_mapped(b: int) -> bool:
    return 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF


def _base_symbols() -> list[str]:
    table = byte_to_unicode_table()
    self_mapped = [table[b] for b in range(256) if _is_self_mapped(b)]
    others = [table[b] for b in range(256) if not _is_self_mapped(b)]
    return self_mapped + others


def _read_merges(path: Union[str, os.PathLike]) -> list[tuple[str, str]]:
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")
    # line 0 is a version header; CLIP uses the first _N_MERGES merges after it
    body = lines[1 : 1 + _N_MERGES]
    merges = []
    for i, line in enumerate(body):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: line {i + 2} is not a merge pair: {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != _N_MERGES:
        raise ValueError(f"{path}: {len(merges)} merges, expected {_N_MERGES}")
    return merges


# --------------------------------------------------------------------------- cleaning

# ASCII characters that ftfy or HTML unescaping may act on: '&', '\r', control characters.
# An ASCII string without any of them is returned unchanged by both.
_TRIGGER_ASCII = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")
# What the replay in _fix_text hands to ftfy: surrogates.
_SURROGATE = re.compile("[\ud800-\udfff]")

_ftfy = None
_unescape_html = None      # ftfy's own HTML unescaper (not html.unescape)
_ftfy_is_bad = None        # ftfy's mojibake detector, the reference for _is_bad
_fix_maps = None           # see _build_fix_maps: full, pre, post
_fix_res = None            # the characters each of them changes
_needs_work = None         # what _replay may act on besides mojibake and NFC
_fix_split = None          # splits out what the full map changes, and surrogates
_fix_encoding = None       # ftfy.fix_encoding, or _fix_encoding_copy
_ansi_re = None            # ftfy's terminal escape pattern
_enc_ascii = None          # for _fix_encoding_copy: ftfy's possible_encoding regexes
_enc_1byte = None
_enc_none = None           # finds a character no single-byte encoding has (or None)
_bad_search = None         # search of _badness_regex
_bad_reach = 0             # BADNESS_RE's longest match, minus one
_max_segment = 0           # ftfy's max_decode_length
# sha256 of the source of ftfy 6.3's fix_encoding, fix_encoding_and_explain,
# _fix_encoding_one_step_and_explain, fixes.decode_inconsistent_utf8 and
# chardata.possible_encoding, which _fix_encoding_copy follows
_FTFY_ENCODING_FIXER_SHA256 = "ecf3c117a84155b39234c0c84ee24a9a2770be6cabbba1ac606c5d6b5c168c85"
# ftfy's character fixers, in the order of its fixing loop (ftfy 6)
_FIXER_ORDER = ("fix_c1_controls", "fix_latin_ligatures", "fix_character_width",
                "uncurl_quotes", "fix_line_breaks", "fix_surrogates",
                "remove_terminal_escapes", "remove_control_chars")


def _load_ftfy():
    """Import ftfy and derive the tables :func:`_fix_text` replays its fixing loop with."""
    global _ftfy, _unescape_html, _ftfy_is_bad, _fix_maps, _fix_res, _bad_search
    global _fix_encoding, _ansi_re, _max_segment, _bad_reach, _needs_work, _fix_split
    global _enc_ascii, _enc_1byte, _enc_none
    if _ftfy is not None:
        return
    import ftfy
    from ftfy import badness, chardata, fixes

    _unescape_html = fixes.unescape_html
    _ftfy_is_bad = badness.is_bad
    _fix_encoding = ftfy.fix_encoding
    if _same_source(_FTFY_ENCODING_FIXER_SHA256, ftfy.fix_encoding, ftfy.fix_encoding_and_explain,
                    ftfy._fix_encoding_one_step_and_explain, fixes.decode_inconsistent_utf8,
                    chardata.possible_encoding):
        _enc_ascii = chardata.ENCODING_REGEXES["ascii"].match
        _enc_1byte = [(e, chardata.ENCODING_REGEXES[e].match) for e in chardata.CHARMAP_ENCODINGS]
        _enc_none = _outside_all(chardata.ENCODING_REGEXES[e]
                                 for e in chardata.CHARMAP_ENCODINGS)
        _fix_encoding = _fix_encoding_copy
    _ansi_re = fixes.ANSI_RE
    config = ftfy.TextFixerConfig()
    _max_segment = config.max_decode_length
    replayable = (
        ftfy.__version__.split(".")[0] == "6"
        and config == ftfy.TextFixerConfig(
            unescape_html="auto", remove_terminal_escapes=True, fix_encoding=True,
            restore_byte_a0=True, replace_lossy_sequences=True, decode_inconsistent_utf8=True,
            fix_c1_controls=True, fix_latin_ligatures=True, fix_character_width=True,
            uncurl_quotes=True, fix_line_breaks=True, fix_surrogates=True,
            remove_control_chars=True, normalization="NFC", max_decode_length=_max_segment,
            explain=True)
        and all(name in ftfy.FIXERS for name in _FIXER_ORDER)
    )
    if replayable:
        _fix_maps = _build_fix_maps(ftfy.FIXERS, chardata)
        try:
            fast = _badness_regex(badness.BADNESS_RE)
        except Exception:  # internals of the re module changed: search the original
            fast = None
        if fast is not None:
            _bad_search = fast[0].search
            _bad_reach = fast[1]
    if _fix_maps is not None:
        _fix_res = tuple(_char_class(m) for m in _fix_maps)
        # the full map, splitting out what it changes and surrogates (mapped to None)
        _fix_split = re.compile("(" + _fix_res[0].pattern[:-1] + "\ud800-\udfff])").split
        _fix_maps[0].update((chr(c), None) for c in range(0xD800, 0xE000))
        # anything the replay may have to act on (see _replay)
        _needs_work = _char_class(set(_fix_maps[0]) | set("&\x1b\r") | {
            chr(c) for c in range(0xD800, 0xE000)})
    _ftfy = ftfy


def _build_fix_maps(fixers, chardata):
    """One pass of ftfy's character fixers as character maps: ``(full, pre, post)``.

    Every fixer but ``fix_line_breaks`` (``"\\r\\n"`` -> ``"\\n"``), ``fix_surrogates`` and
    ``remove_terminal_escapes`` maps each character on its own (translation tables and
    single-character patterns). ``full`` is the whole pass, for a text that went through
    ``replace("\\r\\n", "\\n")`` and holds no surrogate or escape character; a text with
    escape characters takes ``pre`` (the fixers before ``remove_terminal_escapes``), then
    that fixer itself, then ``post`` (``remove_control_chars``). This holds if no character
    becomes empty or gains a line break before ``fix_line_breaks`` runs (so the ``"\\r\\n"``
    pairs are the same before and after those fixers) and nothing becomes a surrogate or an
    escape character; otherwise ``None`` (no replay).
    """
    cands = set(range(0x80, 0xA0))
    for table in (chardata.LIGATURES, chardata.WIDTH_MAP, chardata.CONTROL_CHARS):
        cands.update(table)
    bmp = "".join(chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000)
    for rx in (chardata.SINGLE_QUOTE_RE, chardata.DOUBLE_QUOTE_RE):
        cands.update(map(ord, rx.findall(bmp)))
    cands.update(map(ord, "\r\u2028\u2029\x85"))
    early = [fixers[name] for name in _FIXER_ORDER[:4]]
    middle = [fixers[name] for name in _FIXER_ORDER[4:6]]
    escapes, controls = (fixers[name] for name in _FIXER_ORDER[6:])
    full, pre, post = {}, {}, {}
    for c in map(chr, sorted(cands | {0x0A, 0x1B})):
        g = c
        for f in early:
            g = f(g)
        if c in "\r\n\x1b":
            if g != c:
                return None
        elif not g or "\r" in g or "\n" in g:
            return None
        for f in middle:
            g = f(g)
        if c != "\x1b" and (_SURROGATE.search(g) or "\x1b" in g):
            return None
        h = controls(escapes(g))
        if g != c:
            pre[c] = g
        if h != c:
            full[c] = h
        k = controls(c)
        if k != c:
            post[c] = k
    return full, pre, post


def _char_class(chars) -> re.Pattern:
    return re.compile("[" + "".join(map(_re_escape_char, sorted(chars))) + "]")


def _badness_regex(pattern):
    """A regex that matches somewhere in a text iff ``pattern`` (ftfy's BADNESS_RE) does,
    and the length of ``pattern``'s longest match minus one.

    BADNESS_RE is an alternation of short sequences, each tried in turn at every position
    of the text. Rewritten here: every alternative gets an anchor, its element that
    matches the rarest finite set of (non-ASCII) characters; the new pattern starts with
    the set of all anchor characters, so the regex engine skips every other position in C,
    then checks with a lookbehind that the characters before the anchor are what the
    alternative wants there, and matches the rest of the alternative after it. Anchor
    characters used by the same alternatives are grouped, and a tree of lookbehinds picks
    the group of the character at hand, so each position tries only the alternatives its
    character can anchor. ``None`` when the pattern does not have that shape (the original
    is searched then). Checked against the original in tests/test_tokenize.py.

    A match of the new pattern starts at the anchor, with the lookbehinds reading before
    it, so ``search(text, pos, endpos)`` finds every match of ``pattern`` that lies within
    ``pos:endpos`` (and only matches of ``pattern``, though maybe starting before ``pos``).
    """
    try:
        from re import _compiler as sre_compile, _constants as sre, _parser as sre_parse
    except ImportError:  # Python < 3.11
        import sre_compile
        import sre_constants as sre
        import sre_parse
    if pattern.flags & re.IGNORECASE:
        return None
    parsed = sre_parse.parse(pattern.pattern, pattern.flags)
    if len(parsed.data) != 1 or parsed.data[0][0] is not sre.BRANCH:
        return None
    state = parsed.state

    def sub(items):
        return sre_parse.SubPattern(state, list(items))

    def charset(op, av):
        if op is sre.LITERAL:
            return {chr(av)}
        if op is not sre.IN:
            return None
        s = set()
        for iop, iav in av:
            if iop is sre.LITERAL:
                s.add(chr(iav))
            elif iop is sre.RANGE and iav[1] - iav[0] < 0x3000:
                s.update(map(chr, range(iav[0], iav[1] + 1)))
            else:
                return None
        return s

    def cost(s):  # ASCII, then letters, are what ordinary text is full of
        return (sum(c.isascii() for c in s), sum(c.isalpha() for c in s), len(s))

    def variants(items):
        """The alternative with each optional element (``x?``) left out or kept."""
        out = [[]]
        for op, av in items:
            if op is sre.MAX_REPEAT and av[0] == 0 and av[1] == 1:
                out = [v + e for v in out for e in ([], list(av[2].data))]
            else:
                out = [v + [(op, av)] for v in out]
        return out

    def in_items(chars):
        cps = sorted(map(ord, chars))
        items = []
        i = 0
        while i < len(cps):
            j = i
            while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
                j += 1
            items.append((sre.LITERAL, cps[i]) if i == j else (sre.RANGE, (cps[i], cps[j])))
            i = j + 1
        return items

    entries = []                  # (anchor chars, lookbehind items or None, rest items)
    for alt in parsed.data[0][1][1]:
        for items in variants(list(alt.data)):
            best = None
            for k, (op, av) in enumerate(items):
                s = charset(op, av)
                if s is not None and (best is None or cost(s) < cost(best[0])):
                    best = (s, k)
            if best is None or cost(best[0])[0]:
                return None       # no anchor, or only an ASCII one: not worth it
            s, k = best
            before = items[:k + 1] if k else None
            if before is not None:
                lo, hi = sub(before).getwidth()
                if lo != hi:
                    return None
            entries.append((s, before, items[k + 1:]))
    groups: dict[tuple, list[str]] = {}
    for c in set().union(*(e[0] for e in entries)):
        key = tuple(i for i, e in enumerate(entries) if c in e[0])
        groups.setdefault(key, []).append(c)
    leaves = []                   # (characters, items matching after such an anchor)
    for key, chars in groups.items():
        alts = []
        for i in key:
            _, before, rest = entries[i]
            head = [(sre.ASSERT, (-1, sub(before)))] if before is not None else []
            alts.append(sub(head + rest))
        body = [(sre.BRANCH, (None, alts))] if len(alts) > 1 else list(alts[0].data)
        leaves.append((set(chars), body))
    leaves.sort(key=lambda leaf: min(leaf[0]))

    def tree(leaves):
        """Items that pick, by lookbehinds over halves of the groups, the leaf of the
        character just matched and match its body: about log2(groups) tests."""
        if len(leaves) == 1:
            return leaves[0][1]
        half = len(leaves) // 2
        alts = []
        for part in (leaves[:half], leaves[half:]):
            chars = set().union(*(leaf[0] for leaf in part))
            test = (sre.ASSERT, (-1, sub([(sre.IN, in_items(chars))])))
            alts.append(sub([test] + tree(part)))
        return [(sre.BRANCH, (None, alts))]

    union = set().union(*(leaf[0] for leaf in leaves))
    whole = sub([(sre.IN, in_items(union))] + tree(leaves))
    return sre_compile.compile(whole, pattern.flags), parsed.getwidth()[1] - 1


def _re_escape_char(c: str) -> str:
    return "\\x{:02x}".format(ord(c)) if ord(c) < 0x100 else (
        "\\u{:04x}".format(ord(c)) if ord(c) < 0x10000 else "\\U{:08x}".format(ord(c)))


def _is_bad(text: str) -> bool:
    """``ftfy.badness.is_bad(text)`` (see :func:`_badness_regex`)."""
    if _bad_search is None:
        return _ftfy_is_bad(text)
    return _bad_search(text) is not None


def _same_source(sha256: str, *functions) -> bool:
    import hashlib
    import inspect

    try:
        text = "".join(inspect.getsource(f) for f in functions)
    except (OSError, TypeError):
        return False
    return hashlib.sha256(text.encode("utf-8")).hexdigest() == sha256


def _outside_all(patterns):
    """The search of a regex for a character that none of ``patterns`` (ftfy's
    ``^[...]*$`` encoding regexes) accepts, or ``None`` if they have another shape."""
    try:
        from re import _constants as sre, _parser as sre_parse
    except ImportError:  # Python < 3.11
        import sre_constants as sre
        import sre_parse
    chars = set()
    for p in patterns:
        items = list(sre_parse.parse(p.pattern, p.flags))
        if (len(items) != 3 or items[0] != (sre.AT, sre.AT_BEGINNING)
                or items[2] != (sre.AT, sre.AT_END) or items[1][0] is not sre.MAX_REPEAT):
            return None
        lo, _, body = items[1][1]
        body = list(body)
        if lo != 0 or len(body) != 1 or body[0][0] is not sre.IN:
            return None
        for op, av in body[0][1]:
            if op is sre.LITERAL:
                chars.add(av)
            elif op is sre.RANGE:
                chars.update(range(av[0], av[1] + 1))
            else:
                return None
    return re.compile("[^" + "".join(_re_escape_char(chr(c)) for c in sorted(chars)) + "]").search


def _fix_encoding_copy(text: str) -> str:
    """``ftfy.fix_encoding(text)`` (default configuration), following ftfy 6.3's code step
    by step, without its explanations and with the faster :func:`_is_bad`. Only used when
    the source of ftfy's functions is the one this was written from."""
    while True:
        prev = text
        text = _fix_encoding_step(text)
        if text == prev:
            return text


def _fix_encoding_step(text: str) -> str:
    chardata, fixes = _ftfy.chardata, _ftfy.fixes
    if len(text) == 0:
        return text
    if _enc_ascii(text) or not _is_bad(text):
        return text
    possible_1byte_encodings = []
    for encoding, possible in _enc_1byte if _enc_none is None or _enc_none(text) is None else ():
        if possible(text):
            possible_1byte_encodings.append(encoding)
            encoded_bytes = text.encode(encoding)
            try:
                decoding = "utf-8"
                if encoding != "macroman" and chardata.ALTERED_UTF8_RE.search(encoded_bytes):
                    encoded_bytes = fixes.restore_byte_a0(encoded_bytes)
                if encoding.startswith("sloppy"):
                    encoded_bytes = fixes.replace_lossy_sequences(encoded_bytes)
                if 0xED in encoded_bytes or 0xC0 in encoded_bytes:
                    decoding = "utf-8-variants"
                return encoded_bytes.decode(decoding)
            except UnicodeDecodeError:
                pass
    if chardata.UTF8_DETECTOR_RE.search(text):
        # fixes.decode_inconsistent_utf8
        def fix_embedded_mojibake(match):
            substr = match.group(0)
            if len(substr) < len(text) and _is_bad(substr):
                return _fix_encoding_copy(substr)
            return substr

        fixed = chardata.UTF8_DETECTOR_RE.sub(fix_embedded_mojibake, text)
        if fixed != text:
            return fixed
    if "latin-1" in possible_1byte_encodings:
        if "windows-1252" in possible_1byte_encodings:
            return text
        try:
            fixed = text.encode("latin-1").decode("windows-1252")
            if fixed != text:
                return fixed
        except UnicodeDecodeError:
            pass
    if chardata.C1_CONTROL_RE.search(text):
        return fixes.fix_c1_controls(text)
    return text


def _apply_map(t: str, i: int) -> str:
    rx = _fix_res[i]
    if rx.search(t) is None:
        return t
    m = _fix_maps[i]
    return rx.sub(lambda x: m[x.group()], t)


def _apply_map_tracked(t: str):
    """``_apply_map(t, 0)`` and the spans ``(start, end)`` of what it put in, in the result;
    ``(None, None)`` if ``t`` holds a surrogate."""
    parts = _fix_split(t)
    if len(parts) == 1:
        return t, []
    parts[1::2] = map(_fix_maps[0].__getitem__, parts[1::2])
    if None in parts:
        return None, None
    ends = list(itertools.accumulate(map(len, parts)))
    return "".join(parts), list(zip(ends[0::2], ends[1::2]))


def _is_bad_near(t: str, spans: list) -> bool:
    """``_is_bad(t)`` for a text whose only possible matches overlap ``spans``: text put in
    since a check that found nothing (an empty span: characters removed there)."""
    search = _bad_search
    reach = _bad_reach
    lo = hi = -1
    for s, e in spans:
        a = s - reach
        if a <= hi:
            hi = e + reach
            continue
        if hi >= 0 and search(t, lo, hi) is not None:
            return True
        lo, hi = (a if a > 0 else 0), e + reach
    return hi >= 0 and search(t, lo, hi) is not None


def _fix_text(text: str) -> str:
    """``ftfy.fix_text(text)``, computed without most of ftfy where that is provably the same.

    ftfy fixes each line (segment, up to and including a ``"\\n"``) on its own, in a loop:
    HTML unescaping (off for the first line with ``<`` and every line after it), the
    encoding fixer (which leaves a text alone unless it is non-ASCII and
    :func:`ftfy.badness.is_bad`), the character fixers, NFC; until a pass changes nothing.
    All of it but the encoding fixer and the ``<`` rule acts on a text as on each of its
    lines, so the loop is first replayed on the whole text (:func:`_replay`); if the
    encoding fixer or the ``<`` rule matters and there are several lines, line by line.
    """
    if _ftfy is None:
        _load_ftfy()
    if _fix_maps is None or len(text) >= _max_segment:
        return _ftfy.fix_text(text)
    nl = text.find("\n")
    if nl < 0 or nl == len(text) - 1:
        fixed = _replay(text, "<" not in text, True)
        return _ftfy.fix_text(text) if fixed is None else fixed
    fixed = _replay(text, "<" not in text, False)
    if fixed is not None:
        return fixed
    lines = text.split("\n")
    lines = [s + "\n" for s in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    html_on = True
    out = []
    for s in lines:
        html_on = html_on and "<" not in s
        fixed = _replay(s, html_on, True)
        if fixed is None:
            config = _ftfy.TextFixerConfig(explain=False,
                                           unescape_html="auto" if html_on else False)
            fixed = _ftfy.fix_and_explain(s, config).text
        out.append(fixed)
    return "".join(out)


def _replay(text: str, html_on: bool, one_line: bool) -> str | None:
    """ftfy's fixing loop on ``text`` (see :func:`_fix_text`), or ``None`` where it needs
    ftfy itself: a surrogate at the character fixers; with ``one_line`` false, a pass in
    which the encoding fixer would act or with ``&`` while HTML unescaping is off.

    A pass after the first only looks for mojibake where the previous pass's character
    fixers put something in, when that is all that changed since its own look: a match of
    ftfy's detector that lies entirely in unchanged text was there at that look."""
    if _needs_work.search(text) is None:
        # nothing for HTML unescaping or the character fixers: one pass
        if text.isascii() or (not _is_bad(text) and unicodedata.is_normalized("NFC", text)):
            return text
    # Surrogates are found by the character fixers' step, where ftfy's fix_surrogates
    # would act; the steps before it treat them as ftfy does.
    t = text
    first = True
    near = None         # spans to look for mojibake at, instead of the whole text
    while True:
        orig = t
        if "&" in t:
            if html_on:
                t = _unescape_html(t)
                if t != orig:
                    near = None
            elif not one_line:
                return None
        if not t.isascii() and (_is_bad(t) if near is None else _is_bad_near(t, near)):
            if not one_line:
                return None
            t = _fix_encoding(t)
            near = None
        else:
            near = ()
        if "\r\n" in t:
            t = t.replace("\r\n", "\n")
            near = None
        if "\x1b" in t:
            if _SURROGATE.search(t) is not None:
                return None
            t = _apply_map(t, 1)                  # fixers before the escape remover
            t = _ansi_re.sub("", t)
            t = _apply_map(t, 2)                  # remove_control_chars
            near = None
        else:
            t, spans = _apply_map_tracked(t)
            if t is None:
                return None
            if near is not None and _bad_search is not None:
                near = spans
            else:
                near = None
        # after the first pass the text is NFC: unchanged by this pass, it stays so
        if (first or t != orig) and not t.isascii() and not unicodedata.is_normalized("NFC", t):
            t = unicodedata.normalize("NFC", t)
            near = None
        if t == orig:
            return t
        first = False


def _clean_words(text: str, maxsplit: int = -1) -> list[str]:
    """The words of ``clean_text(text)``: ``split(None, maxsplit)`` of the cleaned text,
    except that with more than ``maxsplit`` words the last item (the rest) is not
    lower-cased."""
    if not (text.isascii() and _TRIGGER_ASCII.search(text) is None):
        text = _fix_text(text)
        if "&" in text:
            text = html.unescape(html.unescape(text))
    if maxsplit < 0 or len(text) < 64 * (maxsplit + 1):
        return text.lower().split(None, maxsplit)
    # a long text: lower-case only the words that are kept (lower-casing neither makes
    # nor removes spaces, and acts on each word as within the text)
    words = text.split(None, maxsplit)
    rest = words.pop() if len(words) > maxsplit else None
    words = " ".join(words).lower().split(" ") if words else []
    if rest is not None:
        words.append(rest)
    return words


def clean_text(text: str) -> str:
    """open_clip's ``clean='lower'`` text cleaning.

    Order: ftfy repair, HTML unescape twice, collapse every run of (Python) whitespace into
    one space and strip, lower-case.
    """
    return " ".join(_clean_words(text))


# --------------------------------------------------------------------------- CLIP BPE

TextInput = Union[str, Sequence[str]]


class _WordTable:
    """Token ids of words: ``index[word]`` is a row of ``start`` / ``length`` into ``pool``.

    Rows are only appended (under the tokenizer's lock, arrays before the index), so a
    reader that took a word's row from ``index`` finds it in the arrays it reads after.
    """

    __slots__ = ("index", "start", "length", "pool", "n_words", "n_tokens")

    def __init__(self):
        self.index: dict[str, int] = {}
        self.start = np.zeros(4096, np.int64)
        self.length = np.zeros(4096, np.int64)
        self.pool = np.zeros(16384, np.int32)
        self.n_words = 0
        self.n_tokens = 0

    def add(self, words: list[str], id_lists: list) -> None:
        k = len(words)
        lens = np.fromiter(map(len, id_lists), np.int64, k)
        total = int(lens.sum())
        n, used = self.n_words, self.n_tokens
        if n + k > self.start.size:
            size = max(2 * self.start.size, n + k)
            self.start = _grown(self.start, size, n)
            self.length = _grown(self.length, size, n)
        if used + total > self.pool.size:
            self.pool = _grown(self.pool, max(2 * self.pool.size, used + total), used)
        self.pool[used:used + total] = np.fromiter(
            itertools.chain.from_iterable(id_lists), np.int32, total)
        ends = np.cumsum(lens)
        self.start[n:n + k] = used + ends - lens
        self.length[n:n + k] = lens
        self.n_words, self.n_tokens = n + k, used + total
        self.index.update(zip(words, range(n, n + k)))


def _lookup(index: dict, keys: list) -> tuple:
    """``tuple(index[k] for k in keys)``, in one C loop."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)(index)
    return (index[keys[0]],) if keys else ()


def _grown(a: np.ndarray, size: int, used: int) -> np.ndarray:
    b = np.zeros(size, a.dtype)
    b[:used] = a[:used]
    return b


class ClipTokenizer:
    """CLIP's BPE tokenizer; ``tok(texts)`` -> int64 array ``(n, context_length)``.

    Keeps the ids of every distinct cleaned word it has seen; ``cache_words`` bounds that
    cache (it starts over when a batch begins with more words, or more than 16 ids per
    allowed word, in it). Safe to call from several threads.
    """

    #: the Unicode version by which characters are letters, numbers or space in the split
    unicode_version = UNICODE_VERSION

    def __init__(self, tokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH,
                 cache_words: int = 1 << 18):
        from tokenizers import Regex, pre_tokenizers

        if context_length < 2:
            raise ValueError("context_length must be at least 2 (start and end tokens)")
        _load_ftfy()
        self.context_length = int(context_length)
        self.vocab_size = tokenizer.get_vocab_size()
        self.sot_token_id = tokenizer.token_to_id(START_TOKEN)
        self.eot_token_id = tokenizer.token_to_id(END_TOKEN)
        self._tok = tokenizer
        # bare pipeline: split, byte-level mapping, BPE; no specials, truncation or padding
        self._bare = _clone(tokenizer)
        self._bare.no_truncation()
        self._bare.no_padding()
        self._bare.post_processor = None
        self._fast_batch = hasattr(self._bare, "encode_batch_fast")
        self._special_splitter = pre_tokenizers.Split(
            Regex(_PIECE_PATTERN_WITH_SPECIALS), behavior="removed", invert=True)
        self._byte_table = byte_to_unicode_table()
        self._cache_words = int(cache_words)
        self._table = _WordTable()
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_vocab(cls, path: Union[str, os.PathLike],
                   context_length: int = DEFAULT_CONTEXT_LENGTH, **kwargs) -> "ClipTokenizer":
        """Build from ``bpe_simple_vocab_16e6.txt.gz`` (or its uncompressed text)."""
        return cls(build_clip_tokenizer(path), context_length, **kwargs)

    # ----------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens, truncation or padding."""
        words = _clean_words(text)
        table, w = self._word_rows(words)
        start, length, pool = table.start, table.length, table.pool
        lens = length[w]
        if not lens.size:
            return []
        ends = np.cumsum(lens)
        src = np.repeat(start[w] - (ends - lens), lens) + np.arange(int(ends[-1]))
        return pool[src].tolist()

    def __call__(self, texts: TextInput, context_length: int | None = None) -> np.ndarray:
        return self.encode_with_lengths(texts, context_length)[0]

    def lengths(self, texts: TextInput, context_length: int | None = None) -> np.ndarray:
        """Unpadded lengths (start and end tokens included, at most context_length)."""
        return self.encode_with_lengths(texts, context_length)[1]

    def encode_with_lengths(self, texts: TextInput, context_length: int | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 (n, context_length), lengths int64 (n,))`` in one pass."""
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, list):
            texts = list(texts)
        ctx = self.context_length if context_length is None else int(context_length)
        if ctx < 2:
            raise ValueError("context_length must be at least 2 (start and end tokens)")
        n = len(texts)
        keep = ctx - 2
        if n == 0:
            return np.zeros((0, ctx), np.int64), np.zeros(0, np.int64)
        # Only the first `keep` words can reach the output if each yields an id: split off
        # at most keep + 1 pieces, the last being the rest of the text. The words go
        # straight into one flat list (no list per text outlives its text).
        trigger = _TRIGGER_ASCII.search
        flat: list[str] = []
        extend = flat.extend
        counts: list[int] = []
        count = counts.append
        cut = []
        for t in texts:
            ws = (t.lower().split(None, keep) if t.isascii() and trigger(t) is None
                  else _clean_words(t, keep))
            if len(ws) > keep:
                del ws[keep:]
                cut.append(len(counts))
            extend(ws)
            count(len(ws))
        counts_np = np.array(counts, np.int64)
        ids, lengths, totals = self._assemble(flat, counts_np, ctx)
        if cut:
            # a word without ids (U+0345 alone) leaves room for later words: redo those
            short = {i for i in cut if totals[i] < keep}
            if short:
                offsets = [0, *itertools.accumulate(counts)]
                redone: list[str] = []
                for i, t in enumerate(texts):
                    ws = _clean_words(t) if i in short else flat[offsets[i]:offsets[i + 1]]
                    redone += ws
                    counts[i] = len(ws)
                ids, lengths, _ = self._assemble(redone, np.array(counts, np.int64), ctx)
        return ids, lengths

    def _assemble(self, flat: list[str], counts: np.ndarray, ctx: int):
        """Padded ids, lengths and untruncated id counts of a batch: the words of all texts
        in ``flat``, ``counts[i]`` of them for text ``i``."""
        n = counts.size
        keep = ctx - 2
        table, w = self._word_rows(flat)
        lens = table.length[w]
        starts = table.start[w]
        pool = table.pool
        cum = np.zeros(lens.size + 1, np.int64)
        np.cumsum(lens, out=cum[1:])
        wend = np.cumsum(counts)
        first = cum[wend - counts]              # index of each text's first id
        totals = cum[wend] - first
        n_ids = int(cum[-1])
        # position in the pool of every id, in text order
        src = np.repeat(starts - cum[:-1], lens)
        src += np.arange(n_ids)
        m = np.minimum(totals, keep)
        if n_ids > int(m.sum()):                # drop the ids truncation cuts off
            pos = np.arange(n_ids) - np.repeat(first, totals)
            src = src[pos < keep]
        out = np.zeros((n, ctx), np.int64)
        body = out[:, 1:]
        body[np.arange(ctx - 1) < m[:, None]] = pool[src]
        out[:, 0] = self.sot_token_id
        out[np.arange(n), m + 1] = self.eot_token_id
        return out, m + 2, totals

    def _word_rows(self, flat: list[str]):
        """The word table and the row of every word in ``flat`` (adding missing words)."""
        table = self._table
        if table.n_words > self._cache_words or table.n_tokens > 16 * self._cache_words:
            with self._lock:
                if self._table is table:
                    self._table = _WordTable()
                table = self._table
        try:
            rows = np.fromiter(_lookup(table.index, flat), np.int64, len(flat))
        except KeyError:  # some words are new
            with self._lock:
                index = table.index
                missing = [w for w in dict.fromkeys(flat) if w not in index]
                if missing:
                    table.add(missing, self._encode_words(missing))
                rows = np.fromiter(map(index.__getitem__, flat), np.int64, len(flat))
        return table, rows

    # ----------------------------------------------------------------- internals
    def _encode_words(self, words: list[str]) -> list[list[int]]:
        """Ids of cleaned words (the Rust pipeline; the exact path for special texts)."""
        plain = [w for w in words if _SPECIAL_MARK not in w]
        encoded = iter(self._encode_batch(plain) if plain else ())
        return [next(encoded).ids if _SPECIAL_MARK not in w else self._encode_with_specials(w)
                for w in words]

    def _encode_batch(self, cleaned: list[str]):
        if self._fast_batch:
            return self._bare.encode_batch_fast(cleaned, add_special_tokens=False)
        return self._bare.encode_batch(cleaned, add_special_tokens=False)

    def _encode_with_specials(self, cleaned: str) -> list[int]:
        """Exact path for texts in which the special-token strings occur.

        The reference pattern tries the special-token texts first at every position where
        a piece starts, so ``x<end_of_text>`` yields the end id but ``!<end_of_text>`` does
        not (the punctuation run swallows the ``<``). The pieces are found with that
        pattern; the text between two special pieces is encoded on its own, which splits it
        exactly as the reference does, since no reference piece crosses a special piece.
        ``<ſtart_of_text>`` is such a piece too, but the reference BPE-encodes it as one
        word.
        """
        ids: list[int] = []
        prev = 0
        # offsets from pre_tokenize_str are in characters of the (cleaned) input
        for piece, (start, end) in self._special_splitter.pre_tokenize_str(cleaned):
            if piece == START_TOKEN or piece == END_TOKEN or piece == _START_VARIANT:
                if start > prev:
                    ids += self._bare.encode(cleaned[prev:start], add_special_tokens=False).ids
                if piece == START_TOKEN:
                    ids.append(self.sot_token_id)
                elif piece == END_TOKEN:
                    ids.append(self.eot_token_id)
                else:
                    mapped = "".join(self._byte_table[b] for b in piece.encode("utf-8"))
                    ids += [t.id for t in self._bare.model.tokenize(mapped)]
                prev = end
        if prev < len(cleaned):
            ids += self._bare.encode(cleaned[prev:], add_special_tokens=False).ids
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids (start, end and padding ids dropped); word ends become spaces."""
        skip = (0, self.sot_token_id, self.eot_token_id)
        pieces = [self._tok.id_to_token(int(i)) for i in ids if int(i) not in skip]
        table = {c: b for b, c in enumerate(self._byte_table)}
        joined = "".join(pieces)
        out = bytearray()
        i = 0
        while i < len(joined):
            if joined.startswith(WORD_END, i):
                out += b" "
                i += len(WORD_END)
            else:
                out.append(table[joined[i]])
                i += 1
        return out.decode("utf-8", errors="replace")


def build_clip_tokenizer(path: Union[str, os.PathLike]):
    """A ``tokenizers.Tokenizer`` with CLIP's BPE vocabulary, merges and splitting."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    merges = _read_merges(path)
    symbols = _base_symbols()
    vocab_list = symbols + [s + WORD_END for s in symbols]
    vocab_list += [a + b for a, b in merges]
    vocab_list += [START_TOKEN, END_TOKEN]
    if len(vocab_list) != CLIP_VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab_list)} entries, expected {CLIP_VOCAB_SIZE}")
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    if len(vocab) != len(vocab_list):
        raise ValueError(f"{os.fspath(path)}: the vocabulary lists a token twice")

    model = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix=WORD_END,
                       unk_token=None, fuse_unk=False)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PIECE_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{START_TOKEN} $A {END_TOKEN}",
        special_tokens=[(START_TOKEN, vocab[START_TOKEN]), (END_TOKEN, vocab[END_TOKEN])],
    )
    return tok


def _clone(tokenizer):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer.to_str())


# --------------------------------------------------------------------------- WordPiece

class WordPieceTokenizer:
    """BERT-style tokenizer from a ``tokenizer.json`` (e.g. all-MiniLM-L6-v2).

    Truncates to ``context_length`` (the post-processor's [CLS]/[SEP] included) and pads
    every row on the right to ``context_length``; returns int64 ``input_ids``,
    ``attention_mask`` and ``token_type_ids``. Rust encodes without padding; the padded
    arrays are filled in numpy from the flattened ids, so the Python work grows with the
    number of real tokens, not with ``context_length``.
    """

    def __init__(self, tokenizer, context_length: int):
        if context_length < 1:
            raise ValueError("context_length must be positive")
        self.context_length = int(context_length)
        self._tok = tokenizer
        pad = tokenizer.padding or {}
        pad_id = pad.get("pad_id", None)
        pad_token = pad.get("pad_token", None)
        if pad_id is None or pad_token is None:
            pad_token = "[PAD]" if tokenizer.token_to_id("[PAD]") is not None else None
            pad_id = tokenizer.token_to_id(pad_token) if pad_token else 0
        self.pad_id = int(pad_id)
        tokenizer.enable_truncation(max_length=self.context_length)
        tokenizer.no_padding()

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike],
                  context_length: int = 512) -> "WordPieceTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(os.fspath(path)), context_length)

    def _encode(self, texts: TextInput):
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, list):
            texts = list(texts)
        if not texts:
            enc = []
        elif hasattr(self._tok, "encode_batch_fast"):  # no character offsets
            enc = self._tok.encode_batch_fast(texts, add_special_tokens=True)
        else:
            enc = self._tok.encode_batch(texts, add_special_tokens=True)
        return enc, np.fromiter(map(len, enc), np.int64, len(enc))

    def __call__(self, texts: TextInput) -> dict[str, np.ndarray]:
        enc, lengths = self._encode(texts)
        n, ctx = lengths.size, self.context_length
        total = int(lengths.sum())
        mask = np.arange(ctx) < lengths[:, None]
        ids = np.full((n, ctx), self.pad_id, np.int64)
        ids[mask] = np.fromiter(itertools.chain.from_iterable(e.ids for e in enc),
                                np.int64, total)
        types = np.zeros((n, ctx), np.int64)
        types[mask] = np.fromiter(itertools.chain.from_iterable(e.type_ids for e in enc),
                                  np.int64, total)
        return {"input_ids": ids, "attention_mask": mask.astype(np.int64),
                "token_type_ids": types}

    def lengths(self, texts: TextInput) -> np.ndarray:
        """Number of tokens of each text ([CLS]/[SEP] included, at most context_length)."""
        return self._encode(texts)[1]
