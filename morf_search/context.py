"""RunContext: what every phase, trial and finalist of one run shares, built once per process.

Built from the run directory (its space snapshot and manifest), it holds the config, the
search space, the device, the data splits and class names, and, on first use, the
validation and BatchNorm-calibration batches, the trained supernet, the one-shot evaluator,
the latency estimator and the trial runner. Phases, engines and finalists take it instead
of rebuilding any of these. Pickled (Ray ships it to trial workers) it travels as its run
directory's path (with the datasets and the model family given from Python, if any), and
each worker process opens it once.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import timm
import torch
from torch.utils.data import DataLoader

from .core.device import resolve_device
from .core.fileio import load_weights
from .latency import estimator
from .latency.setup import LatencySetup
from .models.registry import ModelFamily, register_family
from .rundir import RunDir
from .search.runner import TrialRunner
from .space.search_space import SearchSpace
from .training.data import CustomData, DataSplits, load_splits, make_loader
from .training.evaluate import Batches, OneShotEvaluator, cache_batches
from .training.supernet import SuperNet

_OPEN: Dict[str, "RunContext"] = {}
FamilyCode = Tuple[ModelFamily, Dict[str, Callable]]  # a family given from Python and its timm entrypoints


class RunContext:
    """One run's shared state; cheap parts at once, expensive ones on first use.

    ``data`` holds the datasets of a ``data.dataset: custom`` run (given from Python).
    """

    def __init__(self, run: RunDir, data: Optional[CustomData] = None):
        self.run = run
        self.data = data
        self.config = run.load_space()
        self.space = SearchSpace(self.config)

    @classmethod
    def open(cls, path: Path, data: Optional[CustomData] = None) -> "RunContext":
        """This process's context for the run at ``path`` (trial workers reuse it across trials)."""
        key = str(Path(path).resolve())
        if key not in _OPEN or (data is not None and _OPEN[key].data is None):
            _OPEN[key] = cls(RunDir.open(Path(key)), data)
        return _OPEN[key]

    def __reduce__(self):
        return reopen, (str(self.run.path.resolve()), self.data, self._family_code())

    def _family_code(self) -> Optional[FamilyCode]:
        """A family registered from Python travels with its entrypoints (a worker has not imported it)."""
        family = self.space.family
        if family.module.startswith(f"{__package__}."):
            return None
        return family, {name: timm.models.model_entrypoint(name) for name in family.entrypoints.values()}

    @cached_property
    def device(self) -> torch.device:
        """Resolved on first use, so that a Ray trial can first hide the GPUs it was not given."""
        return resolve_device(self.config.device)

    # -- data ---------------------------------------------------------------------------------
    @cached_property
    def splits(self) -> DataSplits:
        return load_splits(self.config.data, custom=self.data)

    @property
    def classes(self) -> List[str]:
        return self.splits.classes

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes or self.splits.num_classes

    def train_loader(self, seed: Optional[int] = None) -> DataLoader:
        """A fresh, seeded loader over the training split (each training run reseeds it per epoch)."""
        data = self.config.data
        return make_loader(self.splits.train, data.batch_size, data.workers, shuffle=True,
                           seed=self.config.seed if seed is None else seed, drop_last=True)

    @cached_property
    def val_batches(self) -> Batches:
        """The validation images every candidate, reference and finalist is scored on (``search.eval_images``)."""
        data = self.config.data
        return cache_batches(make_loader(self.splits.val, data.batch_size, data.workers, shuffle=False,
                                         limit=self.config.search.eval_images))

    @cached_property
    def calibration_batches(self) -> Batches:
        """Training images that re-estimate BatchNorm statistics per arch; none for families without BatchNorm."""
        if not self.space.family.uses_batchnorm:
            return []
        data = self.config.data
        return cache_batches(make_loader(self.splits.calibration, data.batch_size, data.workers, shuffle=True,
                                         seed=self.config.seed),
                             max_batches=self.config.supernet.bn_calibration_batches)

    # -- models ---------------------------------------------------------------------------------
    def new_supernet(self) -> SuperNet:
        """A freshly initialized supernet (seeded), which becomes this context's once trained."""
        torch.manual_seed(self.config.seed)
        supernet = SuperNet(self.space, self.num_classes, self.device)
        self.__dict__["supernet"] = supernet
        self.__dict__.pop("evaluator", None)
        return supernet

    @cached_property
    def supernet(self) -> Optional[SuperNet]:
        """The trained supernet from the run directory, or None for a run without one (standalone search)."""
        if not self.run.verify(self.run.supernet_weights).is_file():
            return None
        supernet = SuperNet(self.space, self.num_classes, self.device)
        supernet.model.load_state_dict(load_weights(self.run.supernet_weights, self.device))
        return supernet

    @cached_property
    def evaluator(self) -> Optional[OneShotEvaluator]:
        supernet = self.supernet
        if supernet is None:
            return None
        return OneShotEvaluator(supernet, self.val_batches, self.calibration_batches, self.device)

    # -- cost and trials ----------------------------------------------------------------------
    @cached_property
    def latency_setup(self) -> LatencySetup:
        return estimator.latency_setup(self.space)

    @cached_property
    def latency(self) -> estimator.Estimator:
        return estimator.latency_estimator(self.space)

    def arch_latency(self, arch) -> float:
        """The estimated latency (ms) of ``arch``'s deploy form, as the search ranks it (cached per arch)."""
        estimates = self.__dict__.setdefault("_arch_latency", {})
        if arch not in estimates:
            estimates[arch] = self.latency(self.space.build_model(arch, self.num_classes, deploy=True).eval())
        return estimates[arch]

    @cached_property
    def runner(self) -> TrialRunner:
        return TrialRunner(self)


def reopen(path: str, data: Optional[CustomData] = None, family_code: Optional[FamilyCode] = None) -> RunContext:
    """Unpickling a context: this process's one for the run (a module function, pickled by reference)."""
    if family_code is not None:
        family, entrypoints = family_code
        register_family(family)
        for name, entrypoint in entrypoints.items():
            if not timm.is_model(name):
                timm.models.register_model(entrypoint)
    return RunContext.open(Path(path), data)
