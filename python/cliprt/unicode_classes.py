"""The character classes of the CLIP split pattern, at one fixed Unicode version.

open_clip splits cleaned text with the ``regex`` module's ``\\p{L}`` (letters), ``\\p{N}``
(numbers) and ``\\s`` (white space). Those classes follow the Unicode version of whatever
``regex`` release is installed, and a new release reclassifies newly assigned code points:
the same text can then split, and so tokenize, differently from one environment to the next.
cliprt does not follow the installed ``regex``: its tokenizer classifies characters by
Unicode :data:`UNICODE_VERSION`, with tables shipped in the package
(``data/clip_unicode_classes.json``), so a text's ids depend on the text and the vocabulary
alone. Code points that version does not assign are neither letters nor numbers: they split
like punctuation.

The tables are General_Category L* (letters) and N* (numbers) and the White_Space property,
as ranges of code points. They are written from the Unicode Character Database of that
version as packaged by ``unicodedata2``::

    pip install unicodedata2==VERSION && python -m cliprt.unicode_classes

and ``tests/test_tokenize.py`` checks the shipped file against that package.
"""
from __future__ import annotations

import bisect
import json
import os
import sys
from typing import Iterable, List, Sequence, Tuple

__all__ = ["UNICODE_VERSION", "LETTERS", "NUMBERS", "WHITE_SPACE", "from_ucd", "onig_class", "contains"]

Ranges = Tuple[Tuple[int, int], ...]

TABLE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "clip_unicode_classes.json")
# White_Space (PropList.txt), unchanged since Unicode 6.3; unicodedata2 does not expose it
_WHITE_SPACE = ((0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000))


def _ranges(code_points: Iterable[int]) -> Ranges:
    out: List[Tuple[int, int]] = []
    for c in sorted(code_points):
        if out and out[-1][1] == c - 1:
            out[-1] = (out[-1][0], c)
        else:
            out.append((c, c))
    return tuple(out)


def from_ucd(ucd) -> dict:
    """The tables from a ``unicodedata``-like module (``unicodedata2`` of the wanted version)."""
    letters, numbers = [], []
    for c in range(sys.maxunicode + 1):
        cat = ucd.category(chr(c))
        if cat[0] == "L":
            letters.append(c)
        elif cat[0] == "N":
            numbers.append(c)
    return {"unicode_version": ucd.unidata_version, "letters": _ranges(letters), "numbers": _ranges(numbers),
            "white_space": _WHITE_SPACE}


def _load(path: str = TABLE_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    return {"unicode_version": raw["unicode_version"],
            **{k: tuple((int(a), int(b)) for a, b in raw[k]) for k in ("letters", "numbers", "white_space")}}


def onig_class(ranges: Sequence[Tuple[int, int]]) -> str:
    """The ranges as the inside of an Oniguruma character class (``\\x{41}-\\x{5a}...``)."""
    return "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges)


def contains(ranges: Sequence[Tuple[int, int]], code_point: int) -> bool:
    """Whether ``code_point`` lies in one of the sorted, disjoint ``ranges``."""
    i = bisect.bisect_right(ranges, (code_point, sys.maxunicode + 1)) - 1
    return i >= 0 and ranges[i][0] <= code_point <= ranges[i][1]


_TABLES = _load()
UNICODE_VERSION: str = _TABLES["unicode_version"]
LETTERS: Ranges = _TABLES["letters"]
NUMBERS: Ranges = _TABLES["numbers"]
WHITE_SPACE: Ranges = _TABLES["white_space"]


def _write(tables: dict, path: str = TABLE_FILE) -> None:
    lines = ["{", f'  "unicode_version": "{tables["unicode_version"]}",']
    keys = ("letters", "numbers", "white_space")
    for k in keys:
        rows = [", ".join(f"[{a}, {b}]" for a, b in tables[k][i:i + 8]) for i in range(0, len(tables[k]), 8)]
        lines.append(f'  "{k}": [\n    ' + ",\n    ".join(rows) + "\n  ]" + ("," if k != keys[-1] else ""))
    lines.append("}")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    import unicodedata2

    _write(from_ucd(unicodedata2))
    print(f"wrote {TABLE_FILE} (Unicode {unicodedata2.unidata_version})")
