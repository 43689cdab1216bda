"""Atomic writes and safe, clearly-failing reads of the files a run keeps.

Every write goes to a temporary file in the same directory and is renamed into place, so a
killed process leaves either the old file or the new one, never half of one. Reads of
weights use safetensors or ``torch.load(weights_only=True)``; a corrupt file raises a
``CorruptFileError`` that names it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError


class CorruptFileError(UserError):
    """A file morf-search wrote (or was given) that cannot be read back."""


def default_cache_dir() -> Path:
    """Where machine-wide reusable results live (latency tables, the embedded dataset)."""
    return Path(os.environ.get("MORF_SEARCH_CACHE", Path.home() / ".cache" / "morf-search"))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp's own files are 0600


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (with the user's umask applied)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); "
                               "it may be truncated") from None


def save_weights(path: Path, state_dict: Dict[str, torch.Tensor], metadata: Dict[str, str] = None) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: Path, device: str | torch.device = "cpu") -> Dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path}: missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(f"{path}: not a readable safetensors file ({err}); it may be truncated") from None


def save_state(path: Path, state: Dict[str, Any]) -> Path:
    """Training state (optimizer, scheduler, counters): torch.save, read back with weights_only."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: missing") from None
    except Exception as err:  # unpickling a damaged file fails in many ways
        raise CorruptFileError(f"{path}: cannot be read back ({type(err).__name__}: {err})") from None


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"
