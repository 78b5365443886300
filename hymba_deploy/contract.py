"""The contract: every name and number that the PyTorch ops, the exported ONNX nodes, the TensorRT plugins
and the runtimes must agree on, written once. Everything else reads it from here.

    ONNX nodes        DOMAIN, OP_VERSION, OP_TYPES, ATTRIBUTES (name -> default, the type follows the
                      default), PLUGIN_ATTRIBUTES; the plugin creators' fields are exactly ATTRIBUTES
                      (tests/test_plugins_cpu.py checks both directions against the compiled creators)
    plugins           PLUGIN_VERSION, PLUGIN_NAMESPACE, LAYOUT_VERSION (= kLAYOUT_VERSION in
                      plugins/common/plugin_common.h), the sources shipped with the package (plugin_sources)
    op semantics      SOFTPLUS_THRESHOLD (the SelectiveScan attribute's default, used by every implementation)
    exported graphs   GRAPHS and graph_file(), the per-row inputs (LENGTHS_INPUT, POSITIONS_INPUT, GRAPH_INPUTS),
                      METADATA_PREFIX and the metadata keys every graph carries
    cache I/O         names and shapes per layer kind: `HybridMambaAttentionDynamicCache.state_names`,
                      `io_pairs`, `state_shape` (hymba_deploy/cache.py; they need the config)

No imports beyond the standard library: every layer of the package may read this module.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# ---- the custom ops -----------------------------------------------------------------------------
DOMAIN = "hymba"                    # ONNX domain of the nodes; also the namespace of torch.ops.hymba.*
# Version 2 (issue #14): WindowedAttention takes a 4th input, kv_lengths (B,) int32, the valid keys per row.
# Graphs and engines of an older version are refused (re-export / rebuild); one number moves all three ops.
OP_VERSION = 2                      # the `hymba` opset version of the nodes
OP_TYPES = ("SelectiveScan", "CausalConv1d", "WindowedAttention")

# ---- the TensorRT plugins -----------------------------------------------------------------------
PLUGIN_VERSION = str(OP_VERSION)    # the plugin version string on every node and every creator ("2")
PLUGIN_NAMESPACE = "hymba"
LAYOUT_VERSION = 1                  # the plugins' serialization guard, a field of every creator

# mamba-ssm's kernels: softplus(x) = x above the threshold (the SelectiveScan attribute's default).
SOFTPLUS_THRESHOLD = 20.0

# Typed attributes each op's plugin reads (name -> default; the default's Python type is the attribute
# type: float -> FLOAT, int -> INT): its creator's declared fields, exactly, besides PLUGIN_ATTRIBUTES.
ATTRIBUTES = {
    "SelectiveScan": {"softplus_threshold": SOFTPLUS_THRESHOLD, "layout_version": LAYOUT_VERSION},
    "CausalConv1d": {"activation": 1, "layout_version": LAYOUT_VERSION},
    "WindowedAttention": {"window": 0, "num_meta": 0, "scale": 1.0, "layout_version": LAYOUT_VERSION},
}
PLUGIN_ATTRIBUTES = ("plugin_version", "plugin_namespace")   # strings the TensorRT parser reads

# ---- the exported graphs ------------------------------------------------------------------------
GRAPHS = ("prefill", "decode")
# Ragged batches (issue #14): prompts are RIGHT-padded `input_ids` (batch, seq) with `lengths` (batch,) int64, the
# text tokens of each row (1 <= lengths[b] <= seq); a decode step takes `positions` (batch,) int64, each row's
# positions consumed so far, meta tokens included (= num_memory_tokens + lengths after the prefill; +1 a step).
# Each row gives exactly what its prompt gives alone. The decode graph's cache inputs follow `positions`.
LENGTHS_INPUT = "lengths"
POSITIONS_INPUT = "positions"
GRAPH_INPUTS = {"prefill": ("input_ids", LENGTHS_INPUT), "decode": ("input_ids", POSITIONS_INPUT)}  # then past.*
METADATA_PREFIX = "hymba."          # every metadata_props key `hymba-deploy export` writes starts with it
# Metadata every exported graph carries and the build and check read (exporters/README.md lists them all).
REQUIRED_METADATA = ("config", "graph", "dtype", "eviction", "max_seq_len")


def graph_file(graph: str) -> str:
    """The file name of exported graph `graph` inside an export folder (`prefill.onnx`, `decode.onnx`)."""
    return f"{graph}.onnx"


def plugin_sources() -> Path:
    """The plugin sources (CMake project, kernels, plugins) as installed with the package: `hymba_deploy/_plugins`
    (in a checkout a link to the top-level `plugins/`; a wheel stores the files)."""
    return Path(str(resources.files("hymba_deploy") / "_plugins")).resolve()
