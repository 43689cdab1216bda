"""Latency backends: what runs a deploy-form network while it is timed.

A backend prepares a network (or one unit of it) for a ``LatencySetup`` and returns a
zero-argument callable that runs one forward pass on a random batch; the harness times
that callable. ``torch`` runs the module eagerly (device, dtype, memory format and thread
count as the setup says); ``onnxruntime`` exports the module to ONNX and runs it in an
ONNX Runtime session with the setup's thread count, as a user deploying with ORT would.
A new backend is one class here and its name in ``BACKENDS`` (and in the schema's
``latency.backend`` choices).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
import torch.nn as nn

from ..core.errors import UserError
from ..models.onnx import onnx_bytes
from .setup import DTYPES, LatencySetup

Run = Callable[[], None]


class LatencyBackend:
    """Prepares a network for timing and describes what runs it."""

    name = ""

    def prepare(self, module: nn.Module, input_shape: Sequence[int], setup: LatencySetup) -> Run:
        """A callable running one forward of ``module`` (which the backend may move or convert in place)."""
        raise NotImplementedError

    def environment(self) -> Dict[str, str]:
        """Versions of what runs the network, for the measurement's environment record."""
        return {"backend": self.name}

    @staticmethod
    def example(input_shape: Sequence[int], setup: LatencySetup) -> torch.Tensor:
        return torch.randn(setup.batch_size, *input_shape)


class TorchBackend(LatencyBackend):
    """Eager PyTorch under ``inference_mode``."""

    name = "torch"

    def prepare(self, module, input_shape, setup):
        dtype = DTYPES[setup.dtype]
        module = module.to(device=setup.device, dtype=dtype).eval()
        x = self.example(input_shape, setup).to(device=setup.device, dtype=dtype)
        if setup.channels_last:
            module = module.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

        def run():
            with torch.inference_mode():
                module(x)
        return run


class OnnxRuntimeBackend(LatencyBackend):
    """An ONNX Runtime session on the module's ONNX graph (float32; ORT chooses its own memory layout)."""

    name = "onnxruntime"

    def prepare(self, module, input_shape, setup):
        ort = _onnxruntime()
        if setup.dtype != "float32":
            raise UserError(f"latency.dtype: the onnxruntime backend times float32 graphs, not {setup.dtype}")
        example = self.example(input_shape, setup)
        graph = onnx_bytes(module.to(device="cpu", dtype=torch.float32).eval(), example)
        options = ort.SessionOptions()
        options.intra_op_num_threads = setup.threads_used
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        providers = ["CUDAExecutionProvider"] if torch.device(setup.device).type == "cuda" else []
        session = ort.InferenceSession(graph, options, providers=providers + ["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: example.numpy()}

        def run():
            session.run(None, feed)
        return run

    def environment(self):
        return {"backend": self.name, "onnxruntime": _onnxruntime().__version__}


def _onnxruntime():
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise UserError("latency.backend: onnxruntime is not installed; install it with: pip install -e '.[onnx]'"
                        ) from None
    return onnxruntime


BACKENDS = {backend.name: backend for backend in (TorchBackend, OnnxRuntimeBackend)}


def get_backend(name: str) -> LatencyBackend:
    if name not in BACKENDS:
        raise UserError(f"latency.backend: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return BACKENDS[name]()
