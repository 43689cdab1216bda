"""The run directory (runs/<name>/) and its manifest.

The manifest records what produced the run (package and library versions, seed, command),
the status and timing of every phase, and hashes of the files the run wrote. Phases are
marked done only after their outputs are written, so ``--resume`` skips exactly the
finished ones, and the files of finished phases are checked against their hashes before a
run is continued or read. One process at a time owns a run directory (``RunDir.owned``).
Nothing in it names its own location, so a copied or moved run is a run of its own.
"""
from __future__ import annotations

import fcntl
import importlib.metadata
import os
import platform
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path, PurePath
from typing import Any, Dict, Iterable, Iterator, Optional

from typing_extensions import TypedDict

from .core.errors import UserError
from .core.fileio import CorruptFileError, file_hash, read_json, write_json, write_text
from .core.progress import say
from .space.schema import SpaceFile, load_space

PHASES = ("supernet", "search", "pareto", "rank_check", "finalists", "report")
TRACKED_PACKAGES = ("morf-search", "torch", "torchvision", "timm", "ray", "optuna", "nni", "pandas", "safetensors")

# The phase whose output a recorded file is (a file in a folder: the folder's phase); a file is
# verified once that phase is done, since before that the phase may still be rewriting it.
FILE_PHASES = {"supernet.safetensors": "supernet", "trials.csv": "search", "references.csv": "search",
               "pareto.csv": "pareto", "rank_check.csv": "rank_check", "finalists.csv": "finalists",
               "exports": "finalists", "finalists": "finalists", "plots": "report", "report.md": "report"}
_HELD: Dict[str, int] = {}  # run directories this process owns, and how many owners nest


class ManifestShape(TypedDict):
    """What every reader of manifest.json relies on (read_json checks it)."""

    phases: Dict[str, Dict[str, Any]]
    files: Dict[str, str]


class RunError(UserError):
    """A run directory that cannot be used as asked (exists, missing, not a run, in use)."""


def check_run_name(name: str, source: str = "--name") -> str:
    """A run name is one plain folder name inside the runs directory (no separators, not '.' or '..')."""
    if not name or name in (".", "..") or PurePath(name).name != name or "\\" in name or "\0" in name:
        raise RunError(f"{source} {name!r}: a run name is one plain folder name (no '/', not '.' or '..')")
    return name


