"""What the tokenizers accept as texts: one string or a sequence of strings."""
from __future__ import annotations

from typing import Sequence, Union

TextInput = Union[str, Sequence[str]]


def as_list(texts: TextInput) -> list:
    """``texts`` as a list of strings (a lone string is a batch of one)."""
    if isinstance(texts, str):
        return [texts]
    return texts if isinstance(texts, list) else list(texts)
