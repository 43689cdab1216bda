"""The run directory under faults: copies, two owners, damaged files, planted pickles, odd names."""
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest
from test_run import TRIALS, morf, space_file

from morf_search.cli import main
from morf_search.core.fileio import write_text
from morf_search.rundir import RunDir, RunError, check_run_name


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny run whose search finished (random search, one trial at a time, nothing after the front)."""
    from test_data import write_cifar10

    root = tmp_path_factory.mktemp("faults")
    write_cifar10(root / "cifar", per_batch=16, test=32)
    path = space_file(root, root / "cifar", search={"num_trials": TRIALS, "algorithm": "random", "concurrency": 1},
                      finalists={"top_k": 0})
    morf("run", str(path), "--name", "a", cwd=root)
    return root


def _as_killed_during_search(run, keep_rows):
    """What a kill -9 during the search leaves: fewer rows and a search phase still running."""
    trials = pd.read_csv(run / "trials.csv")
    trials.head(keep_rows).to_csv(run / "trials.csv", index=False)
    manifest = json.loads((run / "manifest.json").read_text())
    for phase in ("search", "pareto", "rank_check", "finalists", "report"):
        manifest["phases"].pop(phase, None)
    manifest["phases"]["search"] = {"status": "running"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return trials


def test_a_copied_run_with_lost_rows_and_planted_pickles_resumes_into_itself(searched, tmp_path):
    """One resume shows three things: a copy is a run of its own, lost rows are run again (the same archs,
    samplers being seeded per trial), and nothing the run directory holds is unpickled."""
    root = searched
    original = pd.read_csv(root / "runs" / "a" / "trials.csv")
    copy = root / "runs" / "b"
    shutil.copytree(root / "runs" / "a", copy, symlinks=True)
    full = _as_killed_during_search(copy, keep_rows=4)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for pkl in [*(copy / "engine").rglob("*.pkl"), copy / "engine" / "search" / "tuner.pkl"]:
        pkl.write_bytes(pickle.dumps(Payload()))

    result = morf("run", str(root / "space.yaml"), "--name", "b", "--resume", cwd=root)
    assert "a copy of run 'a'" in result.stderr and "running the 2 still missing" in result.stderr
    assert not marker.exists(), "resume unpickled a file of the run directory"
    after = pd.read_csv(copy / "trials.csv")
    assert len(after) == TRIALS and after["trial_id"].is_unique
    assert list(after["arch"]) == list(full["arch"]), "seeded per trial, the missing trials are the same archs"
    assert pd.read_csv(root / "runs" / "a" / "trials.csv").equals(original), "the original run was touched"
    assert json.loads((copy / "manifest.json").read_text())["name"] == "b"
    assert not list(copy.rglob("*.tmp")), "temporary files left behind"


def test_a_second_process_on_a_run_gets_one_line_naming_the_owner(searched, capsys):
    root = searched
    run = RunDir.open(root / "runs" / "a")
    script = f"import sys\nfrom morf_search.rundir import RunDir\nwith RunDir({str(run.path)!r}).owned():\n" \
             "    print('owned', flush=True)\n    sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "owned\n"
        for args in (["--resume"], []):
            assert main(["run", str(root / "space.yaml"), "--name", "a", "--runs", str(root / "runs"), *args]) == 2
            assert capsys.readouterr().err.strip() == f"error: {run.path}: in use by process {holder.pid}; " \
                                                      "wait for it to end (or stop it) and try again"
    finally:
        holder.communicate("")
    with run.owned():  # free again once the owner ended; one process may nest owners
        with run.owned():
            pass


def test_files_a_finished_phase_wrote_are_verified_before_they_are_used(searched, capsys):
    root = searched
    run = root / "runs" / "garbled"
    shutil.copytree(root / "runs" / "a", run, symlinks=True)
    weights = run / "supernet.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = b"\xff" * 64  # the header still parses; the weights are garbage
    weights.write_bytes(bytes(data))
    damaged = f"error: {weights}: damaged (its content differs from the hash manifest.json recorded); " \
              "restore it, or start a new run"
    resume = ["run", str(root / "space.yaml"), "--name", "garbled", "--runs", str(root / "runs"), "--resume"]
    arch = pd.read_csv(run / "trials.csv")["arch"][0]
    for args in (["export", str(run), "--arch", arch, "--epochs", "0"], resume, ["report", str(run)]):
        assert main(args) == 2
        assert capsys.readouterr().err.strip() == damaged
    weights.unlink()
    assert main(resume) == 2
    assert capsys.readouterr().err.strip().endswith("supernet.safetensors: missing, though the run recorded it; "
                                                    "restore it, or start a new run")


@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", ".", "..", "a/b", ""])
def test_a_run_name_is_one_plain_folder_name(searched, name, capsys):
    root = searched
    assert main(["run", str(root / "space.yaml"), "--name", name, "--runs", str(root / "runs")]) == 2
    assert "a run name is one plain folder name" in capsys.readouterr().err
    assert not (root / "escaped").exists() and not (root / "runs" / "a" / "b").exists()
    with pytest.raises(RunError):
        check_run_name(name)


def test_a_run_that_failed_in_its_set_up_starts_over_but_finished_work_is_kept(tmp_path):
    run = RunDir.create(tmp_path / "r", "first\n", 0, "test")
    run.set_phase("supernet", "failed", error="data: missing")
    again = RunDir.create(tmp_path / "r", "corrected\n", 0, "test")
    assert again.space_file.read_text() == "corrected\n" and again.manifest()["phases"] == {}
    again.set_phase("supernet", "done")
    with pytest.raises(RunError, match="pass --resume"):
        RunDir.create(tmp_path / "r", "third\n", 0, "test")


def test_written_files_follow_the_umask(tmp_path):
    path = write_text(tmp_path / "x.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def _ctrl_c_as_in_a_shell():
    """pytest-xdist's workers ignore SIGINT, and children inherit that; a terminal's command does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_after_the_search_still_stops_the_run(searched):
    """Ray Tune leaves its own SIGINT handler (which only sets a flag) installed once a search ended."""
    root = searched
    (root / "ctrl-c").mkdir()
    path = space_file(root / "ctrl-c", root / "cifar", finalists={"top_k": 0},
                      search={"num_trials": 2, "algorithm": "random", "concurrency": 1, "rank_check": 2})
    env = {**os.environ, "MORF_SEARCH_CACHE": str(root / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "morf_search", "run", str(path), "--name", "ctrl-c"], cwd=root,
                               env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=_ctrl_c_as_in_a_shell)
    manifest, deadline = root / "runs" / "ctrl-c" / "manifest.json", time.time() + 300
    while not (manifest.exists() and json.loads(manifest.read_text())["phases"].get("search", {}).get("status")
               == "done"):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGSTOP)  # Ctrl-C lands right after the search, before the rank check ends
    os.killpg(process.pid, signal.SIGINT)
    os.kill(process.pid, signal.SIGCONT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert "stopped; continue with:" in stderr
    phases = json.loads(manifest.read_text())["phases"]  # stopped in a phase, or between two (none running)
    assert "running" not in {entry["status"] for entry in phases.values()} and "report" not in phases
