"""The space file (space.yaml): a documented, validated schema with a default for every field.

A short file is a valid space; everything left out takes the defaults below. Invalid files
raise ``SpaceFileError`` whose lines each name the field by its YAML path and say what is
expected, so the command line can print them without a traceback. A space that validates
also runs: devices are resolved, sizes beyond the limits below are refused, the class count
is checked against the dataset where that needs no images, and the supernet is built and
fed one batch on the meta device (no memory), as ``run`` would.
"""
from __future__ import annotations

from pathlib import Path
import re
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple, Union

import torch
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from timm.optim import list_optimizers

from ..core.device import resolve_device
from ..core.errors import UserError
from ..core.fileio import first_line, read_text
from ..layer.experts import Expert
from ..layer.routing import ROUTING_MODES
from ..models.registry import ModelFamily, get_family, list_families

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # training/precision.py resolves them per device
EMBEDDED_MIN_IMAGE_SIZE = 24  # the embedded dataset's class is a 16 px displacement: it needs room for it
EMBEDDED_NUM_CLASSES = 10  # its displacement directions (training.embedded; the layers below may not import it)
OBJECTIVES = {"accuracy": "max", "latency_ms": "min", "params": "min", "flops": "min"}
ALGORITHMS = {"ray": ("random", "tpe", "nsga2"), "nni": ("random", "evolution", "tpe", "grid")}
CUSTOM_DATASET = "custom"  # the train/val datasets come with the run from Python (morf_search.Search(data=...))
DATASET_FORMS = ("embedded", "cifar10:PATH", "cifar100:PATH", "imagefolder:PATH",
                 "a timm dataset name such as torch/cifar10:ROOT", f"{CUSTOM_DATASET} (datasets given from Python)")
TIMM_DATASET_PREFIXES = ("torch/", "hfds/", "hfids/", "tfds/", "wds/")

# What a space file may be: the shipped ones are 2-3 KB, 4 levels deep, a few hundred values.
MAX_SPACE_FILE_BYTES = 1024 ** 2
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 100_000
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when installed: parsing 1 MB stays fast

# Limits on sizes, each several times what the largest published networks use, so that no sane space
# reaches them, while a slip (an extra zero or three) is refused before run tries to allocate it.
MAX_KERNEL_SPAN = 101  # window side of an expert (dilation included); SLaK's 51x51 are the largest ConvNet kernels
MAX_IMAGE_SIZE = 4096  # px; ImageNet classifiers train at 224-800 px (EfficientNet-L2: 800)
MAX_WIDTH = 16384  # channels per stage; timm's widest ConvNeXt stage (XXLarge) has 3072
MAX_BLOCKS = 128  # blocks per stage; ResNet-152's deepest stage has 36
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_PARAMS = 2_000_000_000  # of the supernet; ConvNeXt-XXLarge has 846 M
MAX_EMBEDDED_BYTES = 4 * 1024 ** 3  # the embedded dataset is generated in memory: images x size^2 x 3 bytes
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


def _at_most(limit: int, what: str, why: str):
    """A pydantic check that refuses values above ``limit``, saying why the limit is where it is."""
    def check(value):
        values = value if isinstance(value, tuple) else (value,)
        if any(v is not None and v > limit for v in values):
            raise ValueError(f"{max(v for v in values if v is not None):,} is above the limit of {limit:,} {what} "
                             f"({why})")
        return value
    return AfterValidator(check)


def _device(value: str) -> str:
    resolve_device(value)  # its DeviceError is a ValueError: pydantic reports it on the field
    return value


Device = Annotated[str, AfterValidator(_device)]


