"""The runner contract shared with Polygraphy's `BaseRunner` (activate / infer / deactivate)."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from ..errors import HymbaDeployError

LAYER_OUTPUT = "layer.{}.hidden"


class Runner:
    """Subclasses implement `activate_impl`, `infer_impl(feed) -> {name: array}`, `deactivate_impl`,
    and may set `self.inference_time` inside `infer_impl` (else the wall time of the call is used)."""

    def __init__(self, name: str):
        self.name = name
        self.is_active = False
        self.inference_time = None

    # ---- Polygraphy's interface ---------------------------------------------------------------
    def activate(self):
        if self.is_active:
            return self
        self.activate_impl()
        self.is_active = True
        return self

    def deactivate(self):
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feed_dict: dict, check_inputs: bool = True) -> "OrderedDict[str, np.ndarray]":
        if not self.is_active:
            raise HymbaDeployError(f"runner {self.name}: call activate() before infer()")
        if check_inputs:
            missing = [n for n in self.input_names() if n not in feed_dict]
            if missing:
                raise HymbaDeployError(f"runner {self.name}: inputs missing from the feed: {', '.join(missing[:5])}")
        self.inference_time = None
        t0 = time.perf_counter()
        out = self.infer_impl(feed_dict)
        if self.inference_time is None:
            self.inference_time = time.perf_counter() - t0
        return OrderedDict(out)

    def last_inference_time(self) -> float | None:
        return self.inference_time

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    # ---- to implement -------------------------------------------------------------------------
    def input_names(self) -> list[str]:
        return []

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def infer_impl(self, feed_dict: dict) -> dict:
        raise NotImplementedError
