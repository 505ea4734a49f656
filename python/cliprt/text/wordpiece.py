"""BERT-style WordPiece tokenizer for text towers such as all-MiniLM-L6-v2, straight from a
``tokenizer.json`` (the Rust ``tokenizers`` library does all the text work)."""
from __future__ import annotations

import itertools
import os
from typing import Union

import numpy as np

from ._input import TextInput, as_list

__all__ = ["WordPieceTokenizer"]


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
        texts = as_list(texts)
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
