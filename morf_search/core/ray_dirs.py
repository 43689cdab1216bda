"""A Ray session that morf-search starts: its temp files inside the run, within AF_UNIX's path limit."""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

# Ray's socket paths add ~62 characters to its temp dir (/session_<date>_<time>_<us>_<pid>/sockets/plasma_store)
# and AF_UNIX allows 107
SOCKET_PATH_BUDGET = 40


def stop_leftover_ray(temp_dir: Path) -> int:
    """Stop the Ray processes that a killed driver left holding files in ``temp_dir`` (its agents outlive it).

    Only for a run's own local Ray, and only while this process owns the run, so none of them can
    belong to a live run."""
    import psutil

    prefix, stopped = f"{temp_dir}{os.sep}", 0
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if any(f.path.startswith(prefix) for f in process.open_files()):
                process.kill()
                stopped += 1
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to inspect
            continue
    return stopped


def ray_temp_dir(engine_dir: Path) -> str:
    """``engine_dir/ray-tmp`` or, when that path is too long for Ray's socket paths, a fresh short
    directory for this start that ``engine_dir/ray-tmp`` links to (a copied run never shares its original's)."""
    link = Path(engine_dir) / "ray-tmp"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.exists():
        stop_leftover_ray(link.resolve())
    if link.is_symlink():
        link.unlink()
    inside = link.parent.resolve() / "ray-tmp"
    if len(str(inside)) <= SOCKET_PATH_BUDGET:
        inside.mkdir(exist_ok=True)
        return str(inside)
    short = tempfile.mkdtemp(prefix="morf-ray-", dir="/tmp" if len(tempfile.gettempdir()) > 20 else None)
    link.symlink_to(short, target_is_directory=True)
    return short


@contextmanager
def ray_session(engine_dir: Path, address: Optional[str] = None) -> Iterator[None]:
    """Ray as it is (already initialized), joined at ``address``, or started locally and shut down after."""
    import ray

    if ray.is_initialized():
        yield
        return
    common = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(_temp_dir=ray_temp_dir(engine_dir), **common)
    try:
        yield
    finally:
        ray.shutdown()
