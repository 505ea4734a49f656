"""open_clip's ``clean='lower'`` text cleaning, split into the words the CLIP tokenizer encodes.

The reference cleaning is ``" ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()``.
Here it must match that exactly:

* An ASCII string without ``&``, ``\\r`` or control characters (none of
  :data:`TRIGGER_ASCII`) is left alone by ftfy and by HTML unescaping, so it only goes
  through ``lower().split()``.
* Everything else goes through a text fixer equal to ``ftfy.fix_text``:
  :func:`cliprt.text.ftfy_fast.fix_text` by default, ftfy's own with
  ``text_fixer(replay=False)`` (same output; kept to measure what the replay gains, see
  benchmarks/tokenize_bench.py ``--fixers``), then HTML unescaping twice where an ``&`` is left.
* For every character, lower-casing neither creates nor removes whitespace and the
  final-sigma rule stops at whitespace, so ``text.lower().split()`` are exactly the words of
  the reference's ``" ".join(text.split()).lower()`` (checked by tests/test_tokenize.py).
"""
from __future__ import annotations

import html
import re
from typing import Callable

from . import ftfy_fast

__all__ = ["clean_text", "clean_words", "text_fixer", "TRIGGER_ASCII"]

#: ASCII characters that ftfy or HTML unescaping may act on: ``&``, ``\r``, control
#: characters. An ASCII string without any of them is returned unchanged by both.
TRIGGER_ASCII = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")

TextFixer = Callable[[str], str]


def text_fixer(replay: bool = True) -> TextFixer:
    """The function that computes ``ftfy.fix_text``: the replay (:mod:`.ftfy_fast`), or with
    ``replay=False`` ftfy's own. Imports ftfy either way."""
    state = ftfy_fast.load()
    return ftfy_fast.fix_text if replay else state.ftfy.fix_text


def clean_words(text: str, maxsplit: int = -1, fix: TextFixer = ftfy_fast.fix_text) -> list[str]:
    """The words of ``clean_text(text)``: ``split(None, maxsplit)`` of the cleaned text,
    except that with more than ``maxsplit`` words the last item (the rest) is not
    lower-cased. ``fix`` computes ``ftfy.fix_text`` (see :func:`text_fixer`)."""
    if not (text.isascii() and TRIGGER_ASCII.search(text) is None):
        text = fix(text)
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
    return " ".join(clean_words(text))
