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


class OnnxRuntimeRunner(Runner):
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
