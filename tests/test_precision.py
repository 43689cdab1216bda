"""Training precision: bf16 autocast trains on CPU, fp16 needs CUDA and its grad scaler, auto picks per device."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data import write_cifar10

from morf_search.core.errors import UserError
from morf_search.space.schema import parse_space
from morf_search.space.search_space import SearchSpace
from morf_search.training.data import load_splits, make_loader
from morf_search.training.loop import fit
from morf_search.training.precision import resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_fp32_on_cpu_and_fp16_is_refused_there():
    assert resolve_precision("auto", CPU).name == "fp32"
    for name in ("fp32", "bf16"):
        precision = resolve_precision(name, CPU)
        assert not precision.scaler().is_enabled() and not precision.channels_last
    with pytest.raises(UserError, match="finalists.precision: fp16 trains with a CUDA grad scaler"):
        resolve_precision("fp16", CPU, "finalists.precision")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_scales_its_loss_and_trains_channels_last():
    precision = resolve_precision("fp16", CUDA)
    assert precision.scaler().is_enabled() and precision.channels_last
    assert resolve_precision("auto", CUDA).name == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


def test_bf16_autocast_trains_on_cpu_and_its_loss_decreases(tmp_path):
    write_cifar10(tmp_path / "cifar", per_batch=8, test=8)
    config = parse_space({
        "model": {"family": "convnext", "size": "cifar", "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]},
        "data": {"dataset": f"cifar10:{tmp_path / 'cifar'}", "image_size": 16, "batch_size": 8},
        "space": {"kernels": [3]}, "supernet": {"epochs": 4, "warmup_epochs": 0, "precision": "bf16"}})
    space = SearchSpace(config)
    model = space.build_model(space.largest(), 10)
    dtypes = set()
    model.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    loader = make_loader(load_splits(config.data).train, 8, 0, shuffle=True, seed=0, drop_last=True)
    history = fit(model, loader, config.supernet, CPU, seed=0, label="bf16")
    assert dtypes == {torch.bfloat16}, "the forward pass ran under bf16 autocast"
    losses = [h["loss"] for h in history]
    assert losses[-1] < losses[0], losses
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay fp32 under autocast"


def test_the_gpu_check_script_runs_its_python_part_on_cpu():
    """analysis/gpu_check.py is meant for a CUDA machine; --cpu-smoke exercises its code here at toy sizes."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "analysis" / "gpu_check.py"), "--cpu-smoke"], cwd=root,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| bf16 | contiguous |") for line in rows), result.stdout
    assert any(line.startswith("| 2 |") for line in rows), result.stdout


@pytest.mark.parametrize("text,expected", [
    ("supernet: {precision: fp8}\n", "supernet.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
    ("finalists: {precision: half}\n", "finalists.precision: Input should be"),
    ("supernet: {workers: 0}\n", "supernet.workers: Input should be greater than 0"),
])
def test_precision_and_workers_fields_are_checked_in_one_line(tmp_path, capsys, text, expected):
    from morf_search.cli import main

    path = tmp_path / "space.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]  # not torch's
    assert len(errors) == 1 and expected in errors[0], errors


def test_workers_on_the_command_line_must_be_positive(tmp_path, capsys):
    from morf_search.cli import main

    path = tmp_path / "space.yaml"
    path.write_text("{}\n")
    assert main(["run", str(path), "--workers", "0", "--runs", str(tmp_path / "runs")]) == 2
    assert "--workers: 0; expected a positive number" in capsys.readouterr().err