class SpaceFileError(UserError):
    """An invalid space file: one line per problem, each naming the field by its YAML path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """The base network: a registered MoRF family and size, optionally reshaped."""

    family: str = Field("convnext", description="a registered model family: " + ", ".join(list_families()))
    size: str = "cifar"
    depths: Annotated[Optional[Tuple[int, ...]], _at_most(MAX_BLOCKS, "blocks per stage", "ResNet-152 has 36")] = \
        Field(None, description="blocks per stage")
    dims: Annotated[Optional[Tuple[int, ...]], _at_most(MAX_WIDTH, "channels", "timm's widest ConvNeXt has 3072")] = \
        Field(None, description="widths per stage (ResNet: channels)")
    num_classes: Annotated[Optional[int], _at_most(MAX_CLASSES, "classes", "ImageNet-21k has 21,841")] = Field(
        None, gt=0, description="default: the dataset's class count; must match it where the dataset lists classes")
    args: Dict[str, Any] = Field(default_factory=dict, description="extra timm model arguments, e.g. patch_size")

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        get_family(value)
        return value

    @model_validator(mode="after")
    def _known_size(self):
        family = self.registered
        if self.size not in family.sizes:
            raise _field_error("size", f"unknown {self.family} size {self.size!r}; expected one of "
                                       f"{', '.join(family.sizes)}")
        for name in ("depths", "dims"):
            values = getattr(self, name)
            if values is not None and (len(values) != family.num_stages or any(v <= 0 for v in values)):
                raise _field_error(name, f"expected {family.num_stages} positive integers, one per stage")
        return self

    @property
    def registered(self) -> ModelFamily:
        """The family's registry entry."""
        return get_family(self.family)

    @property
    def timm_name(self) -> str:
        return self.registered.timm_name(self.size)

    def timm_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``timm.create_model(self.timm_name, ...)`` besides arch/num_classes."""
        kwargs = dict(self.args)
        if self.depths:
            kwargs[self.registered.depth_arg] = self.depths
        if self.dims:
            kwargs[self.registered.width_arg] = self.dims
        return kwargs


class AugmentConfig(_Section):
    """Training augmentation, passed to timm's ``create_transform``."""

    scale: Tuple[float, float] = (0.6, 1.0)
    ratio: Tuple[float, float] = (0.75, 1.3333)
    hflip: float = Field(0.5, ge=0, le=1)
    color_jitter: float = Field(0.0, ge=0)
    auto_augment: Optional[str] = Field(None, description="timm auto-augment policy, e.g. rand-m9-mstd0.5")
    re_prob: float = Field(0.0, ge=0, le=1, description="random-erasing probability")


class EmbeddedConfig(_Section):
    """The built-in synthetic dataset (no download)."""

    num_train: int = Field(10000, gt=0)
    num_val: int = Field(2000, gt=0)
    seed: int = 0


class DataConfig(_Section):
    dataset: str = Field("embedded", description=" | ".join(DATASET_FORMS))
    image_size: Annotated[int, _at_most(MAX_IMAGE_SIZE, "px", "ImageNet classifiers train at 224-800 px")] = \
        Field(32, gt=0)
    batch_size: int = Field(128, gt=0)
    workers: int = Field(0, ge=0, description="data-loading processes; 0 loads in the training process")
    augmentation: AugmentConfig = AugmentConfig()
    embedded: EmbeddedConfig = EmbeddedConfig()
    download: bool = Field(False, description="let a timm/torchvision dataset download itself")
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        kind, _, path = value.partition(":")
        if value in ("embedded", CUSTOM_DATASET):
            return value
        if kind in ("cifar10", "cifar100", "imagefolder"):
            if not path:
                raise ValueError(f"{kind} needs a path: {kind}:PATH")
            root = Path(path).expanduser()
            if not root.exists():
                raise ValueError(f"path {path!r} does not exist")
            if kind == "imagefolder" and not ((root / "train").is_dir() and any(
                    (root / split).is_dir() for split in ("val", "validation"))):
                raise ValueError(f"{path!r} needs train/ and val/ subfolders with one folder per class")
            return value
        if value.startswith(TIMM_DATASET_PREFIXES):
            return value
        raise ValueError(f"unknown dataset {value!r}; expected {', '.join(DATASET_FORMS)}")

    @model_validator(mode="after")
    def _embedded_size(self):
        if self.dataset != "embedded":
            return self
        if self.image_size < EMBEDDED_MIN_IMAGE_SIZE:
            raise _field_error("image_size", f"the embedded dataset needs at least {EMBEDDED_MIN_IMAGE_SIZE} px, "
                                             f"got {self.image_size}")
        images = self.embedded.num_train + self.embedded.num_val
        if images * self.image_size ** 2 * 3 > MAX_EMBEDDED_BYTES:
            raise _field_error("embedded", f"{images:,} images of {self.image_size} px need "
                                           f"{images * self.image_size ** 2 * 3 / 1024 ** 3:.1f} GiB in memory, above "
                                           f"the limit of {MAX_EMBEDDED_BYTES // 1024 ** 3} GiB")
        return self

    def known_classes(self) -> Optional[int]:
        """The dataset's class count where it is known without reading images; None where only loading tells."""
        kind, _, path = self.dataset.partition(":")
        if kind == "embedded":
            return EMBEDDED_NUM_CLASSES
        if kind in CIFAR_CLASSES:
            return CIFAR_CLASSES[kind]
        if kind == "imagefolder":
            return sum(1 for folder in (Path(path).expanduser() / "train").iterdir() if folder.is_dir())
        return None


