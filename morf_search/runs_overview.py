"""What ``morf-search list`` and ``morf-search show`` print: the runs of a folder, and one run in full.

Both only read what a run wrote (manifest.json, trials.csv, pareto.csv, finalists.csv, exports/),
without owning the run, so they work on runs that are still going, stopped or killed. A folder
whose files cannot be read is listed as damaged with the reason rather than ending the listing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pandas as pd

from .core.errors import UserError
from .core.fileio import CorruptFileError
from .rundir import PHASES, RunDir
from .search.trials import TrialLog


def read_table(path: Path) -> pd.DataFrame:
    """pareto.csv or finalists.csv (written whole, atomically); empty when not written yet."""
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path}: not a readable CSV file ({str(err).strip()})") from None


def read_trials(run: RunDir) -> pd.DataFrame:
    """trials.csv as the search reads it (a torn last line ignored, damage named by line)."""
    frame = TrialLog(run.trials_csv, required=("trial_id", "arch", "status", "accuracy")).frame()
    return frame if not frame.empty else pd.DataFrame(columns=["trial_id", "arch", "status", "accuracy"])


def run_status(run: RunDir) -> str:
    """``done``, or where the run stands: the first phase not done and how it ended."""
    phases = run.manifest()["phases"]  # its shape checked by RunDir
    if run.phase_done("report"):
        return "done"
    for phase in PHASES:
        status = phases.get(phase, {}).get("status")
        if status == "running":  # a live process and a killed one leave the same manifest
            return f"running or killed in {phase}"
        if status not in (None, "done"):
            return f"{status} in {phase}"
    finished = [phase for phase in PHASES if run.phase_done(phase)]
    return f"after {finished[-1]}" if finished else "created"


def best_accuracy(trials: pd.DataFrame) -> Optional[float]:
    """The best accuracy among trials that finished within the constraints."""
    accuracy = pd.to_numeric(trials.loc[trials["status"] == "ok", "accuracy"], errors="coerce")
    return None if accuracy.isna().all() else float(accuracy.max())


@dataclass(frozen=True)
class RunSummary:
    """One line of ``morf-search list``."""

    name: str
    status: str
    trials: Optional[int] = None
    best_accuracy: Optional[float] = None
    front: Optional[int] = None
    finalists: Optional[int] = None

    @classmethod
    def of(cls, path: Path) -> "RunSummary":
        """The summary of ``path``, or a damaged one that says what could not be read."""
        try:
            run = RunDir.open(path)
            status = run_status(run)
            trials = read_trials(run)
            return cls(path.name, status, len(trials), best_accuracy(trials), len(read_table(run.pareto_csv)),
                       len(read_table(run.finalists_csv)))
        except (UserError, OSError) as err:
            reason = str(err).replace(f"{path}{os.sep}", "").removeprefix(f"{path}: ")
            return cls(path.name, f"damaged: {reason}")


def list_runs(root: Path) -> pd.DataFrame:
    """Every folder of ``root`` as a row: name, status, trials, best accuracy, front size, finalists."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory of runs (morf-search run writes them to runs/, or to --runs)")
    rows = [RunSummary.of(path) for path in sorted(root.iterdir()) if path.is_dir() and not path.name.startswith(".")]
    frame = pd.DataFrame([vars(row) for row in rows],
                         columns=["name", "status", "trials", "best_accuracy", "front", "finalists"])
    return frame.astype({"trials": "Int64", "front": "Int64", "finalists": "Int64", "best_accuracy": float})


def _number(value, digits: int = 2) -> str:
    return "-" if pd.isna(value) else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_runs(frame: pd.DataFrame, root: Path) -> str:
    if frame.empty:
        return f"no runs in {root}"
    shown = frame.astype(object).apply(lambda column: column.map(_number))
    return shown.rename(columns={"best_accuracy": "best accuracy %", "front": "front size"}).to_string(index=False)


def _section(title: str, frame: pd.DataFrame, columns: List[str], empty: str) -> List[str]:
    if frame.empty:
        return [f"{title}: {empty}"]
    present = [column for column in columns if column in frame]
    table = frame[present].to_string(index=False, float_format=_number)
    return [f"{title} ({len(frame)}):", *("  " + line for line in table.splitlines())]


def describe_run(path: Path) -> str:
    """``morf-search show``: status, phases, trials, the front, finalists and where the exports are."""
    run = RunDir.open(Path(path))
    manifest = run.manifest()
    lines = [f"run {run.path}: {run_status(run)}",
             f"  created {manifest.get('created', '?')}, seed {manifest.get('seed', '?')}: {manifest.get('command')}",
             "phases:"]
    for phase, entry in ((phase, manifest["phases"][phase]) for phase in PHASES if phase in manifest["phases"]):
        seconds = f"{entry['seconds']:.0f} s" if isinstance(entry.get("seconds"), (int, float)) else ""
        error = f"  error: {entry['error']}" if entry.get("error") else ""
        lines.append(f"  {phase:<11}{str(entry.get('status')):<9}{seconds:>8}  {entry.get('updated', '')}{error}")
    trials = read_trials(run)
    counts = ", ".join(f"{count} {status}" for status, count in trials["status"].value_counts().items())
    best = best_accuracy(trials)
    lines.append(f"trials: {len(trials)}" + (f" ({counts})" if counts else "")
                 + (f", best accuracy {best:.2f} %" if best is not None else ""))
    front = read_table(run.pareto_csv)
    lines += _section("front", front, ["arch", "accuracy", "latency_ms", "params", "flops"], "not built yet")
    finalists = read_table(run.finalists_csv)
    if {"accuracy_finetuned", "accuracy_finetuned_std"} <= set(finalists):  # mean ± spread over seeds
        spreads = zip(finalists["accuracy_finetuned"], finalists["accuracy_finetuned_std"])
        finalists["accuracy"] = [_number(mean) + ("" if pd.isna(std) else f" ± {std:.2f}") for mean, std in spreads]
    if "export" in finalists:
        finalists["export"] = [str(run.path / export) for export in finalists["export"]]
    lines += _section("finalists", finalists, ["arch", "accuracy", "latency_ms", "verified", "export"], "none yet")
    exports = sorted(p.name for p in run.exports.iterdir() if p.is_dir()) if run.exports.is_dir() else []
    lines.append(f"exports ({len(exports)}) in {run.exports}, each loads with "
                 "timm.create_model('local-dir:<its path>', pretrained=True):" if exports else "exports: none yet")
    lines += [f"  {name}" for name in exports]
    lines.append(f"report: {run.report_file}" if run.report_file.is_file() else
                 f"report: not written yet (morf-search report {run.path})")
    return "\n".join(lines)
