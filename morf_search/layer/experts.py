"""Receptive-field experts: an odd kernel size and a dilation, written ``3`` or ``3d2``.

One small value type is shared by the layer, the Arch grammar and the search space so
that every place parses, validates and prints experts the same way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Tuple, Union

ExpertLike = Union["Expert", int, str, Tuple[int, int]]

_EXPERT_RE = re.compile(r"^(\d+)(?:d(\d+))?$")


@dataclass(frozen=True, order=True)
class Expert:
    """A convolution expert: ``kernel_size`` taps per side, spaced ``dilation`` apart."""

    kernel_size: int
    dilation: int = 1

    def __post_init__(self):
        if isinstance(self.kernel_size, bool) or not isinstance(self.kernel_size, int):
            raise ValueError(f"kernel size must be an integer, got {self.kernel_size!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"kernel size {self.kernel_size} is not a positive odd integer (1, 3, 5, ...): "
                "'same' padding needs a centre tap")
        if isinstance(self.dilation, bool) or not isinstance(self.dilation, int) or self.dilation < 1:
            raise ValueError(f"dilation must be a positive integer, got {self.dilation!r}")

    @property
    def span(self) -> int:
        """Effective kernel size: the side of the window the dilated kernel covers."""
        return self.dilation * (self.kernel_size - 1) + 1

    def __str__(self) -> str:
        return str(self.kernel_size) if self.dilation == 1 else f"{self.kernel_size}d{self.dilation}"

    @classmethod
    def parse(cls, value: ExpertLike) -> "Expert":
        """Accept an Expert, an int kernel size, a ``(k, d)`` pair or a string ``'5'`` / ``'3d2'``."""
        if isinstance(value, Expert):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(*value)
        if isinstance(value, str):
            match = _EXPERT_RE.match(value.strip())
            if match:
                return cls(int(match.group(1)), int(match.group(2) or 1))
        raise ValueError(
            f"cannot read expert {value!r}: expected an odd kernel size like 3 or '5', "
            "or a dilated kernel like '3d2' (kernel 3, dilation 2)")


def parse_experts(values: Iterable[ExpertLike], name: str = "kernel_sizes") -> Tuple[Expert, ...]:
    """Parse, de-duplicate and sort an expert set; errors name the argument ``name``."""
    if isinstance(values, (str, int)) or isinstance(values, Expert):
        values = [values]
    try:
        experts = tuple(sorted({Expert.parse(v) for v in values}))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name}: {err}") from None
    if not experts:
        raise ValueError(f"{name}: the expert set is empty; give at least one odd kernel size")
    return experts
