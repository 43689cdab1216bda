"""What each fault does to each phase of a run: finished identically, clear error, or lost data.

A tiny copy of ``search_spaces/quickstart.yaml`` (a 4-stage model of 8..64 channels, 64 embedded
images, 2 supernet epochs, 6 trials one at a time, a 2-arch rank check, 1 finalist) runs once
uninterrupted as the reference. Then, in fresh ``python -m morf_search.cli run`` processes:

- **kill -9** / **SIGINT**: one run is faulted in each phase in turn (to its whole process group,
  as a terminal's Ctrl-C would), each time followed by ``--resume``, until a last ``--resume``
  finishes it; every cell of the column shares that final comparison. A SIGINT must stop the run
  with exit 130 ("ignored" if the run went on).
- **copied run**: the run just killed in that phase is ``cp -a``-ed to a new name and the copy is
  resumed; the original must stay unchanged (Ray's scratch ``engine/ray-tmp`` aside).
- **truncated file** / **garbled file**: the killed run is copied to another runs folder under the
  same name, one file of that phase cut to half its bytes or with 64 bytes in its middle set to
  0xff (``DAMAGED`` names which), and resumed; a one-line error (exit 2) or an identical finish is
  good.
- **concurrent resume**: while one uninterrupted run is in each phase, a ``--resume`` of it is
  started (its imports done beforehand, so it reaches the lock at once); it must exit 2 naming the
  owner's pid, and the run must finish identically.

A fault lands when the manifest (polled every 20 ms, once the process has rewritten it) shows the
phase under way with some of its work committed (``TRIGGERS``: a supernet epoch, two trials, a
rank-check row, an exported finalist). Pareto and report take milliseconds, so their faults land
as soon as the phase before them is done, i.e. when the manifest first shows that phase. The driver is stopped (SIGSTOP)
the moment the trigger is seen, so the fault lands exactly there; the notes say where.

"Finished identically" compares with the reference: trials (arch, accuracy), references (arch,
accuracy), the supernet's hash in the manifest, finalists.csv without its timings, every phase
done, no ``.*.tmp`` left. "traceback" marks a cell where any command printed a Python traceback.

    python analysis/fault_matrix.py [--phases search,pareto] [--faults kill9,copied] [--markdown]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pandas as pd
import yaml

from morf_search.rundir import PHASES

REPO = Path(__file__).resolve().parents[1]
NAME = "fm"
FAULTS = {"kill9": "kill -9", "sigint": "SIGINT", "truncated": "truncated file", "garbled": "garbled file",
          "copied": "copied run", "concurrent": "concurrent resume"}
DAMAGED = {"supernet": "supernet.state.pt", "search": "trials.csv", "pareto": "manifest.json",
           "rank_check": "rank_check.csv", "finalists": "pareto.csv", "report": "finalists.csv"}
FINALIST_COLUMNS = ["arch", "accuracy_oneshot", "accuracy_finetuned", "accuracy_seeds", "params", "flops",
                    "verified", "baseline_arch"]  # not the timings, which differ between any two runs
TIMEOUT = 600


def _status(manifest: dict, phase: str) -> Optional[str]:
    return manifest.get("phases", {}).get(phase, {}).get("status")


def _rows(csv: Path) -> int:
    return csv.read_bytes().count(b"\n") - 1 if csv.is_file() else 0


TRIGGERS: Dict[str, Callable[[Path, dict], bool]] = {
    "supernet": lambda run, m: _status(m, "supernet") == "running" and (run / "supernet.state.pt").exists(),
    "search": lambda run, m: _status(m, "search") == "running" and _rows(run / "trials.csv") >= 2,
    "pareto": lambda run, m: _status(m, "search") == "done",
    "rank_check": lambda run, m: _status(m, "rank_check") == "running" and _rows(run / "rank_check.csv") >= 1,
    "finalists": lambda run, m: _status(m, "finalists") == "running" and (run / "exports").is_dir(),
    "report": lambda run, m: _status(m, "finalists") == "done",
}


def tiny_space(path: Path) -> Path:
    space = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    space["name"] = NAME
    space["model"].update(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64])
    space["data"].update(batch_size=32, embedded={"num_train": 64, "num_val": 32})
    space["supernet"].update(epochs=2, warmup_epochs=0)
    space["search"].update(num_trials=6, concurrency=1, eval_images=32, rank_check=2)
    space["latency"].update(rounds=3)
    space["finalists"].update(top_k=1, seeds=1, epochs=1)
    path.write_text(yaml.safe_dump(space))
    return path


@dataclass
class Command:
    """One finished morf-search process: its exit status and stderr."""

    code: Optional[int]
    stderr: str

    @property
    def clear_error(self) -> bool:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return self.code == 2 and bool(lines) and lines[-1].startswith("error: ")

    @property
    def error(self) -> str:
        return self.stderr.strip().splitlines()[-1] if self.stderr.strip() else ""


@dataclass
class Cell:
    outcome: str = ""
    notes: List[str] = field(default_factory=list)


class Matrix:
    """The work folder, the shared caches and the reference run's fingerprint."""

    def __init__(self, work: Path):
        self.work = work
        self.space = tiny_space(work / "space.yaml")
        self.env = {**os.environ, "MORF_SEARCH_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.count = 0
        self.reference: Optional[dict] = None

    def start(self, runs: Path, *extra: str, resume: bool = True, name: str = NAME) -> subprocess.Popen:
        self.count += 1
        log = open(self.work / f"stderr-{self.count:03d}.log", "w+")
        args = ["run", str(self.space), "--name", name, "--runs", str(runs), *(["--resume"] if resume else []), *extra]
        process = subprocess.Popen([sys.executable, "-m", "morf_search.cli", *args], cwd=self.work, env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        process.log = log
        return process

    @staticmethod
    def finish(process: subprocess.Popen) -> Command:
        try:
            code = process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
        process.log.seek(0)
        return Command(code, process.log.read())

    def run(self, runs: Path, resume: bool = True, name: str = NAME) -> Command:
        return self.finish(self.start(runs, resume=resume, name=name))


def fingerprint(run: Path) -> dict:
    """What an identical finish must reproduce (see the module docstring)."""
    manifest = json.loads((run / "manifest.json").read_text())
    trials, references = pd.read_csv(run / "trials.csv"), pd.read_csv(run / "references.csv")
    return {
        "phases": {phase: _status(manifest, phase) for phase in PHASES},
        "trial ids": (len(trials), trials["trial_id"].is_unique),
        "trials": sorted(zip(trials["arch"], trials["accuracy"])),
        "references": sorted(zip(references["arch"], references["accuracy"])),
        "supernet hash": manifest["files"].get("supernet.safetensors"),
        "finalists": pd.read_csv(run / "finalists.csv")[FINALIST_COLUMNS].to_csv(index=False),
        "temporaries": sorted(str(p.relative_to(run)) for p in run.rglob(".*.tmp") if "ray-tmp" not in p.parts),
    }


def wrong_trials(run: Path, reference: dict) -> bool:
    """Whether a run that ended in an error recorded trials first that the reference does not have."""
    try:
        trials = pd.read_csv(run / "trials.csv")
    except (OSError, ValueError):  # absent, or the damaged file itself
        return False
    return not set(zip(trials["arch"], trials["accuracy"])) <= set(reference["trials"])


def tree_digest(run: Path) -> str:
    """A hash of every file of a run but Ray's scratch folder (sockets, logs of processes still going)."""
    digest = hashlib.sha256()
    for path in sorted(run.rglob("*")):
        relative = path.relative_to(run)
        if path.is_file() and not path.is_symlink() and relative.parts[:2] != ("engine", "ray-tmp"):
            digest.update(str(relative).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _mtime(path: Path) -> Optional[int]:
    return path.stat().st_mtime_ns if path.exists() else None


def wait_for(process: subprocess.Popen, run: Path, trigger: Callable[[Path, dict], bool],
             before: Optional[int]) -> Optional[str]:
    """Stop the driver when ``trigger`` first holds of a manifest it wrote (``before``: the manifest's mtime
    when it started); where the run then stands (None: it never held)."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and process.poll() is None:
        try:
            changed = _mtime(run / "manifest.json") != before
            manifest = json.loads((run / "manifest.json").read_text()) if changed else {}
        except (OSError, ValueError):
            manifest = {}
        if manifest and trigger(run, manifest):
            os.kill(process.pid, signal.SIGSTOP)
            manifest = json.loads((run / "manifest.json").read_text())
            last = list(manifest["phases"])[-1]
            return f"{last} {_status(manifest, last)}"
        time.sleep(0.02)
    return None


def judge(commands: List[Command], run: Optional[Path], matrix: Matrix, cell: Cell) -> None:
    """The cell's outcome from its commands (the last one decides) and, if it finished, its run."""
    last = commands[-1]
    if last.clear_error:
        cell.notes.append(f"clear error: {last.error}")
        outcome = "lost data" if run is not None and wrong_trials(run, matrix.reference) else "clear error"
        if outcome == "lost data":
            cell.notes.append("the error came after trials the reference does not have were recorded")
    elif last.code == 0 and run is not None:
        different = [key for key, value in fingerprint(run).items() if value != matrix.reference[key]]
        outcome = "lost data" if different else "finished identically"
        if different:
            cell.notes.append(f"differs from the reference in: {', '.join(different)}")
    else:
        outcome = "hung" if last.code is None else f"exit {last.code}"
        cell.notes.append(f"last stderr line: {last.error}")
    if any("Traceback" in command.stderr for command in commands):
        outcome = "traceback"
    cell.outcome = cell.outcome or outcome


def damage(path: Path, how: str) -> str:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
        return f"{path.name} cut to {len(data) // 2} of {len(data)} bytes"
    middle, width = len(data) // 2, min(64, max(1, len(data) // 4))
    path.write_bytes(data[:middle] + b"\xff" * width + data[middle + width:])
    return f"{path.name}: {width} bytes at offset {middle} of {len(data)} set to 0xff"


def signal_column(matrix: Matrix, phases: List[str], faults: List[str], cells: Dict, signum: int) -> None:
    """kill -9 (with the copy and damage cells taken from each killed run) or SIGINT, phase by phase."""
    column = "kill9" if signum == signal.SIGKILL else "sigint"
    runs = matrix.work / column / "runs"
    run, commands = runs / NAME, []
    before, process = None, matrix.start(runs, resume=False)
    for phase in phases:
        landed = wait_for(process, run, TRIGGERS[phase], before)
        if landed is None:
            commands.append(matrix.finish(process))
            for fault in faults:
                cells[phase, fault].outcome = "not reached"
            before, process = _mtime(run / "manifest.json"), matrix.start(runs)
            continue
        os.killpg(process.pid, signum)
        os.kill(process.pid, signal.SIGCONT)
        stopped = matrix.finish(process)
        commands.append(stopped)
        if column in faults:
            cells[phase, column].notes.append(f"landed in: {landed}; exit {stopped.code}")
            if signum == signal.SIGINT and stopped.code != 130:  # Ctrl-C must stop the run, saying so
                cells[phase, column].outcome = "ignored" if stopped.code == 0 else f"exit {stopped.code}"
        if signum == signal.SIGKILL:
            for fault in ("copied", "truncated", "garbled"):
                if fault in faults:
                    derived_cell(matrix, run, phase, fault, cells[phase, fault], landed)
        before, process = _mtime(run / "manifest.json"), matrix.start(runs)
    commands.append(matrix.finish(process))
    for phase in phases:
        if column in faults and not cells[phase, column].outcome:
            judge(commands, run, matrix, cells[phase, column])


def derived_cell(matrix: Matrix, killed: Path, phase: str, fault: str, cell: Cell, landed: str) -> None:
    """A copy of the killed run, resumed as a run of its own, or damaged and resumed."""
    say(f"{phase} x {fault}")
    cell.notes.append(f"landed in: {landed}")
    if fault == "copied":
        copy = killed.with_name(f"{NAME}-copy-{phase}")
        subprocess.run(["cp", "-a", str(killed), str(copy)], check=True)
        before = tree_digest(killed)
        result = matrix.run(killed.parent, name=copy.name)
        if tree_digest(killed) != before:
            cell.outcome = "lost data"
            cell.notes.append("the original run changed")
        judge([result], copy, matrix, cell)
        return
    runs = matrix.work / f"{fault}-{phase}" / "runs"
    runs.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(killed), str(runs / NAME)], check=True)
    cell.notes.append(damage(runs / NAME / DAMAGED[phase], fault))
    judge([matrix.run(runs)], runs / NAME, matrix, cell)


WARM = ("import sys, morf_search.phases, morf_search.cli as cli\nprint('ready', flush=True)\nsys.stdin.readline()\n"
        "sys.exit(cli.main(sys.argv[1:]))")


def concurrent_column(matrix: Matrix, phases: List[str], cells: Dict) -> None:
    """One uninterrupted run; in each phase a ``--resume`` of it, imports done beforehand so it is instant."""
    runs = matrix.work / "concurrent" / "runs"
    run = runs / NAME
    process = matrix.start(runs, resume=False)
    args = ["run", str(matrix.space), "--name", NAME, "--runs", str(runs), "--resume"]

    def warm():
        return subprocess.Popen([sys.executable, "-c", WARM, *args], cwd=matrix.work, env=matrix.env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    second, seconds = warm(), {}
    for phase in phases:
        landed = wait_for(process, run, TRIGGERS[phase], None)
        if landed is None:
            cells[phase, "concurrent"].outcome = "not reached"
            continue
        assert second.stdout.readline() == "ready\n"
        _, err = second.communicate("go\n", timeout=TIMEOUT)
        os.kill(process.pid, signal.SIGCONT)
        seconds[phase] = Command(second.returncode, err)
        cells[phase, "concurrent"].notes.append(f"landed in: {landed}; the second: exit {second.returncode}, "
                                                f"{seconds[phase].error}")
        second = warm()
    second.kill()
    second.communicate()
    first = matrix.finish(process)
    for phase, refused in seconds.items():
        cell = cells[phase, "concurrent"]
        if not (refused.clear_error and f"in use by process {process.pid}" in refused.stderr):
            cell.outcome = "lost data"  # two owners, or a refusal that does not name the owner
        judge([refused, first], run, matrix, cell)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def table(cells: Dict, phases: List[str], faults: List[str], markdown: bool) -> str:
    header = ["phase", *(FAULTS[f] for f in faults)]
    rows = [[phase, *(cells[phase, f].outcome for f in faults)] for phase in phases]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(text.ljust(w) for text, w in zip(row, widths)) for row in [header, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = parser.parse_args()
    phases = [p for p in PHASES if p in args.phases.split(",")]
    faults = [f for f in FAULTS if f in args.faults.split(",")]
    unknown = set(args.phases.split(",")) - set(PHASES) | set(args.faults.split(",")) - set(FAULTS)
    if unknown:
        parser.error(f"unknown phases or faults: {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    started = time.perf_counter()
    try:
        matrix = Matrix(work)
        say("reference run")
        reference = matrix.run(work / "reference" / "runs", resume=False)
        assert reference.code == 0 and "Traceback" not in reference.stderr, reference.stderr[-3000:]
        matrix.reference = fingerprint(work / "reference" / "runs" / NAME)
        say(f"reference run: {time.perf_counter() - started:.0f} s")
        cells = {(phase, fault): Cell() for phase in phases for fault in faults}
        if set(faults) & {"kill9", "copied", "truncated", "garbled"}:
            say("kill -9 in each phase (and the copied and damaged runs from each)")
            signal_column(matrix, phases, faults, cells, signal.SIGKILL)
        if "sigint" in faults:
            say("SIGINT in each phase")
            signal_column(matrix, phases, faults, cells, signal.SIGINT)
        if "concurrent" in faults:
            say("a concurrent resume in each phase")
            concurrent_column(matrix, phases, cells)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(cells, phases, faults, args.markdown))
    print()
    for (phase, fault), cell in cells.items():
        print(f"- {phase} x {FAULTS[fault]}: {'; '.join(cell.notes)}")
    print(f"\n{matrix.count} morf-search commands, {time.perf_counter() - started:.0f} s"
          + (f"; work folder {work}" if args.keep else ""))


if __name__ == "__main__":
    main()
