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

How the CLIP pipeline is split between Python and Rust
------------------------------------------------------
Text cleaning runs in Python, because it must match Python's ``str.split`` / ``str.lower``
/ ``html.unescape`` and ftfy exactly. ftfy is the single most expensive step of the
reference tokenizer, so :func:`clean_text` only calls it when it could change the text:
a string without any character that one of ftfy's character-level fixers acts on, already
in NFC, and with no line that ftfy's mojibake detector flags, is returned unchanged by
``ftfy.fix_text`` (its fixing loop stops after one pass that changes nothing), so the call is
skipped. Everything else (pre-tokenization, byte-level mapping, BPE, start/end tokens,
truncation, padding) runs in Rust through ``Tokenizer.encode_batch``, which uses several
threads.

The pre-tokenizer reproduces the reference split pattern
``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`` (case-insensitive in the
reference). After lower-casing, case-insensitivity only matters for two characters, which
the pattern spells out: U+017F (long s) also completes the ``'s`` contraction, and U+0345
(combining ypogegrammeni, whose case fold is a letter) matches no alternative at all, so
it is dropped like whitespace. The literal texts ``<start_of_text>`` / ``<end_of_text>``
are matched by the reference pattern too and become the special ids; strings containing
them take a slower, exact path (:meth:`ClipTokenizer._encode_with_specials`).
"""
from __future__ import annotations

import gzip
import html
import os
import re
import unicodedata
from typing import Iterable, Sequence, Union

import numpy as np

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
# Letters and digits that the reference's ``regex`` module (Unicode 17) knows but
# tokenizers' Oniguruma (Unicode 16) does not; tests/test_tokenize.py compares the split
# over every code point with the installed ``regex``.
_LETTERS_EXTRA = r"\x{88f}\x{c5c}\x{cdc}\x{a7ce}-\x{a7cf}\x{a7d2}\x{a7d4}\x{a7f1}\x{10940}-\x{10959}\x{10ec5}-\x{10ec7}\x{11db0}-\x{11ddb}\x{16ea0}-\x{16eb8}\x{16ebb}-\x{16ed3}\x{16ff2}-\x{16ff3}\x{187f8}-\x{187ff}\x{18d09}-\x{18d1e}\x{18d80}-\x{18df2}\x{1e6c0}-\x{1e6de}\x{1e6e0}-\x{1e6e2}\x{1e6e4}-\x{1e6e5}\x{1e6e7}-\x{1e6ed}\x{1e6f0}-\x{1e6f4}\x{1e6fe}-\x{1e6ff}\x{2b73a}-\x{2b73f}\x{2cea2}-\x{2cead}\x{323b0}-\x{33479}"
_DIGITS_EXTRA = r"\x{11de0}-\x{11de9}\x{16ff4}-\x{16ff6}"
_PIECE_PATTERN = (
    _CONTRACTIONS
    + r"|[\p{L}" + _LETTERS_EXTRA + r"]+"
    + r"|[\p{N}" + _DIGITS_EXTRA + r"]"
    # U+0345 folds to a letter, so the case-insensitive negated class excludes it while
    # the letter class does not take it: it matches nothing and is dropped.
    + r"|[^\s\p{L}\p{N}" + _LETTERS_EXTRA + _DIGITS_EXTRA + r"\x{345}]+"
)
_PIECE_PATTERN_WITH_SPECIALS = START_TOKEN + "|" + END_TOKEN + "|" + _PIECE_PATTERN


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

_ftfy = None
_ftfy_is_bad = None
_TRIGGER_ASCII = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")  # '&', '\r' and control chars
_trigger_any = None


def _load_ftfy():
    """Import ftfy and build the character class of everything its fixers may touch."""
    global _ftfy, _ftfy_is_bad, _trigger_any
    if _ftfy is not None:
        return
    import ftfy
    from ftfy import chardata
    from ftfy.badness import is_bad

    chars = set("&\r\x1b\u2028\u2029\x85")                  # html, line breaks, escapes
    chars.update(chr(c) for c in range(0x80, 0xA0))          # C1 controls
    chars.update(chr(c) for c in range(0xD800, 0xE000))      # surrogates
    chars.update("\u02bc\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f")  # curly quotes
    for table in (chardata.CONTROL_CHARS, chardata.LIGATURES, chardata.WIDTH_MAP):
        chars.update(chr(c) for c in table)
    for rx in (chardata.SINGLE_QUOTE_RE, chardata.DOUBLE_QUOTE_RE):
        chars.update(rx.findall("".join(chr(c) for c in range(0x2000, 0x2100)) + "\u02bc"))
    chars.update(chr(c) for c in range(0x00, 0x20) if c not in (0x09, 0x0A, 0x20))
    chars.add("\x7f")
    cls = "".join(_re_escape_char(c) for c in sorted(chars))
    _trigger_any = re.compile("[" + cls + "]")
    _ftfy_is_bad = is_bad
    _ftfy = ftfy


def _re_escape_char(c: str) -> str:
    return "\\x{:02x}".format(ord(c)) if ord(c) < 0x100 else (
        "\\u{:04x}".format(ord(c)) if ord(c) < 0x10000 else "\\U{:08x}".format(ord(c)))


def _ftfy_would_change(text: str) -> bool:
    """False only when ``ftfy.fix_text(text) == text`` is certain (see the module doc)."""
    if text.isascii():
        # ASCII is never treated as mojibake and is stable under NFC.
        return _TRIGGER_ASCII.search(text) is not None
    if _trigger_any.search(text) is not None:
        return True
    if len(text) >= 1_000_000:                    # ftfy's segment length bound
        return True
    if not unicodedata.is_normalized("NFC", text):
        return True
    if "\n" not in text:
        return _ftfy_is_bad(text)
    # ftfy fixes line by line (each segment keeps its "\n")
    pos = 0
    n = len(text)
    while pos < n:
        nl = text.find("\n", pos)
        end = n if nl < 0 else nl + 1
        if _ftfy_is_bad(text[pos:end]):
            return True
        pos = end
    return False


def clean_text(text: str) -> str:
    """open_clip's ``clean='lower'`` text cleaning.

    Order: ftfy repair, HTML unescape twice, collapse every run of (Python) whitespace into
    one space and strip, lower-case.
    """
    if _ftfy is None:
        _load_ftfy()
    if _ftfy_would_change(text):
        text = _ftfy.fix_text(text)
    if "&" in text:
        text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


# --------------------------------------------------------------------------- CLIP BPE

TextInput = Union[str, Sequence[str]]


class ClipTokenizer:
    """CLIP's BPE tokenizer; ``tok(texts)`` -> int64 array ``(n, context_length)``."""

    def __init__(self, tokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH):
        from tokenizers import Regex, pre_tokenizers

        if context_length < 2:
            raise ValueError("context_length must be at least 2 (start and end tokens)")
        _load_ftfy()
        self.context_length = int(context_length)
        self.vocab_size = tokenizer.get_vocab_size()
        self.sot_token_id = tokenizer.token_to_id(START_TOKEN)
        self.eot_token_id = tokenizer.token_to_id(END_TOKEN)
        # full pipeline: start/end tokens, truncation keeping the end token, zero padding
        self._tok = tokenizer
        self._tok.enable_truncation(max_length=self.context_length)
        self._tok.enable_padding(length=self.context_length, pad_id=0, pad_token="!")
        # bare pipeline for the exact path (strings containing the special-token texts)
        self._bare = _clone(tokenizer)
        self._bare.no_truncation()
        self._bare.no_padding()
        self._bare.post_processor = None
        self._fast_batch = hasattr(self._bare, "encode_batch_fast")
        self._special_splitter = pre_tokenizers.Split(
            Regex(_PIECE_PATTERN_WITH_SPECIALS), behavior="removed", invert=True)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_vocab(cls, path: Union[str, os.PathLike],
                   context_length: int = DEFAULT_CONTEXT_LENGTH) -> "ClipTokenizer":
        """Build from ``bpe_simple_vocab_16e6.txt.gz`` (or its uncompressed text)."""
        return cls(build_clip_tokenizer(path), context_length)

    # ----------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens, truncation or padding."""
        return self._encode_bare(clean_text(text))

    def __call__(self, texts: TextInput, context_length: int | None = None) -> np.ndarray:
        ids, _ = self.encode_with_lengths(texts, context_length)
        return ids

    def lengths(self, texts: TextInput, context_length: int | None = None) -> np.ndarray:
        """Unpadded lengths (start and end tokens included, at most context_length)."""
        return self.encode_with_lengths(texts, context_length)[1]

    def encode_with_lengths(self, texts: TextInput, context_length: int | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 (n, context_length), lengths int64 (n,))`` in one pass."""
        if isinstance(texts, str):
            texts = [texts]
        ctx = self.context_length if context_length is None else int(context_length)
        if ctx != self.context_length:
            return ClipTokenizer(_clone(self._tok), ctx).encode_with_lengths(texts)
        cleaned = [clean_text(t) for t in texts]
        n = len(cleaned)
        out = np.zeros((n, ctx), dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        if n == 0:
            return out, lengths
        keep = ctx - 2
        special = []
        for i, t in enumerate(cleaned):
            if START_TOKEN in t or END_TOKEN in t:
                special.append(i)
                cleaned[i] = ""  # encoded on the exact path below
            elif len(t) > 2 * ctx and "\u0345" not in t:
                # Only the first ctx-2 tokens survive truncation. Every space-separated
                # word of cleaned text yields at least one token (U+0345 alone yields
                # none, hence the guard) and no piece spans a space, so the first ctx
                # words give the same leading tokens as the whole text.
                words = t.split(" ", ctx)
                if len(words) > ctx:
                    cleaned[i] = " ".join(words[:ctx])
        encodings = self._encode_batch(cleaned)
        sot, eot = self.sot_token_id, self.eot_token_id
        for i, enc in enumerate(encodings):
            ids = enc.ids
            m = len(ids) if len(ids) <= keep else keep
            row = out[i]
            row[0] = sot
            row[1:m + 1] = ids[:m]
            row[m + 1] = eot
            lengths[i] = m + 2
        for i in special:
            toks = self._encode_with_specials(clean_text(texts[i]))[:keep]
            out[i] = 0
            out[i, 0] = sot
            out[i, 1:len(toks) + 1] = toks
            out[i, len(toks) + 1] = eot
            lengths[i] = len(toks) + 2
        return out, lengths

    def _encode_batch(self, cleaned: list[str]):
        if self._fast_batch:
            return self._bare.encode_batch_fast(cleaned, add_special_tokens=False)
        return self._bare.encode_batch(cleaned, add_special_tokens=False)

    # ----------------------------------------------------------------- internals
    def _encode_bare(self, cleaned: str) -> list[int]:
        if START_TOKEN in cleaned or END_TOKEN in cleaned:
            return self._encode_with_specials(cleaned)
        return self._bare.encode(cleaned, add_special_tokens=False).ids

    def _encode_with_specials(self, cleaned: str) -> list[int]:
        """Exact path for texts in which the special-token strings occur.

        The reference pattern tries the special-token texts first at every position where
        a piece starts, so ``x<end_of_text>`` yields the end id but ``!<end_of_text>`` does
        not (the punctuation run swallows the ``<``). The pieces are found with that
        pattern; the text between two special pieces is encoded on its own, which splits it
        exactly as the reference does, since no reference piece crosses a special piece.
        """
        ids: list[int] = []
        prev = 0
        # offsets from pre_tokenize_str are in characters of the (cleaned) input
        for piece, (start, end) in self._special_splitter.pre_tokenize_str(cleaned):
            if piece == START_TOKEN or piece == END_TOKEN:
                if start > prev:
                    ids += self._bare.encode(cleaned[prev:start], add_special_tokens=False).ids
                ids.append(self.sot_token_id if piece == START_TOKEN else self.eot_token_id)
                prev = end
        if prev < len(cleaned):
            ids += self._bare.encode(cleaned[prev:], add_special_tokens=False).ids
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids (start, end and padding ids dropped); word ends become spaces."""
        skip = (0, self.sot_token_id, self.eot_token_id)
        pieces = [self._tok.id_to_token(int(i)) for i in ids if int(i) not in skip]
        table = {c: b for b, c in enumerate(byte_to_unicode_table())}
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
    every row to ``context_length``; returns int64 ``input_ids``, ``attention_mask`` and
    ``token_type_ids``.
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
            pad_token = pad_token or tokenizer.id_to_token(0)
        self.pad_id = int(pad_id)
        tokenizer.enable_truncation(max_length=self.context_length)
        tokenizer.enable_padding(length=self.context_length, pad_id=self.pad_id,
                                 pad_token=pad_token)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike],
                  context_length: int = 512) -> "WordPieceTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(os.fspath(path)), context_length)

    def __call__(self, texts: TextInput) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        n = len(texts)
        if n == 0:
            z = np.zeros((0, self.context_length), dtype=np.int64)
            return {"input_ids": z, "attention_mask": z.copy(), "token_type_ids": z.copy()}
        enc = self._tok.encode_batch(texts, add_special_tokens=True)
        return {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }

    def lengths(self, texts: TextInput) -> np.ndarray:
        return self(texts)["attention_mask"].sum(axis=1)
