"""Latency harness and lookup-table predictor: behaviour, not speed (speed lives in analysis/)."""
import ctypes
import ctypes.util
import json
import os
import platform
import statistics
import time

import pytest
import timm
import torch
import torch.nn as nn
from timm.utils import reparameterize_model

import morf_search.core.errors
import morf_search.latency
from morf_search import MoRFConv2d
from morf_search.cli import main
from morf_search.latency import LatencySetup, LatencyTable, measure
from morf_search.latency.harness import Timing, environment, paired_ratio

SMALL = dict(arch="k3.5-soft_k3.5-static_k3-static_k3-static", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
SETUP = LatencySetup(input_size=(3, 16, 16), rounds=3, round_seconds=0.005)


class ThreadSpy(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = set()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        self.seen.add(torch.get_num_threads())
        return self.conv(x)


def test_measurement_records_setup_environment_and_restores_threads():
    spy, original = ThreadSpy(), torch.get_num_threads()
    torch.set_num_threads(2)  # not the measurement's count, so that restoring it shows
    try:
        result = measure(spy, LatencySetup(input_size=(3, 8, 8), threads=1, rounds=3, round_seconds=0.005),
                         deploy=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)
    assert result.median_ms > 0 and result.p90_ms >= result.median_ms * 0.5 and result.spread >= 0
    assert result.setup["threads"] == 1 and result.setup["batch_size"] == 1
    assert {"cpu", "torch", "threads", "device"} <= set(result.environment)


def test_measure_times_the_deploy_form_without_touching_the_model(monkeypatch):
    import morf_search.latency.measurement as measuring

    model = timm.create_model("morf_convnext_cifar", **SMALL).eval()
    timed = []
    monkeypatch.setattr(measuring, "time_modules", lambda modules, setup, desc="": {
        name: timed.append(module) for name, (module, _) in modules.items()})
    measure(model, SETUP)
    measure(model, SETUP, deploy=False)
    assert not any(isinstance(m, MoRFConv2d) for m in timed[0].modules())
    assert any(isinstance(m, MoRFConv2d) for m in timed[1].modules())
    assert any(isinstance(m, MoRFConv2d) for m in model.modules()), "the caller's model must stay as it was"


class Jittery(nn.Module):
    """Takes 1 ms, or 4 ms in every other 10 ms window, so timing rounds disagree wildly."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        time.sleep(0.004 if int(time.perf_counter() / 0.01) % 2 else 0.001)
        return x


def test_noisy_measurements_are_retried_then_flagged():
    setup = LatencySetup(input_size=(1, 2, 2), rounds=10, round_seconds=0.002, max_spread=0.05, retries=1)
    result = measure(Jittery(), setup, deploy=False)
    assert result.noisy and result.attempts == 2
    steady = measure(nn.Conv2d(1, 1, 1), LatencySetup(input_size=(1, 2, 2), rounds=3, max_spread=100.0), deploy=False)
    assert not steady.noisy and steady.attempts == 1


def test_table_times_the_new_units_of_several_networks_side_by_side(tmp_path, monkeypatch):
    import morf_search.latency.table as lookup

    archs = ["k3.5-soft_k3-static_k3-static_k3-static", "k5-static_k3-static_k3-static_k3-static"]
    models = [reparameterize_model(timm.create_model("morf_convnext_cifar", **{**SMALL, "arch": arch}).eval())
              for arch in archs]
    sessions = []
    time_modules = lookup.time_modules
    monkeypatch.setattr(lookup, "time_modules", lambda modules, setup, desc="": sessions.append(set(modules))
                        or time_modules(modules, setup, desc))
    table = LatencyTable(SETUP, cache_dir=tmp_path)
    keys = [set(table.unit_keys(model)) for model in models]
    assert table.fill(models) == len(keys[0] | keys[1]) and len(keys[0] - keys[1]) == 1
    assert sessions == [keys[0] | keys[1]], "every new unit in one interleaved session"
    assert table.fill(models) == 0 and len(sessions) == 1


def test_lookup_table_measures_each_unit_once_and_is_reused_from_disk(tmp_path):
    deployed = reparameterize_model(timm.create_model("morf_convnext_cifar", **SMALL).eval())
    table = LatencyTable(SETUP, cache_dir=tmp_path)
    first = table.predict(deployed)
    units = table.measured
    assert first > 0 and units == len(table.entries) > 4
    assert table.predict(deployed) == first and table.measured == units, "a known arch must not be re-measured"
    other = reparameterize_model(timm.create_model(
        "morf_convnext_cifar", **{**SMALL, "arch": "k3.5-soft_k3-static_k3-static_k3-static"}).eval())
    table.predict(other)
    assert table.measured == units + 1, "only the changed stage's block is new"

    reloaded = LatencyTable(SETUP, cache_dir=tmp_path)
    assert reloaded.predict(deployed) == first and reloaded.measured == 0
    stored = json.loads(reloaded.path.read_text())
    assert stored["environment"]["torch"] == torch.__version__ and stored["setup"]["input_size"] == [3, 16, 16]

    batch4 = LatencyTable(LatencySetup(input_size=(3, 16, 16), batch_size=4, rounds=3), cache_dir=tmp_path)
    assert batch4.path != reloaded.path and not batch4.entries, "tables are keyed by input shape"
    reloaded.path.write_text("{ truncated")
    assert LatencyTable(SETUP, cache_dir=tmp_path).entries == {}, "a corrupt cache is rebuilt, not fatal"


def test_bench_command_prints_both_forms_as_table_and_json(capsys):
    assert main(["bench", "morf_convnext_cifar", "--arch", "k3.5-soft_k3-static_k3-static_k3-static",
                 "--image-size", "16", "--rounds", "3"]) == 0
    table = capsys.readouterr().out
    assert "train" in table and "deploy" in table and "median ms" in table and "3x16x16" in table
    assert main(["bench", "resnet18", "--image-size", "32", "--rounds", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["forms"]) == {"deploy"} and result["forms"]["deploy"]["params"] == 11689512
    assert main(["bench", "k3-static_k3-static_k3-static_k3-static"]) == 2
    assert "needs --run" in capsys.readouterr().err
    assert main(["bench", "no_such_model"]) == 2


def test_calibration_is_fitted_per_network_structure_and_persisted(tmp_path):
    archs = ["k3-static_k3-static_k3-static_k3-static", "k3.5-soft_k3.5-static_k3-static_k3-static",
             "k3.5-hard_k3.5-soft_k3-static_k3-static"]
    models = [reparameterize_model(timm.create_model("morf_convnext_cifar", **{**SMALL, "arch": a}).eval())
              for a in archs]
    table = LatencyTable(SETUP, cache_dir=tmp_path)
    assert not table.calibrated(models[0]) and table.predict(models[0]) == table.unit_sum(models[0])
    scale, offset = table.calibrate(models)
    assert scale > 0 and table.calibrated(models[1])
    assert table.predict(models[1]) == pytest.approx(scale * table.unit_sum(models[1]) + offset)
    assert LatencyTable(SETUP, cache_dir=tmp_path).calibrated(models[2]), "calibrations are cached too"
    wider = reparameterize_model(timm.create_model("morf_convnext_cifar", **{**SMALL, "dims": (8, 16, 32, 96)}).eval())
    assert not table.calibrated(wider), "another network structure needs its own calibration"


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or "LD_PRELOAD" in os.environ, reason="glibc's malloc only")
def test_measurements_keep_freed_memory_and_say_so():
    measure(nn.Conv2d(3, 4, 3), LatencySetup(input_size=(3, 8, 8), rounds=3, round_seconds=0.001))
    assert environment()["allocator"] == "glibc, freed memory kept"
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    block = torch.ones(4 << 20)  # 16 MiB: glibc would mmap it and unmap it on free
    del block
    assert libc.mallinfo2().fordblks >= 16 << 20, "a freed 16 MiB block went back to the kernel"


def test_paired_ratio_divides_rounds_timed_together():
    def timing(rounds):
        return Timing(statistics.median(rounds), max(rounds), 0.0, len(rounds), 1, tuple(rounds))

    reference = timing([1.0, 1.0, 4.0, 4.0, 4.0])  # the machine slowed down for three rounds
    candidate = timing([1.1, 1.1, 4.4, 4.4, 4.0])
    median, low, high = paired_ratio(candidate, reference)
    assert median == pytest.approx(1.1) and low == pytest.approx(1.04) and high == pytest.approx(1.1)


# -- backends --------------------------------------------------------------------------------------------------

def _uniform(stage, **kwargs):
    """A deployed cifar ConvNeXt with the same stage everywhere (narrow, so the stage's conv dominates)."""
    arch = "_".join([stage] * 4)
    return timm.create_model("morf_convnext_cifar", arch=arch, depths=(1, 1, 1, 1), dims=(32, 32, 32, 32),
                             num_classes=10, deploy=True, **kwargs).eval()


def test_torch_and_onnxruntime_backends_rank_archs_alike():
    """Three archs whose costs differ by 1.4x and more (measured here: torch 3.3/4.7/33 ms, ORT 1.6/5.1/22 ms)."""
    models = {stage: _uniform(stage) for stage in ("k3-static", "k3.9-soft", "k3.21-soft")}
    order = {}
    for backend in ("torch", "onnxruntime"):
        setup = LatencySetup(input_size=(3, 48, 48), rounds=8, threads=1, backend=backend)
        results = morf_search.latency.measure_side_by_side(models, setup)
        assert all(r.environment["backend"] == backend and r.setup["backend"] == backend for r in results.values())
        order[backend] = sorted(results, key=lambda stage: results[stage].latency_ms)
    assert order["torch"] == order["onnxruntime"] == ["k3-static", "k3.9-soft", "k3.21-soft"]
    assert "onnxruntime" in results["k3-static"].environment


def test_lookup_table_is_kept_per_backend(tmp_path):
    deployed = reparameterize_model(timm.create_model("morf_convnext_cifar", **SMALL).eval())
    torch_table = LatencyTable(SETUP, cache_dir=tmp_path)
    ort_table = LatencyTable(LatencySetup(**{**SETUP.__dict__, "backend": "onnxruntime"}), cache_dir=tmp_path)
    assert ort_table.path != torch_table.path and ort_table.environment["backend"] == "onnxruntime"
    assert ort_table.predict(deployed) > 0 and ort_table.measured == len(ort_table.unit_keys(deployed))
    assert json.loads(ort_table.path.read_text())["setup"]["backend"] == "onnxruntime"


def test_onnxruntime_backend_refuses_what_it_cannot_time(capsys):
    setup = LatencySetup(input_size=(3, 16, 16), rounds=2, dtype="float16", backend="onnxruntime")
    with pytest.raises(morf_search.core.errors.UserError, match="latency.dtype: the onnxruntime backend"):
        measure(_uniform("k3-static"), setup)
    assert main(["bench", "morf_convnext_cifar", "--arch", "k3.5-soft_k3-static_k3-static_k3-static", "--backend",
                 "onnxruntime", "--image-size", "16", "--rounds", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["environment"]["backend"] == "onnxruntime" and list(result["forms"]) == ["deploy"]
