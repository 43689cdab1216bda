"""trials.csv: one row per trial, the same schema for every engine.

Columns: ``trial_id``, ``arch`` (canonical string), per stage ``s<i>_experts``,
``s<i>_routing`` and ``s<i>_top_k``, the objectives ``accuracy`` (top-1 %),
``latency_ms``, ``params`` and ``flops``, ``status`` (``ok``, ``infeasible`` when a
constraint was violated and accuracy was not measured, ``stopped`` when early stopping
ended it, ``error``), ``message``, ``seconds``, ``epochs`` (standalone training),
``engine`` and ``finished``; for each routed stage ``s<i>_routing_entropy`` (1 = experts
used evenly) and ``s<i>_expert_share`` (each expert's share, ``/``-joined in the order of
``s<i>_experts``), and ``routing_warning`` for stages that do not really route. The file is
rewritten atomically on every new row.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

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


def routing_fields(summary: List[dict]) -> Dict[str, object]:
    """trials.csv columns of a ``RoutingRecorder`` summary: per routed stage entropy and shares, and warnings."""
    fields: Dict[str, object] = {}
    for entry in summary:  # stage by stage, in the order empty_routing_fields lays them out
        fields[f"s{entry['stage']}_routing_entropy"] = round(entry["entropy"], 4)
        fields[f"s{entry['stage']}_expert_share"] = "/".join(f"{share:.3f}" for share in entry["overall"])
    fields["routing_warning"] = "; ".join(entry["flag"] for entry in summary if entry["flag"])
    return fields


def empty_routing_fields(arch: Arch) -> Dict[str, object]:
    """The routing columns every row has, whichever stages route, so every engine writes one schema."""
    fields: Dict[str, object] = {}
    for i in range(len(arch.stages)):
        fields[f"s{i}_routing_entropy"], fields[f"s{i}_expert_share"] = None, ""
    return {**fields, "routing_warning": ""}


def picked_routing_fields(result: Dict[str, object]) -> Dict[str, object]:
    """The routing columns among an engine's reported result (the rest are metrics and bookkeeping)."""
    return {k: v for k, v in result.items()
            if k.endswith(("_routing_entropy", "_expert_share")) or k == "routing_warning"}


def routing_warnings(frame: pd.DataFrame) -> int:
    """How many rows have a routed stage that does not really route."""
    return int((frame["routing_warning"].fillna("") != "").sum()) if "routing_warning" in frame else 0


def make_row(trial_id: str, arch: Arch, metrics: Dict[str, float], status: str = "ok", message: str = "",
             seconds: float = 0.0, engine: str = "", epochs: Optional[int] = None,
             routing: Optional[Dict[str, object]] = None) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status: {status!r} is not one of {STATUSES}")
    return {"trial_id": trial_id, "arch": str(arch), **stage_fields(arch),
            **{m: metrics.get(m) for m in METRICS}, "status": status, "message": message,
            "seconds": round(seconds, 3), "epochs": epochs, "engine": engine,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **empty_routing_fields(arch), **(routing or {})}


class TrialLog:
    """The run's trials.csv; a row with an existing ``trial_id`` replaces the old one."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def frame(self) -> pd.DataFrame:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return pd.DataFrame()
        frame = pd.read_csv(self.path, dtype=str, keep_default_na=False)
        numeric = [c for c in frame if c.endswith(("_top_k", "_routing_entropy"))]
        for column in (*METRICS, "seconds", "epochs", *numeric):
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
