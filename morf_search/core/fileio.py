"""Atomic writes and safe, clearly-failing reads of the files a run keeps.

Every write goes to a temporary file in the same directory and is renamed into place, so a
killed process leaves either the old file or the new one, never half of one. Reads of
weights use safetensors or ``torch.load(weights_only=True)``; JSON and CSV are decoded as
strict UTF-8 and checked against the structure their reader relies on. A damaged or foreign
file raises a ``CorruptFileError``: one line naming it and what is wrong.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import pandas as pd
import torch
from pydantic import TypeAdapter, ValidationError
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


DAMAGED = "it is damaged or not the file morf-search wrote"


def read_text(path: Path, *, max_bytes: Optional[int] = None, what: str = "this file", hint: str = DAMAGED,
              error: type = CorruptFileError) -> str:
    """A text file as strict UTF-8 (everything morf-search writes is), refused in one line naming it otherwise.

    With ``max_bytes`` no more than that is read, so a huge file is refused whatever its size.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(-1 if max_bytes is None else max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror})") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise error(f"{path}: larger than the {max_bytes // 1024 ** 2} MB limit for {what}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if b"\0" not in data[:err.start]:  # text in another encoding (latin-1, UTF-16 with its BOM)
            line = data[:err.start].count(b"\n") + 1
            raise error(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); {hint}") from None
        text = "\0"
    if "\0" in text:
        raise error(f"{path}: a binary file, not text")
    return text


def read_json(path: Path, shape: Any = Any) -> Any:
    """The parsed file, checked against ``shape`` (any type pydantic validates, e.g. a TypedDict).

    The check names the first key that is missing or of the wrong type, so a file that parses
    but is not what its reader expects fails as clearly as a truncated one.
    """
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); "
                               "it may be truncated") from None
    try:
        TypeAdapter(shape).validate_python(data)
    except ValidationError as err:
        raise CorruptFileError(f"{path}: {_where(err)}; not the file morf-search wrote") from None
    return data


def read_csv(path: Path, columns: Mapping[str, Any]) -> pd.DataFrame:
    """A table morf-search wrote, with at least ``columns`` (name -> dtype); no file or an empty one: no rows."""
    path = Path(path)
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})
    try:
        frame = pd.read_csv(io.StringIO(read_text(path)))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise CorruptFileError(f"{path}: not a readable CSV table ({first_line(err)})") from None
    missing = [name for name in columns if name not in frame]
    if missing:
        raise CorruptFileError(f"{path}: no column {', '.join(map(repr, missing))}; not the table morf-search wrote")
    try:
        return frame.astype(dict(columns))
    except (ValueError, TypeError) as err:
        raise CorruptFileError(f"{path}: a column holds values of the wrong type ({first_line(err)})") from None


def _where(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg'].lower()}" if where else first["msg"].lower()


def first_line(err: Exception) -> str:
    """An exception's message cut to one line, for the one-line errors users see."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


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
        with zipfile.ZipFile(path) as archive:  # torch.load does not check the CRCs its archive records
            damaged = archive.testzip()
        if damaged is None:
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: missing") from None
    except Exception as err:  # unpickling a damaged file fails in many ways
        raise CorruptFileError(f"{path}: cannot be read back ({type(err).__name__}: {err})") from None
    raise CorruptFileError(f"{path}: damaged ({damaged} in it fails its CRC check); delete it to train from the start")


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"
