"""A torch module to export, and what runs an exported one, whichever the backend."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class Graph:
    """A module with example inputs; ``dynamic_axes`` names the axes that vary (batch, length)."""

    name: str
    module: torch.nn.Module
    example: tuple[torch.Tensor, ...]
    inputs: Sequence[str]
    outputs: Sequence[str]
    dynamic_axes: Mapping[str, Mapping[int, str]]


class Session(Protocol):
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs, in order, for inputs keyed by name."""
        ...
