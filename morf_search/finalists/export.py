"""Exports in timm's layout: ``exports/<arch>/`` with config.json, model.safetensors and a model card.

timm's own ``save_for_hf`` writes the config (architecture, num_classes, label names,
model_args with the arch and ``deploy=True``, pretrained_cfg with input size, mean/std and
crop) and the safetensors weights, so ``timm.create_model('local-dir:PATH', pretrained=True)``
rebuilds the deploy model (after ``import morf_search``). An all-static ConvNeXt is exported
as timm's plain ``convnext_*`` with per-stage kernel sizes and loads without morf_search.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import timm
import torch
import torch.nn as nn
from timm.models import save_for_hf
from typing_extensions import NotRequired, TypedDict

from ..core.fileio import CorruptFileError, load_weights, read_json, write_text
from ..models.arch import Arch
from ..models.onnx import export_onnx
from ..space.schema import SpaceFile
from ..space.search_space import SearchSpace


def build_deploy_model(space: SearchSpace, arch: Arch, num_classes: int, state_dict: Dict[str, torch.Tensor]):
    """The space's model in deploy form for ``arch``, made by timm's factory so it records its arguments."""
    model = space.build_model(str(arch), num_classes, deploy=True)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def exportable(model: nn.Module, config: SpaceFile) -> nn.Module:
    """What gets exported: plain timm when the family has such a form and every stage is static, else the MoRF model."""
    to_plain = config.model.registered.to_plain()
    if to_plain is not None and model.arch.is_static:
        return to_plain(model).eval()
    return model


def export_model(directory: Path, deployed: nn.Module, config: SpaceFile, classes: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], card: str, onnx: bool = False) -> Path:
    """Write the export directory (replacing an older export only once the new one is complete)."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model = exportable(deployed, config)
    size = config.data.image_size
    preprocessing = {"input_size": (3, size, size), "mean": tuple(mean), "std": tuple(std), "crop_pct": 1.0,
                     "interpolation": "bicubic"}
    # describe these weights only: the entrypoint's default cfg names ImageNet checkpoints and tags
    model.pretrained_cfg = {**{k: model.pretrained_cfg[k] for k in ("architecture", "first_conv", "classifier")},
                            "num_classes": model.num_classes, **preprocessing}
    save_for_hf(model, str(staging), model_config={"label_names": list(classes)}, safe_serialization=True,
                data_config=preprocessing)
    write_text(staging / "README.md", card)
    if onnx:
        export_onnx(model, staging / "model.onnx", torch.zeros(1, 3, size, size))
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return directory


class ExportConfigShape(TypedDict):
    """What loading an export relies on in its config.json (timm's save_for_hf writes more)."""

    architecture: str
    num_classes: int
    model_args: NotRequired[Dict[str, Any]]
    pretrained_cfg: NotRequired[Dict[str, Any]]


def load_export(directory: Path) -> nn.Module:
    """Load an export through timm, first checking both files so a damaged one is named clearly."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CorruptFileError(f"{config_file}: missing; is {directory} an export directory?")
    read_json(config_file, ExportConfigShape)
    load_weights(directory / "model.safetensors")  # raises CorruptFileError naming the file
    try:
        return timm.create_model(f"local-dir:{directory}", pretrained=True).eval()
    except RuntimeError as err:  # state dict and config disagree
        raise CorruptFileError(f"{directory}: config.json and model.safetensors do not match ({err})") from None


def model_card(arch: Arch, name: str, facts: Dict[str, object], plain: bool, run_name: str,
               environment: Optional[dict] = None) -> str:
    """README.md of an export: what it is, how good and fast it is, how to load it."""
    lines = [
        f"# {name} `{arch}`", "",
        f"A MoRF architecture found by morf-search (run `{run_name}`), fine-tuned from its weight-sharing "
        "supernet and re-parameterized into its deploy form.", "",
        "| | |", "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in facts.items()]
    lines += ["", "## Load", "", "```python", "import timm"]
    if not plain:
        lines.append("import morf_search  # registers the MoRF models with timm")
    lines += ["model = timm.create_model('local-dir:PATH/TO/THIS/FOLDER', pretrained=True).eval()",
              "config = timm.data.resolve_data_config({}, model=model)",
              "transform = timm.data.create_transform(**config)", "```", ""]
    if plain:
        lines += ["Every stage routes statically, so this is timm's own model of the family with per-stage kernel "
                  "sizes: it loads without morf_search.", ""]
    if environment:
        lines += ["Latency measured on: " + json.dumps(environment), ""]
    return "\n".join(lines)
