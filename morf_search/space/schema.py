"""The space file (space.yaml): a documented, validated schema with a default for every field.

A short file is a valid space; everything left out takes the defaults below. Invalid files
raise ``SpaceFileError`` whose lines each name the field by its YAML path and say what is
expected, so the command line can print them without a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from timm.optim import list_optimizers

from ..core.errors import UserError
from ..layer.experts import Expert
from ..layer.routing import ROUTING_MODES
from ..models.registry import ModelFamily, get_family, list_families

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # training/precision.py resolves them per device
EMBEDDED_MIN_IMAGE_SIZE = 24  # the embedded dataset's class is a 16 px displacement: it needs room for it
OBJECTIVES = {"accuracy": "max", "latency_ms": "min", "params": "min", "flops": "min"}
ALGORITHMS = {"ray": ("random", "tpe", "nsga2"), "nni": ("random", "evolution", "tpe", "grid")}
DATASET_FORMS = ("embedded", "cifar10:PATH", "cifar100:PATH", "imagefolder:PATH",
                 "a timm dataset name such as torch/cifar10:ROOT")
TIMM_DATASET_PREFIXES = ("torch/", "hfds/", "hfids/", "tfds/", "wds/")


class SpaceFileError(UserError):
    """An invalid space file: one line per problem, each naming the field by its YAML path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """The base network: a registered MoRF family and size, optionally reshaped."""

    family: str = Field("convnext", description="a registered model family: " + ", ".join(list_families()))
    size: str = "cifar"
    depths: Optional[Tuple[int, ...]] = Field(None, description="blocks per stage")
    dims: Optional[Tuple[int, ...]] = Field(None, description="widths per stage (ResNet: channels)")
    num_classes: Optional[int] = Field(None, gt=0, description="default: the dataset's class count")
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
    image_size: int = Field(32, gt=0)
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
        if value == "embedded":
            return value
        if kind in ("cifar10", "cifar100", "imagefolder"):
            if not path:
                raise ValueError(f"{kind} needs a path: {kind}:PATH")
            if not Path(path).expanduser().exists():
                raise ValueError(f"path {path!r} does not exist")
            return value
        if value.startswith(TIMM_DATASET_PREFIXES):
            return value
        raise ValueError(f"unknown dataset {value!r}; expected {', '.join(DATASET_FORMS)}")

    @model_validator(mode="after")
    def _embedded_size(self):
        if self.dataset == "embedded" and self.image_size < EMBEDDED_MIN_IMAGE_SIZE:
            raise _field_error("image_size", f"the embedded dataset needs at least {EMBEDDED_MIN_IMAGE_SIZE} px, "
                                             f"got {self.image_size}")
        return self


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
    workers: int = Field(1, gt=0, description="data-parallel training processes (Ray Train); 1 trains in-process")

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
    concurrency: Optional[int] = Field(None, gt=0, description="parallel trials; default: from available CPUs")
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
        return self


class LatencyConfig(_Section):
    backend: Literal["torch", "onnxruntime"] = Field(
        "torch", description="what runs the deploy network while it is timed: eager PyTorch or ONNX Runtime")
    mode: Literal["measure", "predict"] = Field(
        "predict", description="measure every candidate, or predict from a per-layer lookup table")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
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
    device: str = Field("auto", description="training device: auto, cpu, cuda or cuda:N")
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

    @property
    def stage_spaces(self) -> Tuple[StageSpace, ...]:
        stages = self.space.stages
        return tuple(stages) * self.model.registered.num_stages if len(stages) == 1 else tuple(stages)


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
    """Read and validate a space file; every failure is a SpaceFileError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpaceFileError(f"{path}: no such file") from None
    except OSError as err:
        raise SpaceFileError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceFileError(f"{path}:{where}: not valid YAML: {problem}") from None
    return parse_space(data, str(path))


def dump_space(space: SpaceFile) -> str:
    """The resolved space as YAML (every default filled in), e.g. for the run's snapshot."""
    return yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False)
