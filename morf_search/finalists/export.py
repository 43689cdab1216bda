"""Exports in timm's layout: ``exports/<arch>/`` with config.json, model.safetensors, class_map.txt and a model card.

timm's own ``save_for_hf`` writes the config (architecture, num_classes, label names,
model_args with the arch and ``deploy=True``, pretrained_cfg with input size, mean/std and
crop) and the safetensors weights, so ``timm.create_model('local-dir:PATH', pretrained=True)``
rebuilds the deploy model (after ``import morf_search``). An all-static ConvNeXt is exported
as timm's plain ``convnext_*`` with per-stage kernel sizes and loads without morf_search.

Integrity: the deploy form must reproduce the training form (finite outputs, max abs diff
within tolerance) or nothing is exported; config.json records the SHA-256 of
model.safetensors (a file cannot carry its own hash) and ``load_export`` checks it, so a
damaged export is refused with one line instead of yielding NaN.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib.metadata import metadata, version
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import timm
import torch
import torch.nn as nn
from timm.models import save_for_hf
from typing_extensions import NotRequired, TypedDict

from ..core.errors import UserError
from ..core.fileio import CorruptFileError, file_hash, load_weights, read_json, save_weights, write_json, write_text
from ..models.arch import Arch
from ..models.onnx import OPSET, export_onnx, has_fixed_batch
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


class ExportVerificationError(UserError):
    """The deploy form does not reproduce the training form: such a network is not exported."""


def check_equivalence(arch: Arch, deployed: torch.Tensor, reference: torch.Tensor, tolerance: float) -> float:
    """Max abs difference of the deploy form's outputs from the training form's; raises unless finite and within."""
    if not (torch.isfinite(deployed).all() and torch.isfinite(reference).all()):
        raise ExportVerificationError(f"arch {arch}: the deploy check gave NaN or infinite outputs (tolerance "
                                      f"{tolerance:g}); the weights are broken, nothing was exported")
    diff = float((deployed - reference).abs().max())
    if not diff <= tolerance:
        raise ExportVerificationError(f"arch {arch}: deploy and training forms differ by {diff:.3g} (max abs), "
                                      f"above the tolerance {tolerance:g}; nothing was exported")
    return diff


def dataset_name(dataset: str) -> str:
    """The dataset as a model card's ``datasets:`` entry: its kind or name, never a local path."""
    kind, _, root = dataset.partition(":")
    if kind in ("cifar10", "cifar100") or kind.startswith("torch/") and kind != "torch/image_folder":
        return kind.split("/")[-1]
    if kind == "embedded":
        return "morf-search-embedded"
    return Path(root).name or kind


def architecture_note(model: nn.Module, config: SpaceFile) -> Optional[str]:
    """What the card must say when config.json's ``architecture`` is a builder more than this network's name."""
    if getattr(model, "arch", None) is not None:  # a MoRF model's name is its own; the arch sets its kernels
        return None
    name = model.pretrained_cfg["architecture"]
    reshaped = config.model.depths or config.model.dims or config.model.args
    if not reshaped and name == config.model.timm_name.replace("morf_", "", 1):
        return (f"`architecture` is timm's `{name}`: `model_args` keep its depths and widths and set per-stage "
                "`kernel_sizes` (timm's default is 7 in every stage).")
    return (f"`architecture` names timm's `{name}` only as the builder: this network is not a `{name}`. Its "
            "`model_args` (depths, dims, stem, per-stage `kernel_sizes`) override that entrypoint's defaults, and "
            "no timm entrypoint has this network's shape.")


def export_model(directory: Path, deployed: nn.Module, config: SpaceFile, classes: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], card: "ModelCard", images: torch.Tensor,
                 onnx: bool = False) -> Path:
    """Write the export directory (replacing an older export only once the new one is complete).

    With ``onnx``, model.onnx is checked against PyTorch on ``images`` under ONNX Runtime and
    the card records the max abs difference and the batch sizes the graph takes.
    """
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
    plain = getattr(model, "arch", None) is None
    info = {"morf_search_version": version("morf-search"), "arch": str(card.arch),
            "export_format": "timm-plain" if plain else "morf-deploy"}
    save_for_hf(model, str(staging), model_config={"label_names": list(classes)}, safe_serialization=True,
                data_config=preprocessing)
    weights = staging / "model.safetensors"
    save_weights(weights, model.state_dict(), metadata={"format": "pt", **info})  # timm's file, plus who made it
    config_json = read_json(staging / "config.json")
    write_json(staging / "config.json", {**config_json, "morf_search": {**info, "weights_sha256": file_hash(weights)}})
    write_text(staging / "class_map.txt", "".join(f"{name}\n" for name in classes))
    onnx_facts = None
    if onnx:
        onnx_facts = write_checked_onnx(model, staging / "model.onnx", size, images)
    write_text(staging / "README.md", card.render(plain, architecture_note(model, config), onnx_facts))
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return directory


