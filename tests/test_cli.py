"""The command line: one-line refusals of bad arguments, help with examples, list and show, progress lines.

Every bad value here must be refused while the arguments are read, before any data, model or
search starts, so these tests run in moments.
"""
import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
from timm.utils import reparameterize_model

from morf_search.cli import build_parser, main
from morf_search.latency import LatencySetup, LatencyTable
from morf_search.rundir import RunDir

ARCH = "k3.5-soft_k3-static_k3-static_k3-static"

BAD_ARGUMENTS = [
    (["export", "RUN", "--arch", "k3-bogus_k3-static"], "--arch", "stage 0 'k3-bogus'"),
    (["export", "RUN", "--arch", "k4-static"], "--arch", "odd"),
    (["export", "RUN", "--arch", ""], "--arch", "expected a string like"),
    (["export", "RUN", "--epochs", "-1"], "--epochs", ">= 0, got -1"),
    (["export", "RUN", "--epochs", "two"], "--epochs", "whole number, got 'two'"),
    (["export", ""], "run_dir", "non-empty"),
    (["bench", "resnet18", "--batch-size", "0"], "--batch-size", ">= 1, got 0"),
    (["bench", "resnet18", "--image-size", "-32"], "--image-size", ">= 1, got -32"),
    (["bench", "resnet18", "--threads", "0"], "--threads", ">= 1, got 0"),
    (["bench", "resnet18", "--rounds", "0"], "--rounds", ">= 1, got 0"),
    (["bench", "resnet18", "--device", "gpu"], "--device", "unknown device 'gpu'"),
    (["bench", "resnet18", "--device", ""], "--device", "non-empty"),
    (["bench", "resnet18", "--arch", "k3-static_"], "--arch", "stage 1 ''"),
    (["bench", ""], "model", "non-empty"),
    (["run", "space.yaml", "--trials", "0"], "--trials", ">= 1, got 0"),
    (["run", "space.yaml", "--seed", "-1"], "--seed", ">= 0, got -1"),
    (["run", "space.yaml", "--name", ""], "--name", "'': a run name is one plain folder name"),
    (["run", "space.yaml", "--name", "a/b"], "--name", "'a/b': a run name is one plain folder name"),
    (["run", "space.yaml", "--name", ".."], "--name", "one plain folder name"),
    (["run", "space.yaml", "--address", " "], "--address", "non-empty"),
    (["run", ""], "space", "non-empty"),
    (["validate", ""], "space", "non-empty"),
    (["show", ""], "run_dir", "non-empty"),
]


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("argv,option,expected", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_in_one_line_naming_the_option(capsys, argv, option, expected):
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: morf-search {argv[0]}: argument {option}") and expected in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_bench_refuses_an_absent_device(capsys):
    assert main(["bench", "resnet18", "--device", "cuda"]) == 2
    assert "argument --device: 'cuda' requested but CUDA is not available" in one_error_line(capsys)


def test_runs_folder_that_is_a_file_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs.txt"
    runs.write_text("not a folder\n")
    assert main(["run", "space.yaml", "--runs", str(runs)]) == 2
    assert f"argument --runs: {runs} is a file" in one_error_line(capsys)
    assert main(["list", str(runs)]) == 2
    assert one_error_line(capsys) == f"error: {runs}: not a directory of runs " \
                                     "(morf-search run writes them to runs/, or to --runs)"


def subcommands():
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_option_has_help_and_every_command_an_example(name):
    command = subcommands()[name]
    for action in command._actions:
        assert action.help and action.help.strip(), f"{name}: {action.dest} has no help"
    assert command.epilog.startswith("examples:") and f"morf-search {name} " in command.epilog, command.epilog
    assert main([name, "--help"]) == 0


def test_the_command_line_starts_without_warnings_and_refuses_in_one_line():
    """As a user runs it: the one line, and no 'No CUDA runtime is found' (or any other) warning before it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    refused = subprocess.run([sys.executable, "-m", "morf_search.cli", "bench", "resnet18", "--threads", "0"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "error: morf-search bench: argument --threads: expected a whole number >= 1, got 0 "
        "(see morf-search bench --help)"]


def test_only_the_no_cuda_runtime_message_is_dropped():
    import morf_search.latency.harness  # noqa: F401 (installs the filter)

    logger = logging.getLogger("torch.utils.cpp_extension")

    def record(message):
        return logging.LogRecord(logger.name, logging.WARNING, __file__, 1, message, ("/usr/local",), None)

    assert not logger.filter(record("No CUDA runtime is found, using CUDA_HOME='%s'"))
    assert logger.filter(record("Error checking compiler version for %s"))


# -- list and show ----------------------------------------------------------------------------------
def make_run(root: Path, name: str, phases: dict, trials=(), front=(), finalists=()) -> RunDir:
    run = RunDir.create(root / name, "name: test\n", seed=3, command=f"morf-search run test.yaml --name {name}")
    for phase, status in phases.items():
        run.set_phase(phase, status, seconds=12.0)
    if trials:
        pd.DataFrame(trials).to_csv(run.trials_csv, index=False)
    if front:
        pd.DataFrame(front).to_csv(run.pareto_csv, index=False)
    if finalists:
        pd.DataFrame(finalists).to_csv(run.finalists_csv, index=False)
    return run


TRIALS = [{"trial_id": "t0", "arch": ARCH, "accuracy": 81.5, "latency_ms": 2.0, "status": "ok"},
          {"trial_id": "t1", "arch": "k5-static_k3-static_k3-static_k3-static", "accuracy": 84.25, "latency_ms": 2.5,
           "status": "ok"},
          {"trial_id": "t2", "arch": "k7-static_k3-static_k3-static_k3-static", "accuracy": 97.0, "latency_ms": 3.0,
           "status": "stopped"},
          {"trial_id": "t3", "arch": "k9-static_k3-static_k3-static_k3-static", "accuracy": None, "latency_ms": 9.0,
           "status": "infeasible"}]
DONE = {"supernet": "done", "search": "done", "pareto": "done", "rank_check": "done", "finalists": "done",
        "report": "done"}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "finished", DONE, TRIALS, front=TRIALS[:2],
             finalists=[{"arch": ARCH, "accuracy_finetuned": 83.0, "accuracy_finetuned_std": 0.5, "latency_ms": 2.1,
                         "verified": True, "export": f"exports/{ARCH}"}])
    make_run(root, "stopped", {"supernet": "done", "search": "stopped"}, TRIALS[:1])
    make_run(root, "killed", {"supernet": "running"})
    (root / "half").mkdir()  # RunDir.create was killed before it wrote the manifest
    (root / "half" / "space.yaml").write_text("name: half\n")
    truncated = make_run(root, "truncated", DONE)
    truncated.manifest_file.write_text(truncated.manifest_file.read_text()[:40])
    make_run(root, "listy", DONE).manifest_file.write_text("[1, 2]\n")
    make_run(root, "badcsv", DONE).trials_csv.write_text(f"trial_id,arch,status,accuracy\nt0,{ARCH},ok,80\nt1,k3\n")
    make_run(root, "nocolumns", DONE).trials_csv.write_text(f"trial_id,arch,status\nt0,{ARCH},ok\n")
    return root


def test_list_shows_every_run_and_damaged_ones_with_the_reason(runs, capsys):
    assert main(["list", str(runs)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:]}
    assert set(rows) == {"finished", "stopped", "killed", "half", "truncated", "listy", "badcsv", "nocolumns"}
    assert rows["finished"].split() == ["finished", "done", "4", "84.25", "2", "1"], "best of the ok trials only"
    assert "stopped in search" in rows["stopped"] and "81.50" in rows["stopped"]
    assert "running or killed in supernet" in rows["killed"]
    assert "damaged: not a morf-search run (no manifest.json)" in rows["half"]
    assert "damaged: manifest.json: not valid JSON" in rows["truncated"]
    assert "damaged: manifest.json: input should be a valid dictionary" in rows["listy"]
    assert "damaged: trials.csv: line 3: 2 fields, the header has 4" in rows["badcsv"]
    assert "damaged: trials.csv: line 1: the header 'trial_id,arch,status' lacks accuracy" in rows["nocolumns"]


def test_list_of_an_empty_folder(tmp_path, capsys):
    assert main(["list", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"no runs in {tmp_path}"


def test_show_gives_phases_front_finalists_and_exports(runs, capsys):
    run = runs / "finished"
    (run / "exports" / ARCH).mkdir(parents=True)
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {run}: done\n")
    assert "morf-search run test.yaml --name finished" in out
    for phase in DONE:
        assert f"  {phase}" in out
    trials_line = next(line for line in out.splitlines() if line.startswith("trials: 4 ("))
    assert {"2 ok", "1 stopped", "1 infeasible"} <= set(trials_line[len("trials: 4 ("):].split(")")[0].split(", "))
    assert trials_line.endswith("best accuracy 84.25 %")
    assert "front (2):" in out and "k5-static_k3-static_k3-static_k3-static" in out
    assert "finalists (1):" in out and "83.00 ± 0.50" in out and str(run / "exports" / ARCH) in out
    assert f"exports (1) in {run / 'exports'}" in out
    assert f"report: not written yet (morf-search report {run})" in out


def test_show_of_a_run_still_going_and_of_damaged_runs(runs, capsys):
    assert main(["show", str(runs / "stopped")]) == 0
    out = capsys.readouterr().out
    assert "stopped in search" in out and "front: not built yet" in out and "finalists: none yet" in out
    for name, expected in [("half", "not a morf-search run (no manifest.json)"),
                           ("truncated", "manifest.json: not valid JSON"),
                           ("badcsv", "trials.csv: line 3: 2 fields, the header has 4")]:
        assert main(["show", str(runs / name)]) == 2
        line = one_error_line(capsys)
        assert line.startswith(f"error: {runs / name}") and expected in line, line


# -- progress of long phases ------------------------------------------------------------------------
def test_latency_table_fill_says_what_it_times_and_how_long_it_took(tmp_path, capsys):
    setup = LatencySetup(input_size=(3, 16, 16), rounds=3, round_seconds=0.005)
    model = reparameterize_model(timm.create_model("morf_convnext_cifar", arch=ARCH, depths=(1, 1, 1, 1),
                                                   dims=(8, 16, 32, 64)).eval())
    table = LatencyTable(setup, cache_dir=tmp_path)
    units = len(set(table.unit_keys(model)))
    assert table.fill([model]) == units
    err = capsys.readouterr().err
    assert f"latency table: timing {units} new units side by side, 12 interleaved rounds" in err
    assert f"latency table: {units} units timed in" in err
    assert table.fill([model]) == 0 and capsys.readouterr().err == "", "nothing new, nothing said"
    json.loads(table.path.read_text())  # and the table was saved
