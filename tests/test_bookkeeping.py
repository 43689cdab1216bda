"""trials.csv as an append-only log that survives a torn last line, and fronts and hypervolumes in O(n log n)
that agree with brute force."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from morf_search.core.fileio import CorruptFileError
from morf_search.models.arch import Arch
from morf_search.rundir import RunDir
from morf_search.search.pareto import hypervolume_2d, hypervolume_curve, nondominated, pareto_front
from morf_search.search.trials import METRICS, TrialLog, make_row

ARCHS = ["k3-static_k5-static", "k3.5-soft_k3-static", "k3.5-hard_k5-static", "k5-static_k3.5-soft"]


def row(i, arch=ARCHS[0], accuracy=50.0, status="ok", message="", **extra):
    return {**make_row(f"t{i}", Arch.parse(arch), {"accuracy": accuracy, "latency_ms": 1.0 + i, "params": 10,
                                                   "flops": 20}, status, message, 1.5), **extra}


def logged(tmp_path, count=3):
    log = TrialLog(tmp_path / "trials.csv")
    for i in range(count):
        log.append(row(i, ARCHS[i % len(ARCHS)], accuracy=50.0 + i))
    return log


# --- the log ----------------------------------------------------------------------------------------------------

def test_frame_reads_as_pandas_did(tmp_path):
    log = logged(tmp_path, 5)
    log.append(row(5, status="error", message="boom"))
    today = pd.read_csv(log.path, dtype=str, keep_default_na=False)  # how frame() read the file before
    for column in (*METRICS, "seconds", "epochs", *[c for c in today if c.endswith(("_top_k", "_routing_entropy"))]):
        today[column] = pd.to_numeric(today[column], errors="coerce")
    pd.testing.assert_frame_equal(log.frame(), today)
    assert len(log) == 6 and list(log.finished()["trial_id"]) == [f"t{i}" for i in range(5)]
    assert log.frame()["accuracy"].tolist()[:5] == [50.0, 51.0, 52.0, 53.0, 54.0]


def test_append_adds_one_line_and_leaves_the_rest(tmp_path):
    log = logged(tmp_path)
    before = log.path.read_bytes()
    log.append(row(3, accuracy=np.float64(61.25)))  # numpy floats are written as numbers
    after = log.path.read_bytes()
    assert after.startswith(before) and after[len(before):].count(b"\n") == 1
    assert log.frame()["accuracy"].iloc[-1] == 61.25


def test_a_later_row_of_a_trial_replaces_the_earlier(tmp_path):
    log = logged(tmp_path)
    log.append(row(0, accuracy=99.0))
    frame = log.frame()
    assert list(frame["trial_id"]) == ["t1", "t2", "t0"] and frame["accuracy"].iloc[-1] == 99.0


def test_messages_stay_on_one_line(tmp_path):
    log = logged(tmp_path, 1)
    log.append(row(1, status="error", message="Traceback:\n  boom, really\r\nValueError: x"))
    assert log.path.read_text().count("\n") == 3
    assert log.frame()["message"].iloc[-1] == "Traceback:   boom, really ValueError: x"


def test_a_new_column_widens_the_header_once(tmp_path):
    log = TrialLog(tmp_path / "references.csv")  # references, then baselines with a seed
    log.append(row(0, role="single receptive field everywhere", trained="oneshot"))
    log.append({"trial_id": "baseline-a-seed0", "arch": ARCHS[1], "role": "default", "trained": "scratch",
                "seed": 0, "accuracy": 80.0, "status": "ok", "engine": "baseline"})
    log.append({"trial_id": "baseline-a-seed1", "arch": ARCHS[1], "seed": 1, "accuracy": 82.0, "status": "ok"})
    frame = log.frame()
    assert list(frame.columns[-1:]) == ["seed"] and list(frame["seed"]) == ["", "0", "1"]
    assert list(frame["accuracy"]) == [50.0, 80.0, 82.0] and frame["role"].iloc[2] == ""


def test_a_log_without_status_column(tmp_path):
    log = TrialLog(tmp_path / "rank_check.csv", required=("trial_id", "arch"))
    log.append({"trial_id": ARCHS[0], "arch": ARCHS[0], "oneshot_accuracy": 80.0, "standalone_accuracy": 85.0})
    assert log.frame()["standalone_accuracy"].tolist() == ["85.0"]


def test_a_file_written_by_pandas_with_a_multiline_message_reads(tmp_path):
    path = tmp_path / "trials.csv"
    pd.DataFrame([row(0, message="first\nsecond"), row(1)]).to_csv(path, index=False)
    log = TrialLog(path)
    assert log.frame()["message"].tolist() == ["first\nsecond", ""]
    log.append(row(2))
    assert len(log) == 3


@pytest.mark.parametrize("cut", [1, 7, 60])
def test_a_torn_last_line_is_dropped_and_cut_before_the_next_append(tmp_path, cut):
    log = logged(tmp_path)
    log.path.write_bytes(log.path.read_bytes()[:-cut])  # a kill during the third append
    assert list(log.frame()["trial_id"]) == ["t0", "t1"]
    log.append(row(3))
    assert list(log.frame()["trial_id"]) == ["t0", "t1", "t3"]
    assert all(line.count(",") == log.path.read_text().splitlines()[0].count(",")
               for line in log.path.read_text().splitlines())


def test_a_torn_first_line_and_a_cut_character(tmp_path):
    log = TrialLog(tmp_path / "trials.csv")
    log.path.write_bytes(b"trial_id,arch,s0_exp")
    assert log.frame().empty
    log.append(row(0, message="naïve"))
    log.path.write_bytes(log.path.read_bytes() + "t1,ï".encode()[:-1])  # torn inside a two-byte character
    assert list(log.frame()["message"]) == ["naïve"]


def damaged(tmp_path, change):
    log = logged(tmp_path)
    lines = log.path.read_bytes().split(b"\n")
    change(lines)
    log.path.write_bytes(b"\n".join(lines))
    return log


def swap(lines, line, old, new):
    lines[line - 1] = lines[line - 1].replace(old, new, 1)


# case: (damage, line named, what is said, whether append notices: it reads only the header and a torn tail)
DAMAGE = {
    "binary": (lambda lines: lines.__setitem__(slice(None), [b"\x89PNG\r\x1a\x00\x00\xff" * 30]), 1, "binary data",
               True),
    "binary-tail": (lambda lines: lines.__setitem__(-1, b"\x00\x01\x02"), 5, "binary data", True),
    "header": (lambda lines: swap(lines, 1, b"trial_id", b"trial"), 1, "lacks trial_id", True),
    "no-status": (lambda lines: swap(lines, 1, b"status", b"state"), 1, "lacks status", True),
    "latin-1": (lambda lines: swap(lines, 3, b"ok", "é".encode("latin-1")), 3, "not UTF-8", False),
    "fields": (lambda lines: swap(lines, 2, b",ok,", b",ok,extra,"), 2, "fields, the header has", False),
    "arch": (lambda lines: swap(lines, 3, ARCHS[1].encode(), b"k4-weird_k3-static"), 3, "arch 'k4-weird_k3-static'",
             False),
    "status": (lambda lines: swap(lines, 4, b",ok,", b",okay,"), 4, "status 'okay' is not one of", False),
    "quote": (lambda lines: swap(lines, 2, b",ok,", b',"ok"x,'), 2, "not valid CSV", False),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damage_elsewhere_names_the_file_and_line(tmp_path, case):
    change, line, what, append_notices = DAMAGE[case]
    log = damaged(tmp_path, change)
    before = log.path.read_bytes()
    for action in (log.frame, lambda: log.append(row(9, ARCHS[2])))[:1 + append_notices]:
        with pytest.raises(CorruptFileError) as err:
            action()
        message = str(err.value)
        assert len(message.splitlines()) == 1 and message.startswith(f"{log.path}: line {line}: ") and what in message
    assert log.path.read_bytes() == before  # a damaged file is left as it was


def test_the_cli_reports_a_damaged_trials_csv_in_one_line(tmp_path):
    run = RunDir.create(tmp_path / "runs" / "damaged", "space: {kernels: [3, 5]}\n", seed=0, command="test")
    TrialLog(run.trials_csv).append(row(0))
    run.trials_csv.write_text(run.trials_csv.read_text().replace(",ok,", ",okay,") + "t1,x\n")
    result = subprocess.run([sys.executable, "-m", "morf_search", "report", str(run.path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "trials.csv: line 2: status 'okay'" in result.stderr and "Traceback" not in result.stderr


# --- fronts and hypervolumes against brute force ---------------------------------------------------------------

def dominates(a, b):
    return np.all(a <= b) and np.any(a < b)


def brute_front(frame, objectives, constraints=None):
    keep = frame["status"] == "ok"
    for name, bound in (constraints or {}).items():
        keep &= frame[name] <= bound
    candidates = frame[keep].dropna(subset=list(objectives)).drop_duplicates(subset="arch")
    signs = np.array([-1.0 if o == "accuracy" else 1.0 for o in objectives])
    points = candidates[list(objectives)].to_numpy(float) * signs
    on_front = np.array([not any(dominates(q, p) for q in points) for p in points], dtype=bool)
    return candidates[on_front].sort_values(list(objectives[1:2] or objectives[:1])).reset_index(drop=True)


def brute_area(points, reference):
    """Union of the boxes [x, rx] x [y, ry] strip by strip between the distinct x of the points."""
    points = [p for p in points if p[0] < reference[0] and p[1] < reference[1]]
    edges = sorted({p[0] for p in points}) + [reference[0]]
    return sum((right - left) * (reference[1] - min(y for x, y in points if x <= left))
               for left, right in zip(edges, edges[1:]))


def random_trials(rng, n):
    return pd.DataFrame({
        "arch": [f"a{k}" for k in rng.integers(0, n, n)],  # repeated archs: only the first row competes
        "accuracy": np.where(rng.random(n) < 0.1, np.nan, rng.integers(50, 60, n).astype(float)),  # ties
        "latency_ms": rng.integers(1, 12, n) / 4,
        "params": rng.integers(1, 8, n).astype(float),
        "flops": rng.random(n),
        "status": rng.choice(["ok"] * 6 + ["error", "infeasible", "stopped"], n),
    })


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("objectives", [("accuracy",), ("accuracy", "latency_ms"), ("latency_ms", "params"),
                                        ("accuracy", "latency_ms", "params"),
                                        ("accuracy", "latency_ms", "params", "flops")])
def test_fronts_match_brute_force(seed, objectives):
    trials = random_trials(np.random.default_rng(seed), 150)
    for constraints in (None, {"params": 5}, {"latency_ms": 2.0, "params": 6}):
        pd.testing.assert_frame_equal(pareto_front(trials, objectives, constraints),
                                      brute_front(trials, objectives, constraints))


def test_nondominated_keeps_equal_points():
    points = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [1.0, 3.0], [0.5, 5.0]])
    assert nondominated(points).tolist() == [True, True, True, False, False, True]
    assert nondominated(np.c_[points, np.zeros(6)]).tolist() == [True, True, True, False, False, True]
    assert nondominated(np.empty((0, 2))).tolist() == []


@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_curve_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    trials = random_trials(rng, 60)
    objectives, reference = ("accuracy", "latency_ms"), (52.0, 2.6)  # some points lie beyond the reference
    for constraints in (None, {"params": 4}):
        expected = []
        for n in range(1, len(trials) + 1):
            front = brute_front(trials.iloc[:n], objectives, constraints)
            expected.append(brute_area(list(zip(-front["accuracy"], front["latency_ms"])), (-reference[0],
                                                                                              reference[1])))
        assert hypervolume_curve(trials, objectives, reference, constraints) == pytest.approx(expected, abs=1e-9)
        assert hypervolume_2d(brute_front(trials, objectives, constraints), objectives,
                              reference) == pytest.approx(expected[-1], abs=1e-9)
    assert hypervolume_curve(trials.iloc[:0], objectives, reference) == []
