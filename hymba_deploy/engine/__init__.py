"""Engine builds for GPU targets: TensorRT 10/11 and TensorRT-RTX through one Polygraphy code path."""

from .backends import BACKENDS, TARGETS, backend_available
from .build import build, find_graphs

__all__ = ["BACKENDS", "TARGETS", "backend_available", "build", "find_graphs"]
