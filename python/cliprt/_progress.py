"""Progress bars on stderr (tqdm), shared by the encoder, the ingest and the CLI."""
from __future__ import annotations

import sys
from typing import Optional


def progress_bar(enabled: bool, total: Optional[int], desc: str, unit: str):
    """A tqdm bar on stderr, or None when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
