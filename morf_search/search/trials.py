"""trials.csv: one row per trial, the same schema for every engine.

Columns: ``trial_id``, ``arch`` (canonical string), per stage ``s<i>_experts``,
``s<i>_routing`` and ``s<i>_top_k``, the objectives ``accuracy`` (top-1 %),
``latency_ms``, ``params`` and ``flops``, ``status`` (``ok``, ``infeasible`` when a
constraint was violated and accuracy was not measured, ``stopped`` when early stopping
ended it, ``error``), ``message``, ``seconds``, ``epochs`` (standalone training),
``engine`` and ``finished``; for each routed stage ``s<i>_routing_entropy`` (1 = experts
used evenly) and ``s<i>_expert_share`` (each expert's share, ``/``-joined in the order of
``s<i>_experts``), and ``routing_warning`` for stages that do not really route.

The file is an append-only log, one line per row (fsynced), so it grows by one line per trial
and survives a kill with at most a torn last line; see ``TrialLog``.
"""
from __future__ import annotations

import codecs
import csv
import io
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..core.fileio import CorruptFileError, atomic_write
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
    """A run's trial table (trials.csv, references.csv, rank_check.csv): an append-only CSV log.

    ``append`` writes one line, so recording a trial costs the same at the 10,000th as at the first,
    and a kill can only tear the last line: ``frame`` ignores a torn last line and the next ``append``
    cuts it off before writing. A row with a column the header lacks (references.csv's baseline rows
    add ``seed``) rewrites the file atomically once with the widened header: columns change a few
    times per run, rows thousands. A ``trial_id`` written again supersedes its earlier row.
    """

    def __init__(self, path: Path, required: Sequence[str] = ("trial_id", "arch", "status")):
        self.path, self.required = Path(path), tuple(required)

    def frame(self) -> pd.DataFrame:
        """One row per ``trial_id`` (its latest), metrics and counts as numbers, the rest as text."""
        if not self.path.is_file():
            return pd.DataFrame()
        header, rows = self._read()
        if not header:
            return pd.DataFrame()
        frame = pd.DataFrame(rows, columns=header).drop_duplicates("trial_id", keep="last").reset_index(drop=True)
        numeric = [c for c in frame if c.endswith(("_top_k", "_routing_entropy"))]
        for column in (*METRICS, "seconds", "epochs", *numeric):
            if column in frame:
                frame[column] = pd.to_numeric(frame[column], errors="coerce")
        return frame

    def append(self, row: dict) -> None:
        """Write ``row`` as one line and fsync it; a new column rewrites the file with the widened header."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            complete = _complete_length(handle)
            if complete < handle.seek(0, os.SEEK_END):  # a torn last line: check the rest, then cut it off
                self._read()
                handle.truncate(complete)
            handle.seek(0)
            header = self._header(handle.readline())
            if header and set(row) - set(header):
                self._rewrite([*header, *(k for k in row if k not in header)], row)
                return
            handle.write(_line([row.get(k) for k in header]) if header else _line(list(row)) + _line(row.values()))
            handle.flush()
            os.fsync(handle.fileno())

    def __len__(self) -> int:
        return len(self.frame())

    def finished(self) -> pd.DataFrame:
        """Rows whose evaluation finished (everything but errors)."""
        frame = self.frame()
        return frame if frame.empty else frame[frame["status"] != "error"]

    def _rewrite(self, header: List[str], row: dict) -> None:
        old_header, rows = self._read()
        padding = [""] * (len(header) - len(old_header))
        lines = [_line(header), *(_line(r + padding) for r in rows), _line([row.get(k) for k in header])]
        atomic_write(self.path, lambda tmp: tmp.write_bytes(b"".join(lines)))

    def _read(self) -> Tuple[List[str], List[List[str]]]:
        """Header and rows of the complete lines, each checked; a damaged file raises CorruptFileError."""
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        text = self._decoded(data[:complete], final=True)
        # a torn last line (a kill during append) is no row yet; still text, or the file is damaged
        self._decoded(data[complete:], final=False, first_line=text.count("\n") + 1)
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            records = [(reader.line_num, record) for record in reader]
        except csv.Error as err:
            raise self._corrupt(reader.line_num, f"not valid CSV ({err})") from None
        if not records:
            return [], []
        header = self._checked_header(records[0][1])
        arch = header.index("arch")
        status = header.index("status") if "status" in header else None
        for line, record in records[1:]:
            if len(record) != len(header):
                raise self._corrupt(line, f"{len(record)} fields, the header has {len(header)}")
            if status is not None and record[status] not in STATUSES:
                raise self._corrupt(line, f"status {record[status]!r} is not one of {', '.join(STATUSES)}")
            try:
                _parse_arch(record[arch])
            except ValueError as err:
                raise self._corrupt(line, str(err)) from None
        return header, [record for _, record in records[1:]]

    def _decoded(self, data: bytes, final: bool, first_line: int = 1) -> str:
        """UTF-8 text of ``data``; unless ``final``, it may end inside a character (a torn write)."""
        if b"\0" in data:
            raise self._corrupt(first_line + data.count(b"\n", 0, data.index(b"\0")),
                                "binary data (NUL bytes), not CSV text")
        try:
            return codecs.getincrementaldecoder("utf-8")().decode(data, final)
        except UnicodeDecodeError as err:
            raise self._corrupt(first_line + data.count(b"\n", 0, err.start), "not UTF-8 text") from None

    def _header(self, line: bytes) -> List[str]:
        """The columns of a first line as ``append`` reads it (none for a new file)."""
        try:
            return self._checked_header(next(csv.reader([line.decode("utf-8")]))) if line else []
        except (UnicodeDecodeError, csv.Error):
            raise self._corrupt(1, "the header is not CSV text") from None

    def _checked_header(self, header: List[str]) -> List[str]:
        missing = [c for c in self.required if c not in header]
        if missing or len(set(header)) != len(header):
            problem = f"lacks {', '.join(missing)}" if missing else "repeats a column"
            raise self._corrupt(1, f"the header {','.join(header)[:120]!r} {problem}")
        return header

    def _corrupt(self, line: int, what: str) -> CorruptFileError:
        return CorruptFileError(f"{self.path}: line {line}: {what}")


@lru_cache(maxsize=65536)
def _parse_arch(text: str) -> Arch:
    return Arch.parse(text)


def _cell(value: object) -> object:
    """CSV text of a value: missing is empty, floats (numpy's too) by repr, text on one line."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return " ".join(value.splitlines()) if isinstance(value, str) else value


def _line(values: Sequence[object]) -> bytes:
    """One CSV record on one line: a torn write is then always a last line without its newline."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_cell(v) for v in values])
    return buffer.getvalue().encode("utf-8")


def _complete_length(handle: BinaryIO, block: int = 1 << 16) -> int:
    """Bytes up to and including the file's last newline (what is left after a torn last line)."""
    position, size = handle.seek(0, os.SEEK_END), 1  # the last byte first: almost always a newline
    while position > 0:
        start = max(0, position - size)
        handle.seek(start)
        found = handle.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        position, size = start, block
    return 0
