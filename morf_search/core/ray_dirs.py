"""A Ray session that morf-search starts: its temp files inside the run, within AF_UNIX's path limit."""
from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

SOCKET_PATH_BUDGET = 60  # Ray's socket paths grow ~45 characters past its temp dir; AF_UNIX allows 107


def ray_temp_dir(engine_dir: Path) -> str:
    """``engine_dir/ray-tmp``, or a short directory linked from there when the run's path is long."""
    wanted = Path(engine_dir) / "ray-tmp"
    if not wanted.is_symlink() and len(str(wanted.resolve())) > SOCKET_PATH_BUDGET:
        wanted.parent.mkdir(parents=True, exist_ok=True)
        wanted.symlink_to(tempfile.mkdtemp(prefix="morf-ray-"), target_is_directory=True)
    target = wanted.resolve()
    target.mkdir(parents=True, exist_ok=True)
    return str(target)


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
