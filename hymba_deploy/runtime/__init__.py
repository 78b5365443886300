"""Runners with Polygraphy's contract (house rule 15): `activate()`, `infer(feed) -> {name: array}`,
`deactivate()`, `inference_time` / `last_inference_time()`, usable as context managers.

    TorchRunner        the PyTorch reference (`PrefillGraph`/`DecodeGraph` around the model), CPU or CUDA
    OnnxRuntimeRunner  one exported graph in ONNX Runtime (the `hymba` function bodies, or any provider)
    TensorRTRunner     one built engine (TensorRT or TensorRT-RTX, through Polygraphy's TrtRunner)
    ServingRunner      the serving runtime (`hymba_deploy.serving`), e.g. on the cuda kernels

Every runner of a graph takes and returns the exported graph's tensor names (`input_ids` with `lengths`
(prefill) or `positions` (decode), `past.*`, `conv_state.*`, `ssm_state.*` -> `logits`, `present.*`;
`contract.GRAPH_INPUTS`, exporters/README.md); feed entries a runner does not take are ignored. With `capture_layers=True`, torch and ONNX
Runtime runners also return each decoder layer's output hidden state as `layer.{i}.hidden`, which
`hymba_deploy.parity` uses to name the first layer that diverges.
"""

from .base import Runner
from .onnxruntime_runner import OnnxRuntimeRunner
from .serving_runner import ServingRunner
from .tensorrt_runner import TensorRTRunner
from .torch_runner import TorchRunner

__all__ = ["OnnxRuntimeRunner", "Runner", "ServingRunner", "TensorRTRunner", "TorchRunner"]
