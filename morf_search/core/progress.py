"""Progress output: live bars on a terminal, a few plain lines otherwise.

Bars go to stderr only when it is a terminal; summaries (one line per epoch or phase) are
always printed, so logs of unattended runs stay short and readable.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Optional

from tqdm import tqdm


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(iterable: Iterable, total: Optional[int] = None, desc: str = "", leave: bool = False):
    """A tqdm bar over ``iterable`` on a terminal; the bare iterable otherwise."""
    if not interactive():
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=leave, dynamic_ncols=True)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
