"""One exported graph in ONNX Runtime. Stock ONNX Runtime runs the `hymba` nodes through the model-local
function bodies the export ships; `providers` picks CPU or CUDA."""

from __future__ import annotations

import ast
import time
from pathlib import Path

from ..errors import HymbaDeployError
from .base import LAYER_OUTPUT, Runner

_SCOPES = "pkg.torch.onnx.name_scopes"


def layer_output_tensors(proto) -> dict[int, str]:
    """Decoder layer i -> the ONNX tensor holding its output hidden state.

    The exporter records each node's module path (`pkg.torch.onnx.name_scopes`); a decoder layer's
    output is the last residual Add directly in `model.model.layers.{i}` (`h + moe(...)`).
    """
    out = {}
    for node in proto.graph.node:
        if node.op_type != "Add":
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        if _SCOPES not in meta:
            continue
        scopes = ast.literal_eval(meta[_SCOPES])
        if len(scopes) == 5 and scopes[3].startswith("model.model.layers."):
            out[int(scopes[3].rsplit(".", 1)[1])] = node.output[0]
    return out


def with_layer_outputs(path: Path) -> tuple[bytes, dict[str, str]]:
    """The model at `path` with every decoder layer's output marked as a graph output."""
    import onnx
    proto = onnx.load(str(path))
    tensors = layer_output_tensors(proto)
    if not tensors:
        raise HymbaDeployError(f"{path}: no layer scopes in the node metadata (exported by another tool?); "
                               f"cannot mark per-layer outputs")
    existing = {o.name for o in proto.graph.output}
    renames = {}
    for i, tensor in sorted(tensors.items()):
        if tensor not in existing:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
        renames[tensor] = LAYER_OUTPUT.format(i)
    return proto.SerializeToString(), renames


CUDA_PROVIDER = "CUDAExecutionProvider"


def providers_for(device: str) -> list:
    """ONNX Runtime execution providers for `device` ("cpu", "cuda" or "cuda:N"). cuda: the CUDA provider with
    TF32 off (`use_tf32=0`; its default TF32 matmuls move fp32 logits ~1e-3 from the CPU provider's), then the
    CPU for what it lacks. HymbaDeployError when onnxruntime is missing, or for cuda when this onnxruntime has
    no CUDA provider (onnxruntime-gpu not installed); a CUDA provider that cannot start (no CUDA device) is
    refused when the session is made (`OnnxRuntimeRunner.activate`)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise HymbaDeployError(f"device {device!r}: ONNX Runtime runs on cpu or cuda (or cuda:N)")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    try:
        import onnxruntime as ort
    except ImportError:
        raise HymbaDeployError("ONNX Runtime is not installed: pip install onnxruntime-gpu (for cuda)") from None
    if CUDA_PROVIDER not in ort.get_available_providers():
        raise HymbaDeployError(f"ONNX Runtime on cuda needs onnxruntime-gpu: this onnxruntime {ort.__version__} has the "
                               f"providers {', '.join(ort.get_available_providers())} (pip uninstall onnxruntime; "
                               f"pip install onnxruntime-gpu)")
    return [(CUDA_PROVIDER, {"use_tf32": "0", "device_id": index or "0"}), "CPUExecutionProvider"]


def provider_name(provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


class OnnxRuntimeRunner(Runner):
    """`providers`: ONNX Runtime's list (names or (name, options)), e.g. `providers_for(device)`; the first is
    required to start (ONNX Runtime would fall back to the next silently)."""

    def __init__(self, path, providers=("CPUExecutionProvider",), capture_layers: bool = False,
                 threads: int | None = None, name: str | None = None):
        self.path = Path(path)
        super().__init__(name or f"onnxruntime-{self.path.stem}")
        self.providers, self.capture_layers, self.threads = list(providers), capture_layers, threads
        self.session, self._renames = None, {}

    def activate_impl(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise HymbaDeployError("ONNX Runtime is not installed: pip install onnxruntime") from None
        from ..engine.onnx_inputs import load_graph
        load_graph(self.path)                                  # readable, external weights inside its folder
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        model = str(self.path)
        if self.capture_layers:
            model, self._renames = with_layer_outputs(self.path)
            if len(model) > 2**31 - 2**24:                  # too big for bytes: go through a file
                raise HymbaDeployError("capture_layers needs a model under 2 GB")
        self.session = ort.InferenceSession(model, opts, providers=self.providers)
        wanted = provider_name(self.providers[0]) if self.providers else None
        if wanted and wanted not in self.session.get_providers():    # ONNX Runtime falls back silently
            self.session = None
            raise HymbaDeployError(f"{self.path}: ONNX Runtime could not start {wanted} (no CUDA device, or its CUDA "
                                   f"libraries are missing)")
        self._inputs = [i.name for i in self.session.get_inputs()]

    def deactivate_impl(self):
        self.session = None

    def input_names(self):
        return list(self._inputs)

    def infer_impl(self, feed_dict):
        feed = {n: feed_dict[n] for n in self._inputs}
        t0 = time.perf_counter()
        values = self.session.run(None, feed)
        self.inference_time = time.perf_counter() - t0
        names = [self._renames.get(o.name, o.name) for o in self.session.get_outputs()]
        return dict(zip(names, values))
