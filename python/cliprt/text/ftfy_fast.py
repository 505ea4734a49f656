"""``ftfy.fix_text`` computed without most of ftfy, where that is provably the same.

Contract
--------
:func:`fix_text` returns exactly ``ftfy.fix_text(text)`` (ftfy's default configuration)
for every ``str``, whichever ftfy and Python are installed. The versions only decide how
much of the work is done here and how much by ftfy's own functions:

* **The replay of ftfy's fixing loop** (:func:`_replay`) runs when the installed ftfy is a
  6.x release whose default ``TextFixerConfig`` is :data:`_REPLAYED_CONFIG`, whose
  ``ftfy.FIXERS`` holds the character fixers of :data:`_FIXER_ORDER`, and whose character
  fixers act on characters one at a time in the way :func:`_build_fix_maps` checks when
  it folds them into character maps. Otherwise :func:`fix_text` is ``ftfy.fix_text``.
  Texts of ``max_decode_length`` characters or more always go to ``ftfy.fix_text``.
* **The mojibake detector**: ``ftfy.badness.BADNESS_RE`` is rewritten into an equivalent
  regex that the regex engine can skip through (:func:`.ftfy_regexes.badness_regex`,
  built with the parser of Python's ``re`` module). When the pattern has another shape or
  the ``re`` internals are not the ones that function knows, ``ftfy.badness.is_bad`` is
  used instead.
* **The encoding fixer**: :func:`fix_encoding_copy` follows ftfy 6.3's
  ``fix_encoding`` step by step. It is used only when the SHA-256 of the source text
  (``inspect.getsource``) of the five ftfy functions it follows, concatenated, equals
  :data:`FTFY_ENCODING_FIXER_SHA256`. Any change to them in another ftfy release, or an
  installation without source files, fails that check, and ``ftfy.fix_encoding`` is used.
  Re-pinning after reading the new source against the copy is a deliberate edit of that
  constant; tests/test_tokenize.py fails while the pin does not match the installed ftfy,
  so a new release is noticed rather than silently slower.

The replay normalizes with Python's ``unicodedata``, as ftfy does, so the Unicode version
of the running Python changes both alike. Verified with ftfy 6.3.1 on CPython 3.11 by
tests/test_tokenize.py (each fast part on, and each turned off) and
tests/test_text_ftfy_guard.py (a generated corpus of tens of thousands of strings:
mojibake of many encodings, HTML entities, many scripts, emoji, control characters, line
breaks). On other versions the checks above decide which parts run; the guard test is
what confirms exactness there.

What the replay does
--------------------
ftfy fixes each line (a segment up to and including ``"\\n"``) on its own, in a loop: HTML
unescaping (off for the first line with ``<`` and every line after it), the encoding fixer
(which leaves a text alone unless it is non-ASCII and ``is_bad``), the character fixers,
NFC; until a pass changes nothing. All of it but the encoding fixer and the ``<`` rule acts
on a text as on each of its lines, so the loop is first replayed on the whole text; if the
encoding fixer or the ``<`` rule matters and there are several lines, line by line. The
character fixers are folded into character maps applied only where a text holds a
character they change; the detector is searched only near what a pass put in, when that
is all that changed since the last search.

State
-----
Every table derived from the installed ftfy is an attribute of one :class:`ReplayState`,
built on first use by :func:`load` and kept in this module. The functions here read it on
each call, so setting one of its attributes to its fallback value (``bad_search = None``,
``enc_none = None``, ``fix_encoding = ftfy.fix_encoding``, ``fix_maps = None``) turns that
fast part off for every caller; tests do so to check the fallbacks.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import re
import threading
import unicodedata

from .ftfy_regexes import badness_regex, char_class, outside_all

__all__ = ["fix_text", "is_bad", "fix_encoding_copy", "load", "ReplayState",
           "FTFY_ENCODING_FIXER_SHA256"]

#: sha256 of the source of ftfy 6.3's ``fix_encoding``, ``fix_encoding_and_explain``,
#: ``_fix_encoding_one_step_and_explain``, ``fixes.decode_inconsistent_utf8`` and
#: ``chardata.possible_encoding`` (concatenated), which :func:`fix_encoding_copy` follows
FTFY_ENCODING_FIXER_SHA256 = "ecf3c117a84155b39234c0c84ee24a9a2770be6cabbba1ac606c5d6b5c168c85"
#: ftfy's character fixers, in the order of its fixing loop (ftfy 6)
_FIXER_ORDER = ("fix_c1_controls", "fix_latin_ligatures", "fix_character_width",
                "uncurl_quotes", "fix_line_breaks", "fix_surrogates",
                "remove_terminal_escapes", "remove_control_chars")
#: the default ``TextFixerConfig`` the replay follows, less ``max_decode_length`` (read)
_REPLAYED_CONFIG = dict(
    unescape_html="auto", remove_terminal_escapes=True, fix_encoding=True,
    restore_byte_a0=True, replace_lossy_sequences=True, decode_inconsistent_utf8=True,
    fix_c1_controls=True, fix_latin_ligatures=True, fix_character_width=True,
    uncurl_quotes=True, fix_line_breaks=True, fix_surrogates=True,
    remove_control_chars=True, normalization="NFC", explain=True)

_SURROGATE = re.compile("[\ud800-\udfff]")


class ReplayState:
    """The tables :func:`fix_text` replays ftfy with, derived from the installed ftfy.

    A fast part that does not apply to this ftfy holds its fallback: ``fix_maps`` is
    ``None`` (no replay: ``ftfy.fix_text``), ``bad_search`` is ``None`` (``is_bad`` is
    ftfy's), ``fix_encoding`` is ``ftfy.fix_encoding`` (not :func:`fix_encoding_copy`),
    ``enc_none`` is ``None`` (every single-byte encoding is tried).
    """

    __slots__ = (
        "ftfy", "chardata", "fixes",
        "unescape_html",   # ftfy's own HTML unescaper (not html.unescape)
        "ftfy_is_bad",     # ftfy's mojibake detector, the reference for is_bad
        "fix_encoding",    # ftfy.fix_encoding, or fix_encoding_copy
        "ansi_re",         # ftfy's terminal escape pattern
        "max_segment",     # ftfy's max_decode_length
        "fix_maps",        # (full, pre, post) of _build_fix_maps, or None
        "fix_res",         # the characters each of them changes
        "fix_split",       # splits out what the full map changes, and surrogates
        "needs_work",      # what _replay may act on besides mojibake and NFC
        "bad_search",      # search of the rewritten BADNESS_RE, or None
        "bad_reach",       # BADNESS_RE's longest match, minus one
        "enc_ascii",       # for fix_encoding_copy: ftfy's possible_encoding regexes
        "enc_1byte",
        "enc_none",        # finds a character no single-byte encoding has, or None
    )

    def __init__(self):
        import ftfy
        from ftfy import badness, chardata, fixes

        self.ftfy, self.chardata, self.fixes = ftfy, chardata, fixes
        self.unescape_html = fixes.unescape_html
        self.ftfy_is_bad = badness.is_bad
        self.ansi_re = fixes.ANSI_RE
        config = ftfy.TextFixerConfig()
        self.max_segment = config.max_decode_length
        self.fix_maps = self.fix_res = self.fix_split = self.needs_work = None
        self.bad_search, self.bad_reach = None, 0
        self.fix_encoding = ftfy.fix_encoding
        self.enc_ascii = self.enc_1byte = self.enc_none = None
        if _same_source(FTFY_ENCODING_FIXER_SHA256, ftfy.fix_encoding,
                        ftfy.fix_encoding_and_explain, ftfy._fix_encoding_one_step_and_explain,
                        fixes.decode_inconsistent_utf8, chardata.possible_encoding):
            self.enc_ascii = chardata.ENCODING_REGEXES["ascii"].match
            self.enc_1byte = [(e, chardata.ENCODING_REGEXES[e].match)
                              for e in chardata.CHARMAP_ENCODINGS]
            self.enc_none = outside_all(chardata.ENCODING_REGEXES[e]
                                        for e in chardata.CHARMAP_ENCODINGS)
            self.fix_encoding = fix_encoding_copy
        replayable = (
            ftfy.__version__.split(".")[0] == "6"
            and config == ftfy.TextFixerConfig(max_decode_length=self.max_segment,
                                               **_REPLAYED_CONFIG)
            and all(name in ftfy.FIXERS for name in _FIXER_ORDER))
        if not replayable:
            return
        maps = _build_fix_maps(ftfy.FIXERS, chardata)
        if maps is None:
            return
        try:
            fast = badness_regex(badness.BADNESS_RE)
        except Exception:  # internals of the re module changed: search the original
            fast = None
        if fast is not None:
            self.bad_search, self.bad_reach = fast[0].search, fast[1]
        self.fix_res = tuple(char_class(m) for m in maps)
        surrogates = {chr(c) for c in range(0xD800, 0xE000)}
        # the full map, splitting out what it changes and surrogates (mapped to None)
        self.fix_split = re.compile(
            "(" + self.fix_res[0].pattern[:-1] + "\ud800-\udfff])").split
        maps[0].update(dict.fromkeys(surrogates))
        # anything the replay may have to act on (see _replay)
        self.needs_work = char_class(set(maps[0]) | set("&\x1b\r") | surrogates)
        self.fix_maps = maps


_state: ReplayState | None = None
_load_lock = threading.Lock()


def load() -> ReplayState:
    """The replay's state, built (importing ftfy) on the first call."""
    global _state
    if _state is None:
        with _load_lock:
            if _state is None:
                _state = ReplayState()
    return _state


def _same_source(sha256: str, *functions) -> bool:
    try:
        text = "".join(inspect.getsource(f) for f in functions)
    except (OSError, TypeError):
        return False
    return hashlib.sha256(text.encode("utf-8")).hexdigest() == sha256


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


# --------------------------------------------------------------------------- detector

def is_bad(text: str) -> bool:
    """``ftfy.badness.is_bad(text)`` (see :func:`.ftfy_regexes.badness_regex`)."""
    return _is_bad(_state or load(), text)


def _is_bad(s: ReplayState, text: str) -> bool:
    search = s.bad_search
    return s.ftfy_is_bad(text) if search is None else search(text) is not None


def _is_bad_near(s: ReplayState, t: str, spans: list) -> bool:
    """``is_bad(t)`` for a text whose only possible matches overlap ``spans``: text put in
    since a check that found nothing (an empty span: characters removed there)."""
    search = s.bad_search
    reach = s.bad_reach
    lo = hi = -1
    for a, e in spans:
        a -= reach
        if a <= hi:
            hi = e + reach
            continue
        if hi >= 0 and search(t, lo, hi) is not None:
            return True
        lo, hi = (a if a > 0 else 0), e + reach
    return hi >= 0 and search(t, lo, hi) is not None


# --------------------------------------------------------------------------- encoding fixer

def fix_encoding_copy(text: str) -> str:
    """``ftfy.fix_encoding(text)`` (default configuration), following ftfy 6.3's code step
    by step, without its explanations and with the faster :func:`is_bad`. Only used when
    the source of ftfy's functions is the one this was written from (see the module
    docstring)."""
    s = _state or load()
    while True:
        prev = text
        text = _fix_encoding_step(s, text)
        if text == prev:
            return text


def _fix_encoding_step(s: ReplayState, text: str) -> str:
    chardata, fixes = s.chardata, s.fixes
    if len(text) == 0:
        return text
    if s.enc_ascii(text) or not _is_bad(s, text):
        return text
    possible_1byte_encodings = []
    for encoding, possible in s.enc_1byte if s.enc_none is None or s.enc_none(text) is None else ():
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
            if len(substr) < len(text) and _is_bad(s, substr):
                return fix_encoding_copy(substr)
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


# --------------------------------------------------------------------------- the fixing loop

def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)`` (see the module docstring)."""
    s = _state or load()
    if s.fix_maps is None or len(text) >= s.max_segment:
        return s.ftfy.fix_text(text)
    if _untouched(s, text):
        return text
    nl = text.find("\n")
    if nl < 0 or nl == len(text) - 1:
        fixed = _replay(s, text, "<" not in text, True)
        return s.ftfy.fix_text(text) if fixed is None else fixed
    fixed = _replay(s, text, "<" not in text, False)
    if fixed is not None:
        return fixed
    lines = text.split("\n")
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    html_on = True
    out = []
    for line in lines:
        html_on = html_on and "<" not in line
        fixed = line if _untouched(s, line) else _replay(s, line, html_on, True)
        if fixed is None:
            config = s.ftfy.TextFixerConfig(explain=False,
                                            unescape_html="auto" if html_on else False)
            fixed = s.ftfy.fix_and_explain(line, config).text
        out.append(fixed)
    return "".join(out)


def _apply_map(s: ReplayState, t: str, i: int) -> str:
    rx = s.fix_res[i]
    if rx.search(t) is None:
        return t
    m = s.fix_maps[i]
    return rx.sub(lambda x: m[x.group()], t)


def _apply_map_tracked(s: ReplayState, t: str):
    """``_apply_map(s, t, 0)`` and the spans ``(start, end)`` of what it put in, in the
    result; ``(None, None)`` if ``t`` holds a surrogate."""
    parts = s.fix_split(t)
    if len(parts) == 1:
        return t, []
    parts[1::2] = map(s.fix_maps[0].__getitem__, parts[1::2])
    if None in parts:
        return None, None
    ends = list(itertools.accumulate(map(len, parts)))
    return "".join(parts), list(zip(ends[0::2], ends[1::2]))


def _untouched(s: ReplayState, text: str) -> bool:
    """Whether ftfy's loop leaves ``text`` as it is at its first pass: nothing for HTML
    unescaping or the character fixers, no mojibake, already NFC (whatever the line)."""
    if s.needs_work.search(text) is not None:
        return False
    return text.isascii() or (not _is_bad(s, text) and unicodedata.is_normalized("NFC", text))


def _replay(s: ReplayState, text: str, html_on: bool, one_line: bool) -> str | None:
    """ftfy's fixing loop on ``text``, or ``None`` where it needs ftfy itself: a surrogate
    at the character fixers; with ``one_line`` false, a pass in which the encoding fixer
    would act or with ``&`` while HTML unescaping is off. (Callers first skip the texts
    that :func:`_untouched` finds.)

    A pass after the first only looks for mojibake where the previous pass's character
    fixers put something in, when that is all that changed since its own look: a match of
    ftfy's detector that lies entirely in unchanged text was there at that look."""
    # Surrogates are found by the character fixers' step, where ftfy's fix_surrogates
    # would act; the steps before it treat them as ftfy does.
    t = text
    first = True
    near = None         # spans to look for mojibake at, instead of the whole text
    while True:
        orig = t
        if "&" in t:
            if html_on:
                t = s.unescape_html(t)
                if t != orig:
                    near = None
            elif not one_line:
                return None
        if not t.isascii() and (_is_bad(s, t) if near is None else _is_bad_near(s, t, near)):
            if not one_line:
                return None
            t = s.fix_encoding(t)
            near = None
        else:
            near = ()
        if "\r\n" in t:
            t = t.replace("\r\n", "\n")
            near = None
        if "\x1b" in t:
            if _SURROGATE.search(t) is not None:
                return None
            t = _apply_map(s, t, 1)               # fixers before the escape remover
            t = s.ansi_re.sub("", t)
            t = _apply_map(s, t, 2)               # remove_control_chars
            near = None
        else:
            t, spans = _apply_map_tracked(s, t)
            if t is None:
                return None
            if near is not None and s.bad_search is not None:
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