def library_versions(packages: Iterable[str] = TRACKED_PACKAGES) -> Dict[str, Optional[str]]:
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class RunDir:
    """A run's directory: snapshot, manifest, and the paths of everything it holds."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._manifest: Optional[Dict[str, Any]] = None  # read once; this process writes every change

    # -- paths --------------------------------------------------------------------------------
    @property
    def space_file(self) -> Path:
        return self.path / "space.yaml"

    @property
    def manifest_file(self) -> Path:
        return self.path / "manifest.json"

    @property
    def trials_csv(self) -> Path:
        return self.path / "trials.csv"

    @property
    def pareto_csv(self) -> Path:
        return self.path / "pareto.csv"

    @property
    def references_csv(self) -> Path:
        return self.path / "references.csv"

    @property
    def finalists_csv(self) -> Path:
        return self.path / "finalists.csv"

    @property
    def rank_check_csv(self) -> Path:
        return self.path / "rank_check.csv"

    @property
    def supernet_weights(self) -> Path:
        return self.path / "supernet.safetensors"

    def finalist_dir(self, arch) -> Path:
        """A finalist's working files (fine-tuning state, routing statistics)."""
        return self.path / "finalists" / str(arch)

    @property
    def report_file(self) -> Path:
        return self.path / "report.md"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def exports(self) -> Path:
        return self.path / "exports"

    @property
    def engine_dir(self) -> Path:
        """Engine state (Ray's storage and temp files, NNI's experiment) lives inside the run."""
        return self.path / "engine"

    # -- lifecycle ----------------------------------------------------------------------------
    @contextmanager
    def owned(self) -> Iterator["RunDir"]:
        """Own the run directory while the block runs; a second process gets one line naming the owner.

        An ``flock`` on ``.lock``: the kernel drops it when the owner exits, kill -9 included, so
        it is never left stale. Nested owners in one process share it.
        """
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield self
            finally:
                _HELD[key] -= 1
            return
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunError(f"{self.path}: in use by process {holder}; wait for it to end (or stop it) "
                           "and try again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = 1
        self._remove_stale_temporaries()
        try:
            yield self
        finally:
            del _HELD[key]
            if created and not self.manifest_file.exists():  # nothing was started here: leave no stub
                (self.path / ".lock").unlink(missing_ok=True)
                with suppress(OSError):  # not empty after all: keep what is there
                    self.path.rmdir()
            os.close(fd)

    def _remove_stale_temporaries(self) -> None:
        """Half-written files of a killed owner (``atomic_write``'s ``.<name>.*.tmp``); only an owner may do this."""
        for path in self.path.rglob(".*.tmp"):
            if "ray-tmp" not in path.relative_to(self.path).parts and path.is_file():
                path.unlink(missing_ok=True)

    def has_finished_work(self) -> bool:
        """Whether anything the run computed would be lost by starting it over."""
        phases = self.manifest().get("phases", {})
        return (any(entry.get("status") == "done" for entry in phases.values())
                or (self.path / "supernet.state.pt").exists() or self.trials_csv.exists())

    @classmethod
    def create(cls, path: Path, space_text: str, seed: int, command: str) -> "RunDir":
        """Start a new run with its space snapshot (call inside ``owned``).

        An existing run is refused (use --resume) unless it failed in its set-up before finishing
        any work: then the corrected space file starts it over.
        """
        run = cls(path)
        if run.manifest_file.exists():
            if run.has_finished_work():
                raise RunError(f"{run.path}: a run with this name exists; pass --resume to continue it, "
                               "or choose another --name")
            say(f"{run.path}: starting over a run that stopped before finishing any work")
            run._manifest = None
        run.path.mkdir(parents=True, exist_ok=True)
        write_text(run.space_file, space_text)
        write_json(run.manifest_file, {
            "name": run.path.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command,
            "seed": seed, "python": sys.version.split()[0], "platform": platform.platform(),
            "versions": library_versions(), "phases": {}, "files": {},
        })
        return run

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        run = cls(path)
        if not run.manifest_file.is_file():
            raise RunError(f"{run.path}: not a morf-search run (no manifest.json)")
        return run

    def load_space(self) -> SpaceFile:
        return load_space(self.space_file)

    def adopt_location(self) -> None:
        """A run copied or moved here from elsewhere takes this folder's name as its own."""
        if self.manifest().get("name") != self.path.name:
            say(f"{self.path}: a copy of run {self.manifest().get('name')!r}; continuing it as a run of its own")
            self.update_manifest(name=self.path.name)

    # -- manifest -----------------------------------------------------------------------------
    def manifest(self) -> Dict[str, Any]:
        if self._manifest is None:
            self._manifest = read_json(self.manifest_file, ManifestShape)
        return self._manifest

    def _write_manifest(self) -> None:
        write_json(self.manifest_file, self._manifest)

    def update_manifest(self, **fields) -> Dict[str, Any]:
        manifest = self.manifest()
        manifest.update(fields)
        self._write_manifest()
        return manifest

    def phase_status(self, phase: str) -> Optional[str]:
        return self.manifest()["phases"].get(phase, {}).get("status")

    def phase_done(self, phase: str) -> bool:
        return self.phase_status(phase) == "done"

    def set_phase(self, phase: str, status: str, **details) -> None:
        manifest = self.manifest()
        entry = manifest["phases"].setdefault(phase, {})
        entry.update(status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"), **details)
        self._write_manifest()

    def verify(self, path: Path) -> Path:
        """``path``, checked against the hash the manifest recorded for it (if any): one clear error if it differs."""
        path = Path(path)
        expected = self.manifest()["files"].get(str(path.relative_to(self.path)))
        if expected is None:
            return path
        if not path.is_file():
            raise CorruptFileError(f"{path}: missing, though the run recorded it; restore it, or start a new run")
        if file_hash(path) != expected:
            raise CorruptFileError(f"{path}: damaged (its content differs from the hash manifest.json recorded); "
                                   "restore it, or start a new run")
        return path

    def verify_finished(self) -> None:
        """Check every recorded file whose phase is done (the others may still be rewritten by their phase)."""
        for relative in self.manifest()["files"]:
            phase = FILE_PHASES.get(relative, FILE_PHASES.get(PurePath(relative).parts[0]))
            if phase is None or self.phase_done(phase):
                self.verify(self.path / relative)

    def record_files(self, *paths: Path) -> None:
        """Store content hashes of files the run wrote (relative to the run directory)."""
        manifest = self.manifest()
        for path in paths:
            path = Path(path)
            if path.is_file():
                manifest["files"][str(path.relative_to(self.path))] = file_hash(path)
        self._write_manifest()
