"""The run directory (runs/<name>/) and its manifest.

The manifest records what produced the run (package and library versions, seed, command),
the status and timing of every phase, and hashes of the files the run wrote. Phases are
marked done only after their outputs are written, so ``--resume`` skips exactly the
finished ones.
"""
from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from typing_extensions import TypedDict

from .core.errors import UserError
from .core.fileio import file_hash, read_json, write_json, write_text
from .space.schema import SpaceFile, load_space

PHASES = ("supernet", "search", "pareto", "rank_check", "finalists", "report")
TRACKED_PACKAGES = ("morf-search", "torch", "torchvision", "timm", "ray", "optuna", "nni", "pandas", "safetensors")


class ManifestShape(TypedDict):
    """What every reader of manifest.json relies on (read_json checks it)."""

    phases: Dict[str, Dict[str, Any]]
    files: Dict[str, str]


class RunError(UserError):
    """A run directory that cannot be used as asked (exists, missing, not a run)."""


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
    @classmethod
    def create(cls, path: Path, space_text: str, seed: int, command: str) -> "RunDir":
        """Start a new run with its space snapshot; an existing run is refused (use --resume)."""
        run = cls(path)
        if run.manifest_file.exists():
            raise RunError(f"{run.path}: a run with this name exists; pass --resume to continue it, "
                           "or choose another --name")
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

    def record_files(self, *paths: Path) -> None:
        """Store content hashes of files the run wrote (relative to the run directory)."""
        manifest = self.manifest()
        for path in paths:
            path = Path(path)
            if path.is_file():
                manifest["files"][str(path.relative_to(self.path))] = file_hash(path)
        self._write_manifest()
