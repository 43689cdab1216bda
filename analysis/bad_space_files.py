"""How fast, and in how much memory, hostile space files are refused.

For each file of tests/test_bad_input.py's HOSTILE set (binary, latin-1, 50 MB, 100k-deep,
alias bombs, ...): the wall time and peak RSS of ``python -m morf_search.cli validate FILE``
in a fresh process, and, in this process, the time and peak Python allocation of
``load_space`` alone. The first line is the same command on a valid file's ``--version``:
what importing torch and timm costs before any file is read.

    python analysis/bad_space_files.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from test_bad_input import HOSTILE  # noqa: E402  (the files the tests refuse)

from morf_search.core.errors import UserError  # noqa: E402
from morf_search.space.schema import load_space  # noqa: E402


def cli(*args: str):
    """(exit status, wall seconds, peak RSS in MB) of one morf-search command in a fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "morf_search.cli", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage.ru_maxrss / 1024


def in_process(path: Path):
    """(seconds, peak MB allocated by Python) of load_space refusing ``path``."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        load_space(path)
    except UserError:
        pass
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 1024 ** 2
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    print(f"{'file':<22} {'exit':>4} {'cli s':>7} {'cli RSS MB':>10} {'load_space ms':>13} {'load_space MB':>13}")
    status, seconds, rss = cli("--version")
    print(f"{'(--version: imports)':<22} {status:>4} {seconds:>7.2f} {rss:>10.0f} {'':>13} {'':>13}")
    with tempfile.TemporaryDirectory() as folder:
        for kind, content in HOSTILE.items():
            path = Path(folder) / "space.yaml"
            path.write_bytes(content)
            status, seconds, rss = cli("validate", str(path))
            load_seconds, peak = in_process(path)
            print(f"{kind:<22} {status:>4} {seconds:>7.2f} {rss:>10.0f} {load_seconds * 1000:>13.1f} {peak:>13.2f}")


if __name__ == "__main__":
    main()
