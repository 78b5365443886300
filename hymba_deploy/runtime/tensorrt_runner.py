"""A built engine (TensorRT or TensorRT-RTX) through Polygraphy's `TrtRunner`, after loading the plugin
library recorded in the engine's sidecar. Needs a GPU the engine was built for."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import HymbaDeployError
from .base import Runner


def engine_unavailable(engine) -> str | None:
    """None when this machine can run `engine` (a path to a .engine file), else the reason."""
    from ..engine.backends import backend_available, current_compute_capability
    engine = Path(engine)
    sidecar = engine.with_name(engine.name.removesuffix(".engine") + ".engine.json")
    if not engine.is_file() or not sidecar.is_file():
        return f"{engine} (and its .engine.json sidecar) not found; build it with `hymba-deploy build`"
    from ..engine.build import read_sidecar
    info = read_sidecar(engine)
    reason = backend_available(info["backend"])
    if reason:
        return reason
    cc = current_compute_capability()
    if cc is None:
        return "no CUDA GPU on this machine"
    if info["backend"] == "tensorrt-rtx" and (cc[0], cc[1]) == (9, 0):
        return "TensorRT-RTX engines do not run on compute capability 9.0 (H100/H200)"
    if info.get("compute_capability") and info["compute_capability"] != f"{cc[0]}.{cc[1]}":
        return f"the engine targets compute capability {info['compute_capability']}, this GPU is {cc[0]}.{cc[1]}"
    return None


class TensorRTRunner(Runner):
    def __init__(self, engine, name: str | None = None):
        self.engine = Path(engine)
        super().__init__(name or f"tensorrt-{self.engine.stem}")
        self._runner = None

    def activate_impl(self):
        reason = engine_unavailable(self.engine)
        if reason:
            raise HymbaDeployError(f"cannot run {self.engine}: {reason}")
        from ..engine import plugins
        from ..engine.backends import select_backend
        info = json.loads(self.engine.with_name(self.engine.name.removesuffix(".engine") + ".engine.json").read_text())
        be = select_backend(info["backend"])
        lib = (info.get("plugin_library") or {}).get("path")
        if lib:
            plugins.load_library(be.trt, Path(lib))
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        self._inputs = [t["name"] for t in info["io"]["inputs"]]
        self._runner = TrtRunner(EngineFromBytes(self.engine.read_bytes()))
        self._runner.activate()

    def deactivate_impl(self):
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def input_names(self):
        return list(self._inputs)

    def infer_impl(self, feed_dict):
        out = self._runner.infer({n: feed_dict[n] for n in self._inputs})
        self.inference_time = self._runner.last_inference_time()
        return dict(out)
