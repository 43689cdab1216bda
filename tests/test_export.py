"""Winners: finalist selection, fine-tune + verify + export, and timm round trips of the exports."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from test_run import morf, space_file

import morf_search  # noqa: F401
from morf_search.context import RunContext
from morf_search.core.fileio import CorruptFileError
from morf_search.finalists.export import load_export
from morf_search.finalists.finalize import Finalizer
from morf_search.finalists.select import select_finalists
from morf_search.models.arch import Arch
from morf_search.rundir import RunDir
from morf_search.space.schema import parse_space

STATIC = "k3.5-static_k3.5-static_k3-static_k3-static"
ROUTED = "k3.7-soft_k3.5-hard_k3-static_k3-static"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from test_data import write_cifar10

    root = tmp_path_factory.mktemp("export")
    write_cifar10(root / "cifar", per_batch=16, test=32)
    path = space_file(root, root / "cifar", search={"num_trials": 3}, finalists={"top_k": 0, "epochs": 1})
    morf("run", str(path), "--name", "winners", cwd=root)
    return RunDir.open(root / "runs" / "winners")


@pytest.fixture(scope="module")
def finalizer(run):
    return Finalizer(RunContext(run))


def _frame(rows):
    return pd.DataFrame([{"arch": a, "accuracy": acc, "latency_ms": lat, "params": 1, "flops": 1, "status": s}
                         for a, acc, lat, s in rows])


def test_finalists_spread_along_latency_and_respect_constraints():
    rows = [(f"a{i}", 50 + i, 1.0 + i, "ok") for i in range(10)] + [("slow", 99, 50.0, "ok"), ("bad", 99, 1, "error")]
    config = parse_space({"finalists": {"top_k": 3}, "search": {"constraints": {"latency_ms": 20}}})
    chosen = select_finalists(_frame(rows), config)
    assert list(chosen["arch"]) == ["a0", "a4", "a9"] or list(chosen["arch"]) == ["a0", "a5", "a9"]
    budgets = parse_space({"finalists": {"latency_budgets": [2.5, 6.2, 100]}})
    assert list(select_finalists(_frame(rows), budgets)["arch"]) == ["a1", "a5", "slow"]


def test_finalize_fine_tunes_verifies_measures_and_exports(run, finalizer):
    row = finalizer.finalize(Arch.parse(ROUTED), epochs=1)
    assert row["verified"] and row["max_abs_diff"] <= 1e-5
    assert row["latency_ms"] > 0 and row["train_latency_ms"] > 0 and not row["plain_timm"]
    export = run.path / row["export"]
    assert {p.name for p in export.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((export / "config.json").read_text())
    assert config["architecture"] == "morf_convnext_cifar" and config["model_args"]["arch"] == ROUTED
    assert config["model_args"]["deploy"] is True and config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert config["label_names"][3] == "c3"
    card = (export / "README.md").read_text()
    assert ROUTED in card and "import morf_search" in card and "fine-tuning" in card
    assert f"{row['export']}/model.safetensors" in json.loads(run.manifest_file.read_text())["files"]

    model = timm.create_model(f"local-dir:{export}", pretrained=True).eval()
    data_config = timm.data.resolve_data_config({}, model=model)
    assert data_config["input_size"] == (3, 16, 16) and data_config["crop_pct"] == 1.0
    assert np.allclose(data_config["mean"], finalizer.context.splits.mean)
    images = next(iter(finalizer.val))[0]
    reference = finalizer.context.supernet.extract(Arch.parse(ROUTED))  # different weights: fine-tuning changed them
    with torch.no_grad():
        loaded = model(images)
        assert not torch.allclose(loaded, reference.eval()(images))
        torch.testing.assert_close(load_export(export)(images), loaded)


def test_all_static_winner_loads_without_morf_search(run, finalizer, tmp_path):
    row = finalizer.finalize(Arch.parse(STATIC), epochs=0)
    assert row["plain_timm"] and row["verified"]
    export = run.path / row["export"]
    images = next(iter(finalizer.val))[0][:4]
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        expected = load_export(export)(images)
    torch.save(expected, tmp_path / "expected.pt")
    script = (
        "import sys, torch, timm\n"
        f"m = timm.create_model('local-dir:{export}', pretrained=True).eval()\n"
        "assert not any(n.startswith('morf_search') for n in sys.modules), 'morf_search was imported'\n"
        "assert type(m).__name__ == 'ConvNeXt'\n"
        f"x = torch.load('{tmp_path / 'images.pt'}')\n"
        "with torch.no_grad(): y = m(x)\n"
        f"torch.testing.assert_close(y, torch.load('{tmp_path / 'expected.pt'}'))\n"
        "print('plain ok', [s.blocks[0].conv_dw.kernel_size[0] for s in m.stages])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "plain ok [5, 5, 3, 3]" in result.stdout


def test_corrupt_exports_name_the_file(run, finalizer, tmp_path):
    import shutil

    export = run.path / finalizer.finalize(Arch.parse(STATIC), epochs=0)["export"]
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="model.safetensors: not a readable safetensors file"):
        load_export(broken)
    shutil.copy(export / "model.safetensors", weights)
    (broken / "config.json").write_text('{"architecture": "convnext_atto", ')
    with pytest.raises(CorruptFileError, match="config.json: not valid JSON"):
        load_export(broken)


def test_export_command_exports_any_candidate_with_onnx(run, tmp_path):
    import onnxruntime

    result = morf("export", str(run.path), "--arch", ROUTED, "--epochs", "0", "--onnx", cwd=run.path.parent.parent)
    export = run.path / "exports" / ROUTED
    assert str(export) in result.stdout and (export / "model.onnx").is_file()
    model = load_export(export)
    x = torch.randn(1, 3, 16, 16)
    session = onnxruntime.InferenceSession(str(export / "model.onnx"))
    (onnx_out,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, model(x).numpy(), atol=1e-4, rtol=0)
    bad = morf("export", str(run.path), "--arch", "k9-static_k3-static_k3-static_k3-static", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "not in the run's search space" in bad.stderr


def test_export_onnx_in_the_space_file_writes_onnx(run):
    from morf_search.space.schema import ExportConfig

    context = RunContext(run)
    context.config = context.config.model_copy(update={"export": ExportConfig(onnx=True)})
    export = run.path / Finalizer(context).finalize(Arch.parse(STATIC), epochs=0)["export"]
    assert (export / "model.onnx").is_file(), "export.onnx: true must write model.onnx"
    without = run.path / Finalizer(RunContext(run)).finalize(Arch.parse(STATIC), epochs=0)["export"]
    assert not (without / "model.onnx").exists()
