"""trials.csv: one row per trial, the same schema for every engine.

Columns: ``trial_id``, ``arch`` (canonical string), per stage ``s<i>_experts``,
``s<i>_routing`` and ``s<i>_top_k``, the objectives ``accuracy`` (top-1 %),
``latency_ms``, ``params`` and ``flops``, ``status`` (``ok``, ``infeasible`` when a
constraint was violated and accuracy was not measured, ``stopped`` when early stopping
ended it, ``error``), ``message``, ``seconds``, ``epochs`` (standalone training),
``engine`` and ``finished``. The file is rewritten atomically on every new row.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

import pandas as pd

from ..core.fileio import atomic_write
from ..models.arch import Arch

METRICS = ("accuracy", "latency_ms", "params", "flops")
STATUSES = ("ok", "infeasible", "stopped", "error")


def stage_fields(arch: Arch) -> Dict[str, object]:
    fields = {}
    for i, stage in enumerate(arch.stages):
        fields[f"s{i}_experts"] = ".".join(map(str, stage.experts))
        fields[f"s{i}_routing"] = stage.routing
        fields[f"s{i}_top_k"] = stage.top_k
    return fields


def make_row(trial_id: str, arch: Arch, metrics: Dict[str, float], status: str = "ok", message: str = "",
             seconds: float = 0.0, engine: str = "", epochs: Optional[int] = None) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status: {status!r} is not one of {STATUSES}")
    return {"trial_id": trial_id, "arch": str(arch), **stage_fields(arch),
            **{m: metrics.get(m) for m in METRICS}, "status": status, "message": message,
            "seconds": round(seconds, 3), "epochs": epochs, "engine": engine,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


class TrialLog:
    """The run's trials.csv; a row with an existing ``trial_id`` replaces the old one."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def frame(self) -> pd.DataFrame:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return pd.DataFrame()
        frame = pd.read_csv(self.path, dtype=str, keep_default_na=False)
        for column in (*METRICS, "seconds", "epochs", *[c for c in frame if c.endswith("_top_k")]):
            if column in frame:
                frame[column] = pd.to_numeric(frame[column], errors="coerce")
        return frame

    def append(self, row: dict) -> None:
        frame = self.frame()
        if not frame.empty and "trial_id" in frame:
            frame = frame[frame["trial_id"] != row["trial_id"]]
        frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
        atomic_write(self.path, lambda tmp: frame.to_csv(tmp, index=False))

    def __len__(self) -> int:
        return len(self.frame())

    def finished(self) -> pd.DataFrame:
        """Rows whose evaluation finished (everything but errors)."""
        frame = self.frame()
        return frame if frame.empty else frame[frame["status"] != "error"]
