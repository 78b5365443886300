"""The PyTorch reference as a runner: `PrefillGraph` / `DecodeGraph` (exporters/graphs.py) around the model,
so its I/O names and semantics are exactly the exported graph's (`lengths` / `positions` included)."""

from __future__ import annotations

import time

import numpy as np
import torch

from .base import LAYER_OUTPUT, Runner


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:                 # numpy has no bfloat16: compare in fp32
        t = t.float()
    return t.cpu().numpy()


class TorchRunner(Runner):
    """`graph` is "prefill" or "decode". Feed numpy arrays (outputs numpy) or torch tensors already on
    the model's device (outputs stay torch tensors there: what `bench` times)."""

    def __init__(self, model, graph: str, eviction: str = "upstream", capture_layers: bool = False,
                 logits_to_keep: int = 0, name: str | None = None):
        super().__init__(name or f"torch-{graph}")
        from hymba_deploy.exporters.graphs import DecodeGraph, PrefillGraph
        self.model, self.graph, self.capture_layers = model, graph, capture_layers
        if graph == "prefill":           # logits_to_keep=1: only the last token's logits, as `--prefill-logits last`
            self.module = PrefillGraph(model, eviction, logits_to_keep=logits_to_keep).eval()
        else:
            self.module = DecodeGraph(model, eviction).eval()
        self.output_names = self.module.output_names
        self._hooks, self._captured = [], {}

    def input_names(self) -> list[str]:
        return list(self.module.input_names)

    def activate_impl(self):
        if self.capture_layers:
            for i, layer in enumerate(self.model.model.layers):
                self._hooks.append(layer.register_forward_hook(self._hook(i)))

    def _hook(self, i):
        def fn(module, args, output):
            self._captured[LAYER_OUTPUT.format(i)] = output
        return fn

    def deactivate_impl(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def infer_impl(self, feed_dict):
        device, dtype = self.model.device, self.model.dtype
        as_torch = isinstance(feed_dict["input_ids"], torch.Tensor)

        def tensor(name, value):
            t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            t = t.to(device)
            return t if not t.is_floating_point() else t.to(dtype)     # ids, lengths, positions stay int64
        args = [tensor(n, feed_dict[n]) for n in self.input_names()]
        self._captured = {}
        sync = device.type == "cuda"
        if sync:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            outs = self.module(*args)
        if sync:
            torch.cuda.synchronize(device)
        self.inference_time = time.perf_counter() - t0
        result = dict(zip(self.output_names, outs))
        result.update(self._captured)
        return result if as_torch else {k: to_numpy(v) for k, v in result.items()}
