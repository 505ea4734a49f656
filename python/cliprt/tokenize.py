"""Compatibility module: the tokenizers live in :mod:`cliprt.text`.

``cliprt.tokenize`` keeps every name it had before that package existed: the public ones
(:class:`ClipTokenizer`, :class:`WordPieceTokenizer`, :func:`clean_text`,
:func:`byte_to_unicode_table`, ...) and the private ones tests/test_tokenize.py reads and
patches (``_PIECE_PATTERN``, ``_load_ftfy``, ``_fix_text``, ``_is_bad``,
``_fix_encoding_copy`` and the ftfy fast path's state).

The state names (``_fix_maps``, ``_bad_search``, ``_fix_encoding``, ``_enc_none``, ... see
:data:`_STATE_NAMES`) are not copies held here. They stand for attributes of the one
:class:`cliprt.text.ftfy_fast.ReplayState` that :func:`cliprt.text.ftfy_fast.fix_text`
reads on every call: this module's class makes each of them a property that reads and
sets that object's attribute (building the object on first use, which imports ftfy). So
``monkeypatch.setattr(cliprt.tokenize, "_bad_search", None)`` turns the rewritten mojibake
detector off in the code that runs, and undoing the patch turns it back on. New code
should import from :mod:`cliprt.text` instead.
"""
from __future__ import annotations

import sys
import types

from .text import ftfy_fast as _ftfy_fast
from .text._input import TextInput  # noqa: F401  (re-exported)
from .text.cleaning import clean_text
from .text.clip_bpe import (  # noqa: F401  (re-exported)
    _PIECE_PATTERN,
    CLIP_VOCAB_SIZE,
    DEFAULT_CONTEXT_LENGTH,
    END_TOKEN,
    START_TOKEN,
    WORD_END,
    ClipTokenizer,
    build_clip_tokenizer,
    byte_to_unicode_table,
)
from .text.wordpiece import WordPieceTokenizer

__all__ = ["ClipTokenizer", "WordPieceTokenizer", "clean_text", "byte_to_unicode_table"]

_load_ftfy = _ftfy_fast.load
_fix_text = _ftfy_fast.fix_text
_is_bad = _ftfy_fast.is_bad
_fix_encoding_copy = _ftfy_fast.fix_encoding_copy
_FTFY_ENCODING_FIXER_SHA256 = _ftfy_fast.FTFY_ENCODING_FIXER_SHA256

#: former module global of this module -> attribute of ftfy_fast's ReplayState
_STATE_NAMES = {
    "_ftfy": "ftfy", "_unescape_html": "unescape_html", "_ftfy_is_bad": "ftfy_is_bad",
    "_fix_maps": "fix_maps", "_fix_res": "fix_res", "_needs_work": "needs_work",
    "_fix_split": "fix_split", "_fix_encoding": "fix_encoding", "_ansi_re": "ansi_re",
    "_enc_ascii": "enc_ascii", "_enc_1byte": "enc_1byte", "_enc_none": "enc_none",
    "_bad_search": "bad_search", "_bad_reach": "bad_reach", "_max_segment": "max_segment",
}


def _forwarded(attr: str) -> property:
    def get(self):
        return getattr(_ftfy_fast.load(), attr)

    def set(self, value):
        setattr(_ftfy_fast.load(), attr, value)

    return property(get, set, doc=f"``cliprt.text.ftfy_fast.load().{attr}``")


class _ForwardingModule(types.ModuleType):
    """This module's class: each name of :data:`_STATE_NAMES` is a property that reads and
    sets the attribute of ftfy_fast's state (a data descriptor, so ``setattr`` and pytest's
    ``monkeypatch`` and its undo go through it)."""


for _name, _attr in _STATE_NAMES.items():
    setattr(_ForwardingModule, _name, _forwarded(_attr))
del _name, _attr

sys.modules[__name__].__class__ = _ForwardingModule
