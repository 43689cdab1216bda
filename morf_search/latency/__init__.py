"""Latency: how fast a deploy-form network runs where it will be deployed, measured or predicted.

``harness`` times callables side by side and describes the machine; ``setup`` states what a
number depends on; ``backends`` prepare a network for timing (eager torch, ONNX Runtime);
``measurement`` times whole networks; ``table`` is the per-unit lookup table that predicts an
arch from its parts; ``estimator`` is the latency a search ranks by; ``cost`` counts
parameters and FLOPs.
"""
from .backends import BACKENDS, LatencyBackend, get_backend
from .cost import count_flops, count_params
from .measurement import Measurement, measure, measure_side_by_side
from .setup import LatencySetup
from .table import LatencyTable

__all__ = ["BACKENDS", "LatencyBackend", "LatencySetup", "LatencyTable", "Measurement", "count_flops", "count_params",
           "get_backend", "measure", "measure_side_by_side"]