def write_checked_onnx(model: nn.Module, path: Path, size: int, images: torch.Tensor) -> Dict[str, object]:
    """model.onnx, and how it compares with PyTorch under ONNX Runtime (when installed) on ``images``."""
    fixed = has_fixed_batch(model)
    export_onnx(model, path, torch.zeros(1, 3, size, size))
    facts: Dict[str, object] = {"batch": "1 only" if fixed else "any (dynamic batch axis)"}
    try:
        import onnxruntime
    except ImportError:
        return facts
    device = next(model.parameters()).device
    images = images.cpu()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for batch in images.split(1) if fixed else [images]:
        with torch.no_grad():
            expected = model(batch.to(device)).cpu().numpy()
        diffs.append(float(abs(session.run(None, {"images": batch.numpy()})[0] - expected).max()))
    facts["max_abs_diff"], facts["images"] = max(diffs), len(images)
    return facts


class ExportConfigShape(TypedDict):
    """What loading an export relies on in its config.json (timm's save_for_hf writes more)."""

    architecture: str
    num_classes: int
    model_args: NotRequired[Dict[str, Any]]
    pretrained_cfg: NotRequired[Dict[str, Any]]
    morf_search: NotRequired[Dict[str, Any]]


def load_export(directory: Path) -> nn.Module:
    """Load an export through timm, first checking both files (and the weights' recorded hash) so a damaged one is
    named clearly."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CorruptFileError(f"{config_file}: missing; is {directory} an export directory?")
    config = read_json(config_file, ExportConfigShape)
    weights = directory / "model.safetensors"
    load_weights(weights)  # raises CorruptFileError naming the file
    expected = (config.get("morf_search") or {}).get("weights_sha256")
    if expected is not None and file_hash(weights) != expected:
        raise CorruptFileError(f"{weights}: its content does not match the hash config.json records ({expected}); "
                               "the file is damaged or was replaced, export the arch again")
    try:
        return timm.create_model(f"local-dir:{directory}", pretrained=True).eval()
    except RuntimeError as err:  # state dict and config disagree
        raise CorruptFileError(f"{directory}: config.json and model.safetensors do not match ({err})") from None


RUN_TIMM_SCRIPT = ('python -c "import morf_search, runpy, sys; sys.argv.pop(0); '
                   "runpy.run_path(sys.argv[0], run_name='__main__')\"")


def recipe(section, supernet: bool) -> str:
    """One line of a training recipe from a supernet or finalists section of the space file."""
    text = (f"{section.epochs} epochs, {section.optimizer} lr {section.lr:g}, weight decay {section.weight_decay:g}, "
            f"{section.schedule} schedule with {section.warmup_epochs} warm-up epochs, "
            f"label smoothing {section.label_smoothing:g}")
    if supernet:
        text += (f"; {section.sampling} sampling, distillation {'on' if section.distillation else 'off'}, "
                 f"router temperature {section.tau:g}, Gumbel noise {'on' if section.gumbel else 'off'}")
    return text


def config_license() -> str:
    """The license these weights are published under: morf-search's own."""
    return (metadata("morf-search").get("License") or "apache-2.0").lower()