class StageSpace(_Section):
    """The choices for one stage: which experts may be combined and how they may be routed."""

    kernels: List[Union[int, str]] = Field([3, 5, 7], description="candidate experts: odd sizes, '3d2' for dilated")
    min_experts: int = Field(1, gt=0)
    max_experts: int = Field(2, gt=0, description="default: 2, or fewer when fewer kernels are given")
    routing: List[Literal[ROUTING_MODES]] = Field(list(ROUTING_MODES))  # the modes routing.py owns
    top_k: List[int] = Field([1], min_length=1, description="experts per sample under hard routing")

    @model_validator(mode="before")
    @classmethod
    def _default_max_experts(cls, data):
        if isinstance(data, dict) and "max_experts" not in data and isinstance(data.get("kernels"), list):
            return {**data, "max_experts": max(1, min(2, len(data["kernels"])))}
        return data

    @field_validator("kernels")
    @classmethod
    def _odd_kernels(cls, values):
        if not values:
            raise ValueError("expected at least one kernel size")
        experts = []
        for value in values:
            try:
                experts.append(Expert.parse(value))
            except ValueError as err:
                raise ValueError(str(err)) from None
            if experts[-1].span > MAX_KERNEL_SPAN:
                raise ValueError(f"expert {experts[-1]} spans {experts[-1].span:,} px, above the limit of "
                                 f"{MAX_KERNEL_SPAN} (the largest published ConvNet kernels are 51x51)")
        if len(set(experts)) != len(experts):
            raise ValueError("kernel sizes repeat")
        return [str(e) for e in experts]

    @field_validator("routing")
    @classmethod
    def _some_routing(cls, values):
        if not values:
            raise ValueError(f"expected at least one routing mode of {', '.join(ROUTING_MODES)}")
        return values

    @field_validator("top_k")
    @classmethod
    def _positive_top_k(cls, values):
        if any(v < 1 for v in values):
            raise ValueError("expected positive integers")
        return values

    @model_validator(mode="after")
    def _consistent_counts(self):
        if self.min_experts > self.max_experts:
            raise _field_error("min_experts", f"{self.min_experts} is larger than max_experts ({self.max_experts})")
        if self.max_experts > len(self.kernels):
            raise _field_error("max_experts", f"{self.max_experts} is more than the {len(self.kernels)} kernels given")
        return self

    @property
    def experts(self) -> Tuple[Expert, ...]:
        return tuple(sorted(Expert.parse(k) for k in self.kernels))


