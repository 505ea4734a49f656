"""Regexes derived from ftfy's own, through the parser and compiler of Python's ``re`` module.

Used by :mod:`cliprt.text.ftfy_fast`; each function returns ``None`` when the pattern it is
given does not have the shape it was written for (or the ``re`` internals are not the ones
it knows), and the caller then uses ftfy's function instead. The internals are
``re._parser`` / ``re._compiler`` / ``re._constants`` on Python 3.11 and later, and
``sre_parse`` / ``sre_compile`` / ``sre_constants`` before.
"""
from __future__ import annotations

import re


def _sre():
    """``(parser, compiler, constants)`` of the ``re`` module."""
    try:
        from re import _compiler, _constants, _parser
    except ImportError:  # Python < 3.11
        import sre_compile as _compiler
        import sre_constants as _constants
        import sre_parse as _parser
    return _parser, _compiler, _constants


def escape_char(c: str) -> str:
    """``c`` as a ``re`` escape (``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``), for character classes."""
    cp = ord(c)
    if cp < 0x100:
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def char_class(chars) -> re.Pattern:
    """A regex matching one character of ``chars``."""
    return re.compile("[" + "".join(map(escape_char, sorted(chars))) + "]")


def badness_regex(pattern: re.Pattern):
    """A regex that matches somewhere in a text iff ``pattern`` (ftfy's BADNESS_RE) does,
    and the length of ``pattern``'s longest match minus one; ``None`` when the pattern does
    not have the shape this rewrite needs.

    BADNESS_RE is an alternation of short sequences, each tried in turn at every position
    of the text. Rewritten here: every alternative gets an anchor, its element that
    matches the rarest finite set of (non-ASCII) characters; the new pattern starts with
    the set of all anchor characters, so the regex engine skips every other position in C,
    then checks with a lookbehind that the characters before the anchor are what the
    alternative wants there, and matches the rest of the alternative after it. Anchor
    characters used by the same alternatives are grouped, and a tree of lookbehinds picks
    the group of the character at hand, so each position tries only the alternatives its
    character can anchor. Checked against the original in tests/test_tokenize.py.

    A match of the new pattern starts at the anchor, with the lookbehinds reading before
    it, so ``search(text, pos, endpos)`` finds every match of ``pattern`` that lies within
    ``pos:endpos`` (and only matches of ``pattern``, though maybe starting before ``pos``).
    """
    sre_parse, sre_compile, sre = _sre()
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


def outside_all(patterns):
    """The ``search`` of a regex for a character that none of ``patterns`` (ftfy's
    ``^[...]*$`` encoding regexes) accepts, or ``None`` if they have another shape."""
    sre_parse, _, sre = _sre()
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
    return re.compile("[^" + "".join(escape_char(chr(c)) for c in sorted(chars)) + "]").search
