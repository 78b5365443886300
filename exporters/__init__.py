"""ONNX export of Hymba with `hymba` custom-op nodes (issue #3); see exporters/README.md.

Public API: `export` (what `hymba-deploy export` runs), `export_graph`, `strip_function_bodies`
(for the TensorRT build path), `register_schemas` (before `onnx.checker` / shape inference on an
exported file), `check_model`.
"""

from hymba_deploy.contract import DOMAIN, GRAPHS, OP_TYPES, OP_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION

from .manifest import MANIFEST
from .onnx_export import check_model, export, export_graph, strip_function_bodies
from .onnx_ops import register_schemas

__all__ = ["DOMAIN", "GRAPHS", "MANIFEST", "OP_TYPES", "OP_VERSION", "PLUGIN_NAMESPACE", "PLUGIN_VERSION",
           "check_model", "export", "export_graph", "register_schemas", "strip_function_bodies"]