@dataclass
class ModelCard:
    """README.md of an export: what it is, how it was trained, how good and fast it is, how to load and check it."""

    arch: Arch
    name: str
    run_name: str
    config: SpaceFile
    facts: Dict[str, object]
    deploy_diff: float
    tolerance: float
    checked_images: int
    from_supernet: bool
    num_classes: int
    environment: Optional[dict] = None

    def render(self, plain: bool, note: Optional[str], onnx: Optional[Dict[str, object]]) -> str:
        config = self.config
        lines = ["---", "library_name: timm", f"license: {config_license()}", "tags:", "- image-classification",
                 "- timm", "- morf-search", "- mixture-of-receptive-fields", "datasets:",
                 f"- {dataset_name(config.data.dataset)}", "---", "",
                 f"# {self.name} `{self.arch}`", "",
                 f"A MoRF architecture found by morf-search (run `{self.run_name}`), "
                 + ("fine-tuned from its weight-sharing supernet" if self.from_supernet else "trained from scratch")
                 + " and re-parameterized into its deploy form.", "", "| | |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in self.facts.items()]
        lines += ["", "## Training recipe", ""]
        if self.from_supernet:
            lines.append(f"- supernet: {recipe(config.supernet, supernet=True)}")
        lines += [f"- fine-tuning: {recipe(config.finalists, supernet=False)}",
                  f"- data: `{dataset_name(config.data.dataset)}` at {config.data.image_size} px; the preprocessing "
                  "is config.json's `pretrained_cfg`", ""]
        lines += ["## Latency", "", f"Measured with {self.facts.get('latency setup', 'the run latency setup')}"
                  + (" on: " + json.dumps(self.environment) if self.environment else "") + ".", ""]
        lines += ["## Deploy check", "",
                  f"The deploy form (these weights) and the training form it was re-parameterized from gave the same "
                  f"logits on {self.checked_images} validation images within {self.deploy_diff:.2e} (max abs); an "
                  f"export with NaN outputs or a difference above {self.tolerance:g} is refused.", ""]
        lines += ["## Load", "", "```python", "import timm"]
        if not plain:
            lines.append("import morf_search  # registers the MoRF models with timm")
        lines += ["model = timm.create_model('local-dir:PATH/TO/THIS/FOLDER', pretrained=True).eval()",
                  "config = timm.data.resolve_data_config({}, model=model)",
                  "transform = timm.data.create_transform(**config)", "```", ""]
        if plain:
            lines += ["Without morf_search: every stage routes statically, so this is timm's own model with per-stage "
                      "kernel sizes; the code above loads it with timm alone.", ""]
        else:
            lines += ["Without morf_search: timm cannot build a MoRF model on its own. Script it once where "
                      "morf_search is installed (`torch.jit.save(torch.jit.script(model), 'model.pt')`) and load "
                      "that with `torch.jit.load` anywhere, or use the ONNX graph.", ""]
        if note:
            lines += [note, ""]
        lines += ["## Classes", "",
                  "Output `i` is line `i` of `class_map.txt` (config.json's `label_names`, in the training data's "
                  "order). Give it to timm when the evaluation data's folders sort differently: "
                  "`validate.py DATA --model local-dir:PATH --class-map PATH/class_map.txt`, or "
                  "`timm.data.create_dataset('', root=DATA, class_map='PATH/class_map.txt')`.", ""]
        lines += ["## timm's scripts", ""]
        if plain:
            lines += ["`onnx_export.py`, `benchmark.py` and `validate.py` take `--model local-dir:PATH` as they are.",
                      ""]
        else:
            lines += [f"They do not import morf_search; run them through it, e.g. `{RUN_TIMM_SCRIPT} benchmark.py "
                      f"--model local-dir:PATH --reparam --torchscript --num-classes {self.num_classes} "
                      f"--img-size {config.data.image_size}` (likewise `validate.py`): their `create_model`, "
                      "`reparameterize_model` and `torch.jit.script` calls work on this model."]
            if self.arch.is_static:
                lines.append("`onnx_export.py --reparam` works the same way.")
            else:
                lines.append("`onnx_export.py` does not: it always declares a dynamic batch axis, and the routed "
                             "layers' ONNX graph needs a fixed batch (see ONNX below); export with "
                             "`morf-search export RUN --arch ARCH --onnx` or `morf_search.models.onnx.export_onnx`.")
            lines.append("")
        if not self.arch.is_static:
            lines += ["## ONNX", "", "Routed layers fold the batch into the groups of one convolution, and an ONNX "
                      "Conv's group count is fixed, so this network's ONNX graph holds one batch size: "
                      "`morf_search.models.onnx.export_onnx(model, path, torch.zeros(B, 3, H, W))` writes it for "
                      "batch B."]
        if onnx:
            if self.arch.is_static:
                lines += ["## ONNX", ""]
            lines.append(f"`model.onnx` (opset {OPSET}, input `images`, output `logits`) takes batch {onnx['batch']}.")
            if "max_abs_diff" in onnx:
                lines.append(f"ONNX Runtime against PyTorch on {onnx['images']} images: max abs diff "
                             f"{onnx['max_abs_diff']:.2e}.")
        if onnx or not self.arch.is_static:
            lines.append("")
        lines += ["## Integrity", "",
                  "config.json's `morf_search.weights_sha256` is the SHA-256 of model.safetensors; morf-search "
                  "(`bench`, its export loader) refuses a file that does not match. model.safetensors' metadata "
                  "names the arch, the export format and the morf-search version.", ""]
        return "\n".join(lines)
