"""Numerical parity between any two runners (house rule 15): per-output metrics against per-dtype
tolerances (`compare`), multi-step stateful checks of whole graphs (`check`, the `check` command), and
naming the first layer that diverges (`localize`)."""

from .compare import TOLERANCES, compare_outputs, metrics

__all__ = ["TOLERANCES", "compare_outputs", "metrics"]
