"""A built engine (TensorRT or TensorRT-RTX) through Polygraphy's `TrtRunner`. The engine and its sidecar
are checked first, and the plugin library loaded is `engine.artifact.plugin_library`'s (`--plugins` or the
project's own build, with the sha256 recorded at build time), never the path the sidecar names. Needs a
GPU the engine was built for."""

from __future__ import annotations

from pathlib import Path

from ..errors import HymbaDeployError
from .base import Runner


def engine_unavailable(engine, user_library=None) -> str | None:
    """None when this machine can run `engine` (a path to a .engine file), else the reason. An engine or
    sidecar that is missing or unreadable, or a `user_library` that is not the engine's, is an error
    (HymbaDeployError), not a reason."""
    from ..engine import artifact
    from ..engine.backends import backend_available, current_compute_capability
    info = artifact.read_engine(engine)
    lib, lib_reason = artifact.plugin_library(info, user_library)
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
    return lib_reason


class TensorRTRunner(Runner):
    def __init__(self, engine, name: str | None = None, user_library=None):
        self.engine = Path(engine)
        super().__init__(name or f"tensorrt-{self.engine.stem}")
        self.user_library = user_library
        self._runner = None

    def activate_impl(self):
        from ..engine import artifact, plugins
        from ..engine.backends import select_backend
        reason = engine_unavailable(self.engine, self.user_library)
        if reason:
            raise HymbaDeployError(f"cannot run {self.engine}: {reason}")
        info = artifact.read_engine(self.engine)
        lib, _ = artifact.plugin_library(info, self.user_library)
        be = select_backend(info["backend"])
        if lib is not None:
            plugins.load_library(be.trt, lib)
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
