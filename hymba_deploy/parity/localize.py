"""Naming the first layer that diverges.

Two kinds of evidence, both per decoder layer i:
  * its cache tensors (`present.{i}.key/value`, `present.conv_state.{i}`, `present.ssm_state.{i}`),
    which every runner returns, engines included;
  * its output hidden state `layer.{i}.hidden`, which the torch and ONNX Runtime runners return with
    `capture_layers=True` (ONNX Runtime: the layer's output tensor is marked as a graph output).
The step that failed is re-run by both runners on the same feed, so the result is local to that step.
"""

from __future__ import annotations

import re

from .compare import compare_outputs

_LAYER = re.compile(r"^(?:present\.|past\.)?(?:conv_state\.|ssm_state\.)?(\d+)(?:\.key|\.value)?$")
_HIDDEN = re.compile(r"^layer\.(\d+)\.hidden$")


def layer_of(name: str) -> int | None:
    m = _HIDDEN.match(name) or _LAYER.match(name)
    return int(m.group(1)) if m else None


def first_divergent_layer(rows: list[dict]) -> dict | None:
    """From comparison rows (cache tensors and/or layer hidden states), the lowest layer with a failure."""
    per_layer: dict[int, list[dict]] = {}
    for row in rows:
        layer = layer_of(row["output"])
        if layer is not None:
            per_layer.setdefault(layer, []).append(row)
    for layer in sorted(per_layer):
        bad = [r for r in per_layer[layer] if not r["ok"]]
        if bad:
            worst = max(bad, key=lambda r: r.get("rel_l2", float("inf")))
            return {"layer": layer, "module": f"model.layers.{layer}", "evidence": worst["output"],
                    "rel_l2": worst.get("rel_l2"), "cosine": worst.get("cosine"),
                    "failing_outputs": [r["output"] for r in bad]}
    return None


def localize(reference_runner, runner, feed: dict, tolerances: dict) -> dict:
    """Re-run one step on `feed` through both runners (with layer capture where they support it) and name
    the first divergent layer. `*_runner` are factories: capture_layers -> an inactive runner."""
    ref_r, test_r = reference_runner(True), runner(True)
    with ref_r, test_r:
        ref, out = ref_r.infer(feed), test_r.infer(feed)
    rows = compare_outputs(out, ref, tolerances)
    hidden = [r for r in rows if _HIDDEN.match(r["output"])]
    found = first_divergent_layer(rows)
    return {"first_divergent": found,
            "method": "layer outputs and cache tensors" if hidden else "cache tensors (no layer outputs)",
            "per_layer_hidden": [{"layer": layer_of(r["output"]), "rel_l2": r.get("rel_l2"), "ok": r["ok"]}
                                 for r in sorted(hidden, key=lambda r: layer_of(r["output"]))]}
