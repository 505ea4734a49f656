"""Text tokenizers of cliprt's text towers.

* :mod:`.clip_bpe` -- :class:`ClipTokenizer`, CLIP's byte-level BPE with open_clip's ids.
* :mod:`.wordpiece` -- :class:`WordPieceTokenizer`, BERT-style towers from a ``tokenizer.json``.
* :mod:`.cleaning` -- open_clip's ``clean='lower'`` cleaning (:func:`clean_text`).
* :mod:`.ftfy_fast` -- ``ftfy.fix_text``, exact, computed mostly without ftfy (its module
  docstring states for which ftfy and Python it does what); :mod:`.ftfy_regexes` derives
  the regexes it needs from ftfy's.

The split's character classes are those of :mod:`cliprt.unicode_classes`.
``cliprt.tokenize`` is the older module name; it re-exports these names.
"""
from __future__ import annotations

from ._input import TextInput
from .cleaning import clean_text, text_fixer
from .clip_bpe import ClipTokenizer, build_clip_tokenizer, byte_to_unicode_table
from .wordpiece import WordPieceTokenizer

__all__ = ["ClipTokenizer", "WordPieceTokenizer", "clean_text", "byte_to_unicode_table",
           "build_clip_tokenizer", "text_fixer", "TextInput"]
