"""Winners: finalist selection, fine-tune + verify + export, and timm round trips of the exports."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from test_run import morf, space_file

import yaml
from safetensors import safe_open

import morf_search
from morf_search.context import RunContext
from morf_search.core.errors import UserError
from morf_search.core.fileio import CorruptFileError, file_hash
from morf_search.finalists.export import ExportVerificationError, check_equivalence, load_export
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
    assert {p.name for p in export.iterdir()} == {"config.json", "model.safetensors", "README.md", "class_map.txt"}
    config = json.loads((export / "config.json").read_text())
    assert config["architecture"] == "morf_convnext_cifar" and config["model_args"]["arch"] == ROUTED
    assert config["model_args"]["deploy"] is True and config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert config["label_names"][3] == "c3"
    assert (export / "class_map.txt").read_text().splitlines() == config["label_names"]
    assert config["morf_search"]["weights_sha256"] == file_hash(export / "model.safetensors")
    with safe_open(export / "model.safetensors", "pt") as weights:
        metadata = weights.metadata()
    assert metadata["format"] == "pt" and metadata["arch"] == ROUTED and metadata["export_format"] == "morf-deploy"
    assert metadata["morf_search_version"] == morf_search.__version__
    card = (export / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "timm" and "timm" in header["tags"] and header["datasets"] == ["cifar10"]
    assert header["license"] == "apache-2.0"
    assert ROUTED in card and "import morf_search" in card and "Without morf_search" in card
    assert "- supernet: 1 epochs, adamw" in card and "- fine-tuning: " in card and "class_map.txt" in card
    assert f"within {row['max_abs_diff']:.2e} (max abs)" in card and "torch.jit.script" in card
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
    card = (export / "README.md").read_text()
    assert "`architecture` names timm's `convnext_atto` only as the builder" in card  # the space reshapes it
    assert "Without morf_search: every stage routes statically" in card
    with safe_open(export / "model.safetensors", "pt") as weights:
        assert weights.metadata()["export_format"] == "timm-plain"


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
    card = (export / "README.md").read_text()
    assert "## ONNX" in card and "takes batch 1 only" in card and "group count is fixed" in card
    diff = float(card.split("ONNX Runtime against PyTorch on ")[1].split("max abs diff ")[1].split(".\n")[0])
    assert 0 <= diff <= 1e-4
    bad = morf("export", str(run.path), "--arch", "k9-static_k3-static_k3-static_k3-static", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "not in the run's search space" in bad.stderr


def test_export_onnx_in_the_space_file_writes_onnx(run):
    from morf_search.space.schema import ExportConfig

    context = RunContext(run)
    context.config = context.config.model_copy(update={"export": ExportConfig(onnx=True)})
    export = run.path / Finalizer(context).finalize(Arch.parse(STATIC), epochs=0)["export"]
    assert (export / "model.onnx").is_file(), "export.onnx: true must write model.onnx"
    assert "takes batch any (dynamic batch axis)" in (export / "README.md").read_text()
    without = run.path / Finalizer(RunContext(run)).finalize(Arch.parse(STATIC), epochs=0)["export"]
    assert not (without / "model.onnx").exists()


def test_an_export_with_damaged_weights_is_refused_by_bench_with_one_line(run, finalizer, tmp_path):
    """Bytes garbled after the safetensors header still parse (and give NaN); the recorded hash catches them."""
    import shutil

    export = run.path / finalizer.finalize(Arch.parse(ROUTED), epochs=0)["export"]
    broken = tmp_path / "garbled"
    shutil.copytree(export, broken)
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # tensor bytes begin after the header
    data[start:start + 64] = b"\xff" * 64  # NaN patterns in float32
    weights.write_bytes(bytes(data))
    result = morf("bench", str(broken), "--image-size", "16", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "model.safetensors" in line]  # one line names it
    assert line.startswith(f"error: {weights}: ")
    assert "does not match the hash config.json records" in line
    with pytest.raises(CorruptFileError, match="model.safetensors: its content does not match"):
        load_export(broken)
    assert load_export(export) is not None  # the intact export still loads


def test_an_export_whose_deploy_check_fails_is_not_written(run, finalizer, monkeypatch):
    arch = Arch.parse("k5-static_k3.5-soft_k3-static_k3-static")

    def broken_fine_tune(arch, epochs, seed):
        model = finalizer.starting_model(arch)
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(float("nan"))
        return model.eval()

    monkeypatch.setattr(finalizer, "fine_tune", broken_fine_tune)
    with pytest.raises(ExportVerificationError, match=f"arch {arch}: the deploy check gave NaN.*tolerance 1e-05"):
        finalizer.finalize(arch, epochs=0)
    assert not (run.exports / str(arch)).exists()
    assert isinstance(ExportVerificationError("x"), UserError)


def test_deploy_differences_above_the_tolerance_fail_naming_arch_diff_and_tolerance():
    arch = Arch.parse(ROUTED)
    reference = torch.zeros(2, 10)
    assert check_equivalence(arch, reference + 1e-6, reference, 1e-5) == pytest.approx(1e-6)
    with pytest.raises(ExportVerificationError, match=rf"arch {arch}: .*differ by 0.002 .*tolerance 1e-05"):
        check_equivalence(arch, reference + 2e-3, reference, 1e-5)
    with pytest.raises(ExportVerificationError, match="NaN or infinite"):
        check_equivalence(arch, reference + float("inf"), reference, 1e-5)


def test_class_map_gives_timm_datasets_the_exports_class_order(run, finalizer, tmp_path):
    """An ImageFolder sorts its folders; with the export's class_map.txt each folder gets the model's index."""
    from PIL import Image

    export = run.path / finalizer.finalize(Arch.parse(STATIC), epochs=0)["export"]
    labels = (export / "class_map.txt").read_text().splitlines()
    renamed = [f"{chr(ord('z') - i)}_{name}" for i, name in enumerate(labels)]  # sorted order is reversed
    (export / "class_map.txt").write_text("".join(f"{name}\n" for name in renamed))
    for name in renamed:
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "val" / name / "0.png")
    plain = timm.data.create_dataset("", root=str(tmp_path / "val"))
    mapped = timm.data.create_dataset("", root=str(tmp_path / "val"), class_map=str(export / "class_map.txt"))
    folder = {target: Path(path).parent.name for path, target in mapped.reader.samples}
    assert [folder[i] for i in range(len(renamed))] == renamed
    assert sorted(plain.reader.class_to_idx, key=plain.reader.class_to_idx.get) != renamed


def test_timm_scripts_calls_work_on_a_morf_export(run, finalizer, tmp_path):
    """What benchmark.py --reparam --torchscript and onnx_export.py --reparam call, on a routed and a plain export,
    and the card's way of running timm's scripts with morf_search imported."""
    import onnxruntime
    from torch.onnx.errors import SymbolicValueError
    from timm.utils import reparameterize_model
    from timm.utils.onnx import onnx_export

    export = run.path / finalizer.finalize(Arch.parse(ROUTED), epochs=0)["export"]
    num_classes = json.loads((export / "config.json").read_text())["num_classes"]
    x = torch.randn(1, 3, 16, 16)
    model = reparameterize_model(timm.create_model(f"local-dir:{export}", num_classes=num_classes, in_chans=3,
                                                   pretrained=True, global_pool="fast", scriptable=True).eval())
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), load_export(export)(x), atol=1e-5, rtol=0)
    with pytest.raises(SymbolicValueError, match="kernel of unknown shape"):  # the card says why
        onnx_export(model, str(tmp_path / "routed.onnx"), input_size=(3, 16, 16), batch_size=1)
    assert "`onnx_export.py` does not: it always declares a dynamic batch axis" in (export / "README.md").read_text()

    plain = run.path / finalizer.finalize(Arch.parse(STATIC), epochs=0)["export"]
    model = reparameterize_model(timm.create_model(f"local-dir:{plain}", num_classes=num_classes, in_chans=3,
                                                   pretrained=True, checkpoint_path="", exportable=True))
    onnx_export(model, str(tmp_path / "plain.onnx"), check_forward=True, input_size=(3, 16, 16), batch_size=2)
    x = torch.randn(3, 3, 16, 16)  # its batch axis is dynamic
    (onnx_out,) = onnxruntime.InferenceSession(str(tmp_path / "plain.onnx")).run(None, {"input0": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, model(x).numpy(), atol=1e-4, rtol=0)

    from morf_search.finalists.export import RUN_TIMM_SCRIPT
    script = tmp_path / "timm_script.py"
    script.write_text("import sys, timm\n"
                      "m = timm.create_model(sys.argv[1], pretrained=True)\n"
                      "print(type(m).__name__, m.num_classes)\n")
    card = (export / "README.md").read_text()
    assert RUN_TIMM_SCRIPT in card and "--reparam --torchscript" in card and f"--num-classes {num_classes}" in card
    result = subprocess.run(f"{RUN_TIMM_SCRIPT.replace('python', sys.executable, 1)} {script} local-dir:{export}",
                            shell=True, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["MoRFConvNeXt", str(num_classes)]