class SpaceConfig(_Section):
    """Per-stage choices; a single entry (or the stage fields written directly) applies to all stages."""

    stages: List[StageSpace] = Field(default_factory=lambda: [StageSpace()], min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_entry_for_all(cls, data):
        if isinstance(data, dict) and "stages" not in data:
            return {"stages": [data]}
        return data


class TrainingConfig(_Section):
    """How a network is trained (timm's optimizer and scheduler factories)."""

    epochs: int = Field(10, gt=0)
    optimizer: str = Field("adamw", description="any timm optimizer name")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    schedule: Literal["cosine", "tanh", "poly", "step"] = "cosine"
    warmup_epochs: int = Field(1, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    balance_loss_weight: float = Field(0.01, ge=0, description="weight of the hard-routing load-balance loss")
    precision: Literal[PRECISIONS] = Field(
        "auto", description="autocast dtype; auto: bf16 on a CUDA device that supports it, else fp32")
    workers: int = Field(1, gt=0, description="data-parallel training processes (Ray Train); 1 trains in-process")

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value.lower() not in list_optimizers():
            raise ValueError(f"unknown optimizer {value!r}; expected a timm optimizer such as adamw, sgd, lamb")
        return value.lower()


class SupernetConfig(TrainingConfig):
    """Weight-sharing supernet training."""

    sampling: Literal["uniform", "sandwich"] = Field(
        "sandwich", description="largest + smallest + random arch per step (ranks best, README), or one random arch "
                                "(a third of the cost)")
    distillation: bool = Field(
        False, description="in-place distillation: the largest arch learns from labels, the sampled archs from its "
                           "soft predictions (trains the largest arch every step)")
    widest_first_epochs: int = Field(
        0, ge=0, description="progressive shrinking: the first epochs sample only each stage's largest expert sets")
    tau: float = Field(1.0, gt=0, description="router softmax temperature")
    gumbel: bool = Field(False, description="Gumbel noise for hard routing during training")
    bn_calibration_batches: int = Field(20, gt=0, description="ResNet: batches to re-estimate BN statistics per arch")

    @model_validator(mode="after")
    def _shrink_within_epochs(self):
        if self.widest_first_epochs >= self.epochs:
            raise _field_error("widest_first_epochs", f"{self.widest_first_epochs} leaves none of the {self.epochs} "
                                                      "epochs to train the smaller expert sets")
        return self


class SearchConfig(_Section):
    engine: Literal["ray", "nni"] = "ray"
    algorithm: str = "nsga2"
    num_trials: int = Field(100, gt=0)
    seed: Optional[int] = Field(None, description="default: the file's seed")
    objectives: List[Literal["accuracy", "latency_ms", "params", "flops"]] = Field(
        ["accuracy", "latency_ms"], min_length=1)
    constraints: Dict[Literal["latency_ms", "params", "flops"], float] = Field(
        default_factory=dict, description="upper bounds, e.g. {latency_ms: 5.0}")
    evaluation: Literal["oneshot", "standalone"] = "oneshot"
    standalone_epochs: int = Field(3, gt=0, description="standalone mode: epochs per trial (ASHA stops poor ones)")
    standalone_workers: int = Field(
        1, gt=0, description="standalone mode: Ray Train workers each trial trains on; 1 trains in the trial's process")
    concurrency: Optional[int] = Field(None, gt=0, description="parallel trials; default: from the trials' resources")
    gpus_per_trial: Optional[float] = Field(
        None, ge=0, description="Ray engine: GPUs each trial requests (fractions share one); default: on a CUDA "
                                "device 1 per standalone trial, 0.25 per one-shot trial, else 0")
    eval_images: Optional[int] = Field(None, gt=0, description="validation images per candidate; default: all")
    rank_check: int = Field(0, ge=0, description="after a one-shot search, train this many archs spread over the "
                                                  "front standalone and report how well one-shot accuracy ranked them")

    @model_validator(mode="after")
    def _known_algorithm(self):
        if self.algorithm not in ALGORITHMS[self.engine]:
            raise _field_error("algorithm", f"unknown {self.engine} algorithm {self.algorithm!r}; "
                                            f"expected one of {', '.join(ALGORITHMS[self.engine])}")
        if any(v <= 0 for v in self.constraints.values()):
            raise _field_error("constraints", "bounds must be positive")
        if self.standalone_workers > 1 and self.engine != "ray":
            raise _field_error("standalone_workers", f"{self.standalone_workers} needs the ray engine (NNI trains "
                                                     "its trials one by one in this process)")
        return self


class LatencyConfig(_Section):
    backend: Literal["torch", "onnxruntime"] = Field(
        "torch", description="what runs the deploy network while it is timed: eager PyTorch or ONNX Runtime")
    mode: Literal["measure", "predict"] = Field(
        "predict", description="measure every candidate, or predict from a per-layer lookup table")
    device: Device = Field("cpu", description="cpu, cuda, cuda:N or auto")
    batch_size: int = Field(1, gt=0)
    threads: Optional[int] = Field(None, gt=0, description="CPU threads while timing; default: all")
    channels_last: bool = False
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    rounds: int = Field(75, gt=1, description="timed rounds of at least 10 ms each")
    max_spread: float = Field(0.25, gt=0, description="re-measure when (p90 - p10) / median exceeds this")
    statistic: Literal["p10", "median"] = Field(
        "p10", description="latency of an arch: p10 of the rounds (repeats on a shared machine) or their median")

    @model_validator(mode="after")
    def _backend_dtype(self):
        if self.backend == "onnxruntime" and self.dtype != "float32":
            raise _field_error("dtype", f"the onnxruntime backend times float32 graphs, not {self.dtype}")
        return self


class FinalistsConfig(TrainingConfig):
    """Which Pareto archs become finalists, and how they are fine-tuned from supernet weights."""

    top_k: int = Field(3, ge=0, description="finalists spread along latency on the Pareto front")
    latency_budgets: Optional[List[float]] = Field(None, description="instead: best accuracy under each budget")
    seeds: int = Field(1, ge=1, description="fine-tune each finalist and train each baseline this many times")
    epochs: int = Field(5, ge=0)
    lr: float = Field(5e-4, gt=0)
    warmup_epochs: int = Field(0, ge=0)


class ExportConfig(_Section):
    onnx: bool = Field(False, description="also write model.onnx of each finalist's deploy form")


class SpaceFile(_Section):
    """A whole space file."""

    name: Optional[str] = Field(None, description="default run name")
    seed: int = 0
    device: Device = Field("auto", description="training device: auto, cpu, cuda or cuda:N")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    space: SpaceConfig = SpaceConfig()
    supernet: SupernetConfig = SupernetConfig()
    search: SearchConfig = SearchConfig()
    latency: LatencyConfig = LatencyConfig()
    finalists: FinalistsConfig = FinalistsConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _stage_count(self):
        wanted = self.model.registered.num_stages
        if len(self.space.stages) not in (1, wanted):
            raise _field_error("space.stages", f"expected 1 entry (for all stages) or {wanted} ({self.model.family} "
                                               f"has {wanted} stages), got {len(self.space.stages)}")
        return self

    @model_validator(mode="after")
    def _runs(self):
        from .search_space import SearchSpace  # it builds on this module

        try:
            space = SearchSpace(self)
        except ValueError as err:
            raise _field_error("space", str(err)) from None
        known = self.data.known_classes()
        conflict = _class_conflict(self, known)
        if conflict:
            raise _field_error("model.num_classes", conflict)
        _check_supernet(space, self.model.num_classes or known or 10)  # any head shows what the body takes
        return self

    @property
    def stage_spaces(self) -> Tuple[StageSpace, ...]:
        stages = self.space.stages
        return tuple(stages) * self.model.registered.num_stages if len(stages) == 1 else tuple(stages)


def check_dataset_classes(space: SpaceFile, found: int, source: str) -> None:
    """For datasets that tell their classes only once opened (timm's): run calls this before the run exists."""
    conflict = _class_conflict(space, found)
    if conflict:
        raise SpaceFileError(f"{source}: model.num_classes: {conflict}")


def _class_conflict(space: SpaceFile, found: Optional[int]) -> Optional[str]:
    wanted = space.model.num_classes
    if found and wanted and found != wanted:
        return f"{wanted} contradicts the {found} classes of {space.data.dataset}; leave it out to use the dataset's"
    return None


def _check_supernet(space, num_classes: int) -> None:
    """Build the supernet on the meta device and pass a batch through it in training mode, as run will."""
    model_config, image_size = space.config.model, space.config.data.image_size
    try:
        with torch.device("meta"):
            model = space.build_supernet(num_classes)
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as err:
        raise _field_error(_blame(space, num_classes, err),
                           f"timm cannot build {model_config.timm_name} with these arguments: {first_line(err)}")
    params = sum(p.numel() for p in model.parameters())
    if params > MAX_PARAMS:
        raise _field_error("model", f"the supernet would have {params:,} parameters, above the limit of "
                                    f"{MAX_PARAMS:,} (ConvNeXt-XXLarge has 846 M); lower dims, depths or kernels")
    try:
        with torch.no_grad():
            model.train()(torch.zeros(2, 3, image_size, image_size, device="meta"))
    except (RuntimeError, ValueError) as err:
        if "size" in str(err):  # downsampled below the kernel or to nothing
            raise _field_error("data.image_size", f"{image_size} px images are too small for {model_config.timm_name} "
                                                  f"with these depths and model args: {first_line(err)}")
        raise _field_error("model.args" if model_config.args else "model",
                           f"a batch of 3-channel {image_size} px images does not pass through "
                           f"{model_config.timm_name} with these arguments: {first_line(err)}")


def _blame(space, num_classes: int, err: Exception) -> str:
    """The field a failed build is due to: the unknown model.args key, model.args, or else model."""
    unknown = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    if unknown and unknown.group(1) in space.config.model.args:
        return f"model.args.{unknown.group(1)}"
    if not space.config.model.args:
        return "model"
    plain = space.config.model.model_copy(update={"args": {}})
    try:
        with torch.device("meta"):
            type(space)(space.config.model_copy(update={"model": plain})).build_supernet(num_classes)
    except Exception:  # noqa: BLE001 - without the args it fails too: the args are not the (only) cause
        return "model"
    return "model.args"


def _field_error(field: str, message: str) -> ValueError:
    """A section-level check that blames one field (pydantic would blame the whole section)."""
    return ValueError(f"@{field}@ {message}")


def _yaml_path(loc) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _describe(error: dict, one_entry_for_all: bool) -> str:
    loc = list(error["loc"])
    if one_entry_for_all and loc[:3] == ["space", "stages", 0]:
        loc = ["space", *loc[3:]]  # the user wrote the stage fields directly under space
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if message.startswith("@"):
        field, _, message = message[1:].partition("@ ")
        loc += field.split(".")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
        parent = SpaceFile
        for part in loc[:-1]:
            parent = _field_type(parent, part)
        if parent is not None:
            message += f"; expected one of {', '.join(parent.model_fields)}"
    elif error["type"] not in ("value_error", "missing") and not isinstance(error.get("input"), (dict, list)):
        message += f" (got {error['input']!r})"
    return f"{_yaml_path(loc)}: {message}"


def _field_type(model, name):
    if model is None or isinstance(name, int):
        return model
    field = getattr(model, "model_fields", {}).get(name)
    if field is None:
        return None
    annotation = field.annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def parse_space(data: Any, source: str = "space file") -> SpaceFile:
    """Validate already-loaded YAML data; raises SpaceFileError with one line per problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpaceFileError(f"{source}: expected a mapping of sections (model, data, space, ...)")
    try:
        return SpaceFile.model_validate(data)
    except ValidationError as err:
        space = data.get("space")
        one_entry_for_all = isinstance(space, dict) and "stages" not in space
        raise SpaceFileError("\n".join(f"{source}: {_describe(e, one_entry_for_all)}" for e in err.errors())) from None


def load_space(path: Union[str, Path]) -> SpaceFile:
    """Read and validate a space file; every failure is a SpaceFileError naming the file.

    A space file is a few kilobytes of hand-written YAML, so anything else (binary, another
    encoding, megabytes, deep nesting, aliases that expand exponentially) is refused before
    it is parsed or built, in bounded time and memory.
    """
    path = Path(path)
    return parse_space(_read_yaml(path, read_text(
        path, max_bytes=MAX_SPACE_FILE_BYTES, what="a space file (a space file is a few KB of YAML)",
        hint="save it as UTF-8", error=SpaceFileError)), str(path))


def _read_yaml(path: Path, text: str) -> Any:
    try:
        _check_shape(text)
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceFileError(f"{path}:{where}: not valid YAML: {problem}") from None
    except ValueError as err:  # a scalar YAML accepts but Python refuses, e.g. an integer of 5,000 digits
        raise SpaceFileError(f"{path}: a value Python cannot hold: {str(err).split(';')[0]}") from None


class _ShapeError(yaml.MarkedYAMLError):
    pass


def _check_shape(text: str) -> None:
    """Walk the YAML event stream (libyaml, no objects built) and refuse deep nesting and alias bombs.

    An alias counts as a copy of what its anchor names, so the limits hold for the data as
    Python code will walk it; aliases that share a stage definition stay allowed.
    """
    anchored = {}  # anchor -> (values, depth) of the node it names
    open_nodes = []  # per open collection: [anchor, values in it, depth below it]
    total = 0  # values so far, aliases expanded
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append([event.anchor, 1, 0])
            anchor, nodes, depth, added = None, 0, 0, 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, nodes, depth = open_nodes.pop()
            added = 0  # its values were counted as they came
        elif isinstance(event, yaml.AliasEvent):
            if any(frame[0] == event.anchor for frame in open_nodes):
                raise _ShapeError(problem=f"alias *{event.anchor} is inside the node it names (a cycle)",
                                  problem_mark=event.start_mark)
            anchor, (nodes, depth) = None, anchored.get(event.anchor, (1, 0))
            added = nodes
        elif isinstance(event, yaml.ScalarEvent):
            anchor, nodes, depth, added = event.anchor, 1, 0, 1
        else:
            continue
        total += added
        if total > MAX_YAML_NODES or len(open_nodes) + depth > MAX_YAML_DEPTH:
            problem = (f"more than {MAX_YAML_NODES:,} values" if total > MAX_YAML_NODES
                       else f"nested deeper than {MAX_YAML_DEPTH} levels")
            if isinstance(event, yaml.AliasEvent):
                problem += f" once alias *{event.anchor} is expanded"
            raise _ShapeError(problem=problem + " (the limit for a space file)", problem_mark=event.start_mark)
        if anchor:
            anchored[anchor] = (nodes, depth)
        if nodes and open_nodes:
            open_nodes[-1][1] += nodes
            open_nodes[-1][2] = max(open_nodes[-1][2], depth + 1)


def dump_space(space: SpaceFile) -> str:
    """The resolved space as YAML (every default filled in), e.g. for the run's snapshot."""
    return yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False)
