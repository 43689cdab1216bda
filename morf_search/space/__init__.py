"""The search space: the space file's validated schema and the set of archs it allows.

``schema`` reads and validates a space file (every field defaulted, errors naming the field
by its YAML path), checking the model against the family registry; ``search_space`` turns it
into per-stage choices with size, sampling, enumeration and the space's base network.
"""
from .schema import SpaceFile, load_space, parse_space
from .search_space import SearchSpace

__all__ = ["SearchSpace", "SpaceFile", "load_space", "parse_space"]
