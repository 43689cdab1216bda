"""Search progress: trials done of total, the best accuracy within the constraints, elapsed time."""
from __future__ import annotations

import time
from typing import Optional

from ..core.progress import bar, interactive, say


class SearchProgress:
    """Trials done of total, best accuracy within the constraints, elapsed time."""

    def __init__(self, total: int, done: int = 0, best: Optional[float] = None):
        self.total, self.done, self.best = total, done, best
        self.started = time.perf_counter()
        self._bar = bar(None, total=total, desc="search", leave=True) if interactive() else None
        if self._bar is not None:
            self._bar.update(done)
        self._next_line = done

    def update(self, row: dict) -> None:
        self.done += 1
        if row.get("status") == "ok" and row.get("accuracy") is not None:
            self.best = row["accuracy"] if self.best is None else max(self.best, row["accuracy"])
        best = "-" if self.best is None else f"{self.best:.2f}%"
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"best {best}")
        elif self.done >= self._next_line or self.done == self.total:
            self._next_line = self.done + max(1, self.total // 10)
            say(f"search: {self.done}/{self.total} trials, best accuracy within constraints {best}, "
                f"{time.perf_counter() - self.started:.0f}s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
