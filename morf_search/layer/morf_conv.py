"""MoRFConv2d: convolutions of several receptive fields as experts, mixed into one kernel.

The layer merges its active experts into a single kernel before convolving: one conv for
``static``; one batch-folded conv with per-sample kernels for ``soft``/``hard``. That costs
one convolution of the largest active size, except top-1 hard routing at inference, which
convolves each group of samples at its own expert's size (see ``kernels.top1_conv2d``), so
a sample routed to a 3x3 expert costs a 3x3 conv. ``fuse()`` returns the deploy form, which
``timm.utils.reparameterize_model`` swaps in.

Both forms are TorchScript-compatible: what ``forward`` reads is plain ints, strings, lists
and tensors (the experts' sizes and dilations as lists, the active experts as indices);
the ``Expert`` objects and the Python-only helpers stay out of the scripted graph.
"""
import math
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .deploy import DynamicMoRFConv2d, routing_repr
from .experts import Expert, ExpertLike, parse_experts
from .kernels import dynamic_conv2d, mix_static, stack_kernels
from .routing import (DYNAMIC_MODES, Router, check_routing, check_top_k, dynamic_weights, gumbel_perturb,
                      load_balance_loss)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


def router_hidden(in_channels: int, reduction: int) -> int:
    """Router width: ``in_channels / reduction``, at least 8 so tiny layers can still route."""
    return max(in_channels // reduction, 8)


@register_notrace_module  # FX feature extraction keeps it whole: its routing branches on the data
class MoRFConv2d(nn.Module):
    """Mixture-of-Receptive-Fields convolution.

    Args:
        in_channels, out_channels, stride, groups: as for ``nn.Conv2d`` (padding is 'same').
        kernel_sizes: the experts: odd kernel sizes, or ``'3d2'`` / ``(3, 2)`` for dilated ones.
        routing: ``static`` (learned per-channel weights), ``soft`` (per-sample softmax) or
            ``hard`` (per-sample top-k, straight-through gradient).
        top_k: experts each sample uses under ``hard`` routing.
        bias: one bias per expert (turn off when a norm follows and would cancel it).
        tau: softmax temperature of the router; the trainer may anneal it.
        gumbel: under ``hard`` routing in training, perturb logits with Gumbel noise so
            top-k samples experts instead of always taking the current best.
        routings: every mode ``set_active`` may switch to (a supernet passes all it searches);
            decides whether the layer owns static weights, a router, or both.
        router_reduction, router_act: width divisor and activation of the router's hidden layer.
    """

    # what TorchScript must not type: Python values that forward never reads
    __jit_ignored_attributes__ = ["experts", "routings", "router_act"]
    __jit_unused_properties__ = ["active_experts", "kernel_size"]
    last_balance_loss: Optional[torch.Tensor]  # a real annotation (no postponed evaluation here): script reads it

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_sizes: Iterable[ExpertLike],
            routing: str = "static",
            stride: int = 1,
            groups: int = 1,
            top_k: int = 1,
            bias: bool = True,
            tau: float = 1.0,
            gumbel: bool = False,
            routings: Optional[Sequence[str]] = None,
            router_reduction: int = 4,
            router_act: type = nn.ReLU,
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("stride", stride), ("groups", groups), ("router_reduction", router_reduction)):
            _check_positive_int(value, name)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups: {groups} must divide in_channels ({in_channels}) and out_channels ({out_channels})")
        if not tau > 0:
            raise ValueError(f"tau: must be positive, got {tau!r}")
        self.experts: Tuple[Expert, ...] = parse_experts(kernel_sizes, "kernel_sizes")
        self.expert_sizes: List[int] = [e.kernel_size for e in self.experts]
        self.expert_dilations: List[int] = [e.dilation for e in self.experts]
        check_routing(routing)
        self.routings = tuple(dict.fromkeys([routing, *(check_routing(r, "routings") for r in routings or ())]))
        check_top_k(top_k, len(self.experts))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.groups = stride, groups
        self.tau, self.gumbel = tau, gumbel
        self.router_reduction, self.router_act = router_reduction, router_act

        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(out_channels, in_channels // groups, e.kernel_size, e.kernel_size))
            for e in self.experts)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(out_channels)) for _ in self.experts) if bias else None
        num_experts = len(self.experts)
        self.static_logits = nn.Parameter(torch.zeros(num_experts, out_channels)) if "static" in self.routings else None
        self.router = None
        if any(r in DYNAMIC_MODES for r in self.routings):
            self.router = Router(in_channels, num_experts, router_hidden(in_channels, router_reduction), router_act)
        self.reset_parameters()

        self.active: List[int] = list(range(num_experts))
        self.routing, self.top_k = routing, top_k
        self.last_balance_loss: Optional[torch.Tensor] = None

    def reset_parameters(self):
        """Each expert starts as ``nn.Conv2d`` would; static weights start uniform."""
        for i, weight in enumerate(self.weights):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            if self.biases is not None:
                bound = 1 / math.sqrt(weight[0].numel())
                nn.init.uniform_(self.biases[i], -bound, bound)
        if self.static_logits is not None:
            nn.init.zeros_(self.static_logits)

    def __getstate__(self):
        # The stored loss belongs to one forward's autograd graph, which copies cannot carry
        # (timm's reparameterize_model deep-copies the model).
        return {**super().__getstate__(), "last_balance_loss": None}

    # -- supernet hook -------------------------------------------------------------------
    def set_active(self, experts: Optional[Iterable[ExpertLike]] = None, routing: Optional[str] = None,
                   top_k: Optional[int] = None) -> None:
        """Restrict the layer to a subset of its experts and/or switch routing; None keeps a setting.

        Inactive experts are left out of the merged kernel: they cost nothing and get no gradient.
        """
        active = self.active
        if experts is not None:
            wanted = parse_experts(experts, "experts")
            unknown = [str(e) for e in wanted if e not in self.experts]
            if unknown:
                raise ValueError(f"experts: {', '.join(unknown)} not among this layer's experts "
                                 f"({', '.join(map(str, self.experts))})")
            active = [self.experts.index(e) for e in wanted]
        routing = self.routing if routing is None else check_routing(routing)
        if routing not in self.routings:
            raise ValueError(f"routing: {routing!r} was not declared in this layer's routings {self.routings}")
        top_k = self.top_k if top_k is None else top_k
        if routing == "hard":
            check_top_k(top_k, len(active))
        self.active, self.routing, self.top_k = active, routing, top_k

    @property
    def active_experts(self) -> Tuple[Expert, ...]:
        return tuple(self.experts[i] for i in self.active)

    @property
    def kernel_size(self) -> int:
        """Side of the merged kernel: the largest span among the active experts."""
        return max(e.span for e in self.active_experts)

    # -- forward ----------------------------------------------------------------------------
    def _active_geometry(self) -> Tuple[List[int], List[int]]:
        """Kernel sizes and dilations of the active experts, in bank order."""
        return [self.expert_sizes[i] for i in self.active], [self.expert_dilations[i] for i in self.active]

    def _bank(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        weights: List[torch.Tensor] = [w for w in self.weights]
        sizes, dilations = self._active_geometry()
        bank = stack_kernels([weights[i] for i in self.active], sizes, dilations)
        bias_bank: Optional[torch.Tensor] = None
        if self.biases is not None:
            biases: List[torch.Tensor] = [b for b in self.biases]
            bias_bank = torch.stack([biases[i] for i in self.active])
        return bank, bias_bank

    def _active_rows(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        if len(self.active) == len(self.expert_sizes):
            return tensor
        return tensor.index_select(dim, torch.tensor(self.active, device=tensor.device))

    def _static_mix(self) -> torch.Tensor:
        logits = self.static_logits
        assert logits is not None, "a static layer has static logits"
        return F.softmax(self._active_rows(logits, 0), dim=0)

    def _router_logits(self, x: torch.Tensor) -> torch.Tensor:
        router = self.router
        assert router is not None, "a routed layer has a router"
        return self._active_rows(router(x), 1)

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample weights (B, active experts) of soft or hard routing, without Gumbel noise."""
        if self.routing not in DYNAMIC_MODES:
            raise ValueError(f"routing_weights: a {self.routing!r} layer does not route per input")
        return dynamic_weights(self._router_logits(x), self.routing, self.top_k, self.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bank, bias_bank = self._bank()
        if self.routing == "static":
            weight, bias = mix_static(bank, bias_bank, self._static_mix())
            return F.conv2d(x, weight, bias, self.stride, weight.shape[-1] // 2, 1, self.groups)
        logits = self._router_logits(x)
        if self.training and self.routing == "hard":
            self.last_balance_loss = load_balance_loss(logits, self.top_k)
            if self.gumbel:
                logits = gumbel_perturb(logits)
        sizes, dilations = self._active_geometry()
        return dynamic_conv2d(x, logits, self.routing, self.top_k, self.tau, bank, bias_bank, sizes, dilations,
                              self.stride, self.groups)

    @torch.no_grad()
    def extract_active(self) -> "MoRFConv2d":
        """A training-form layer holding only the active experts and the current routing.

        It inherits this layer's weights (experts, biases, the active rows of the static
        logits and of the router's last layer), so a supernet's sub-arch can be fine-tuned
        on its own and loads into ``create_model(..., arch=...)`` strictly.
        """
        weight = self.weights[0]
        layer = MoRFConv2d(
            self.in_channels, self.out_channels, self.active_experts, self.routing, stride=self.stride,
            groups=self.groups, top_k=self.top_k, bias=self.biases is not None, tau=self.tau, gumbel=self.gumbel,
            router_reduction=self.router_reduction, router_act=self.router_act).to(weight.device, weight.dtype)
        for slot, i in enumerate(self.active):
            layer.weights[slot].copy_(self.weights[i])
            if self.biases is not None:
                layer.biases[slot].copy_(self.biases[i])
        index = list(self.active)
        if layer.static_logits is not None:
            layer.static_logits.copy_(self.static_logits[index])
        if layer.router is not None:
            layer.router.fc1.load_state_dict(self.router.fc1.state_dict())
            layer.router.fc2.weight.copy_(self.router.fc2.weight[index])
            layer.router.fc2.bias.copy_(self.router.fc2.bias[index])
        return layer.train(self.training)

    # -- deploy -----------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The deploy form (timm's ``fuse`` convention: the caller swaps it in).

        ``static`` becomes a plain ``nn.Conv2d`` of the largest active size; ``soft``/``hard``
        become a ``DynamicMoRFConv2d`` holding only the router and the padded bank of active
        experts, with the temperature folded into the router's last layer.
        """
        bank, bias_bank = self._bank()
        factory = dict(device=bank.device, dtype=bank.dtype)
        if self.routing == "static":
            weight, bias = mix_static(bank, bias_bank, self._static_mix())
            conv = nn.Conv2d(self.in_channels, self.out_channels, weight.shape[-1], self.stride,
                             weight.shape[-1] // 2, groups=self.groups, bias=bias is not None, **factory)
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
            return conv.train(self.training)
        deploy = DynamicMoRFConv2d(
            self.in_channels, self.out_channels, self.active_experts, self.routing, self.top_k,
            stride=self.stride, groups=self.groups, bias=bias_bank is not None,
            router_hidden=self.router.fc1.out_features, router_act=self.router_act, **factory)
        index = list(self.active)
        deploy.router.fc1.load_state_dict(self.router.fc1.state_dict())
        deploy.router.fc2.weight.copy_(self.router.fc2.weight[index] / self.tau)
        deploy.router.fc2.bias.copy_(self.router.fc2.bias[index] / self.tau)
        deploy.bank.copy_(bank)
        if bias_bank is not None:
            deploy.bias_bank.copy_(bias_bank)
        return deploy.train(self.training)

    def extra_repr(self) -> str:
        experts = ",".join(str(e) for e in self.active_experts)
        return (f"{self.in_channels}, {self.out_channels}, experts=({experts}) of "
                f"({','.join(map(str, self.experts))}), "
                + routing_repr(self.routing, self.top_k, self.stride, self.groups))


def morf_layers(model: nn.Module):
    """Every MoRFConv2d in ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, MoRFConv2d)]


def total_balance_loss(model: nn.Module) -> Optional[torch.Tensor]:
    """Sum of the load-balancing losses left by the last training forward of hard-routed layers.

    Each layer's stored loss is consumed so a loss is never added twice; None when no layer
    routed hard in that forward.
    """
    losses = []
    for layer in morf_layers(model):
        if layer.last_balance_loss is not None:
            losses.append(layer.last_balance_loss)
            layer.last_balance_loss = None
    return torch.stack(losses).sum() if losses else None
