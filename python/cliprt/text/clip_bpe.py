"""CLIP's byte-level BPE tokenizer (OpenAI CLIP / open_clip), built on the Rust ``tokenizers`` library.

:class:`ClipTokenizer` uses the vocabulary file ``bpe_simple_vocab_16e6.txt.gz`` and produces
the same ids as open_clip's ``SimpleTokenizer`` with its default ``clean='lower'``: text
repair with ftfy, two rounds of HTML unescaping, whitespace collapsing, lower-casing,
``[start] + tokens + [end]``, truncation that keeps the end token as the last id, zero
padding to the context length. Neither torch nor open_clip is imported: the runtime gets
the vocabulary file path. ``tokenizers`` and ``ftfy`` are needed.

The pipeline
------------
1. Cleaning (:mod:`cliprt.text.cleaning`): plain ASCII texts only go through
   ``lower().split()``; the rest through ``ftfy.fix_text`` (computed by
   :mod:`cliprt.text.ftfy_fast` unless ``ftfy_replay=False``) and HTML unescaping first.
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
import itertools
import operator
import os
import threading
from typing import Iterable, Union

import numpy as np

from ..unicode_classes import LETTERS, NUMBERS, UNICODE_VERSION, WHITE_SPACE, onig_class
from ._input import TextInput, as_list
from .cleaning import TRIGGER_ASCII, clean_words, text_fixer

__all__ = ["ClipTokenizer", "build_clip_tokenizer", "byte_to_unicode_table", "START_TOKEN",
           "END_TOKEN", "WORD_END", "DEFAULT_CONTEXT_LENGTH", "CLIP_VOCAB_SIZE"]

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



# --------------------------------------------------------------------------- the tokenizer

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

    ``ftfy_replay`` chooses how ``ftfy.fix_text`` is computed for texts that need it:
    :mod:`cliprt.text.ftfy_fast` (default) or ftfy itself (``False``; same ids, slower,
    for measuring the difference).
    """

    #: the Unicode version by which characters are letters, numbers or space in the split
    unicode_version = UNICODE_VERSION

    def __init__(self, tokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH,
                 cache_words: int = 1 << 18, ftfy_replay: bool = True):
        from tokenizers import Regex, pre_tokenizers

        if context_length < 2:
            raise ValueError("context_length must be at least 2 (start and end tokens)")
        self._fix = text_fixer(ftfy_replay)
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
        words = clean_words(text, -1, self._fix)
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
        texts = as_list(texts)
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
        trigger = TRIGGER_ASCII.search      # plain ASCII skips cleaning (see .cleaning)
        fix = self._fix
        flat: list[str] = []
        extend = flat.extend
        counts: list[int] = []
        count = counts.append
        cut = []
        for t in texts:
            ws = (t.lower().split(None, keep) if t.isascii() and trigger(t) is None
                  else clean_words(t, keep, fix))
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
                    ws = clean_words(t, -1, fix) if i in short else flat[offsets[i]:offsets[i + 1]]
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
