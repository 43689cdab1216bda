"""The MoRF layer: receptive fields as experts, mixed into one kernel.

``experts`` is the expert value type (``3``, ``3d2``); ``kernels`` the pure tensor math
(placing, merging, per-sample and top-1 grouped convolution); ``routing`` the router and the
static/soft/hard weights; ``morf_conv`` the training form ``MoRFConv2d`` with its supernet
hook; ``deploy`` the inference form ``DynamicMoRFConv2d`` of routed layers (static layers
deploy to a plain ``nn.Conv2d``).
"""
from .deploy import DynamicMoRFConv2d
from .experts import Expert
from .morf_conv import MoRFConv2d, morf_layers, total_balance_loss
from .routing import ROUTING_MODES

__all__ = ["DynamicMoRFConv2d", "Expert", "MoRFConv2d", "ROUTING_MODES", "morf_layers", "total_balance_loss"]
