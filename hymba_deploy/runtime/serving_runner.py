"""The serving runtime (`hymba_deploy.serving.ServingRuntime`) as a runner of one exported graph: the same
names and semantics as `TorchRunner` and the ONNX/engine runners, so `check` can compare it and `bench` time
it. On a GPU with the cuda kernels it is the `cuda` runtime of `hymba-deploy check --runtime cuda`; with the
reference kernels it runs anywhere (the CPU tests).

    prefill  input_ids (B, n) right-padded, lengths (B,) -> logits (B, n, V) (or (B, 1, V): `logits_to_keep=1`,
             each row's last real token), present.*
    decode   input_ids (B, 1), positions (B,), past.* -> logits (B, 1, V), present.*

Rows of different lengths (ISSUE14_CONTRACT): a prefill runs each run of equal-length rows on its own
(`ServingRuntime.prefill(rows=...)`), a decode step every row at its own position; present.* hold row b's
valid entries first (`HymbaServingCache.named_states`), past.* are read that way (`load_named_states`).

The runtime keeps its state in a preallocated `HymbaServingCache`; each call loads the fed `past.*` into it
(`load_named_states`) and returns its contents as the reference cache's named tensors (`named_states`), so
the runner is as stateless as an exported graph. Outputs are copies (the cache and a replayed graph's logits
are reused by the next call). State dtypes are the runtime's own (an fp32 SSM state with
the cuda kernels). `capture_layers` is accepted for the factory contract; localisation then uses the cache
tensors only.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..contract import GRAPH_INPUTS, GRAPHS, LENGTHS_INPUT, POSITIONS_INPUT
from ..errors import HymbaDeployError
from .base import Runner
from .torch_runner import to_numpy


class ServingRunner(Runner):
    """`graph` ("prefill" | "decode") of `runtime`. Feed numpy arrays (outputs numpy) or torch tensors
    (outputs stay torch tensors on the runtime's device). Rows must fit one of the runtime's buckets."""

    def __init__(self, runtime, graph: str, logits_to_keep: int = 0, capture_layers: bool = False,
                 name: str | None = None):
        if graph not in GRAPHS:
            raise HymbaDeployError(f"graph {graph!r}: choose one of {', '.join(GRAPHS)}")
        super().__init__(name or f"serving-{graph}")
        from ..cache import HybridMambaAttentionDynamicCache as Cache
        from ..exporters.graphs import position_layer
        self.runtime, self.graph, self.logits_to_keep = runtime, graph, logits_to_keep
        config = runtime.model_config
        self.past_names = [n for n, _, _ in Cache.state_names(config)]
        self.position_key = f"past.{position_layer(config)}.key" if graph == "decode" else None

    def input_names(self) -> list[str]:
        return list(GRAPH_INPUTS[self.graph]) + (self.past_names if self.graph == "decode" else [])

    def activate_impl(self):
        """Decode: capture each bucket's CUDA graph now, before any state is loaded (a capture clobbers its
        cache); steps whose SWA rings are full then replay it, as in generation."""
        if self.graph == "decode":
            for bucket in self.runtime.config.buckets:
                if self.runtime.graphs_possible(self.runtime.cache(bucket)):
                    self.runtime.capture(bucket)

    def _cache(self, rows: int):
        from ..serving import select_bucket
        return self.runtime.cache(select_bucket(rows, self.runtime.config.buckets))

    def _prefill(self, ids: torch.Tensor, lengths: list[int], cache) -> torch.Tensor:
        """Right-padded prompts: each run of equal-length rows prefilled into its own rows -> each row's last
        real token's logits (b, V), or (`logits_to_keep` != 1) all positions' (b, n, V), zeros at padding."""
        rt, (b, T), all_logits = self.runtime, ids.shape, self.logits_to_keep != 1
        cache.reset()
        logits, j = [], 0
        while j < b:
            k = j + 1
            while k < b and lengths[k] == lengths[j]:
                k += 1
            part = rt.prefill(ids[j:k, :lengths[j]], cache, all_logits=all_logits, rows=range(j, k))
            logits.append(torch.nn.functional.pad(part, (0, 0, 0, T - lengths[j])) if all_logits else part)
            j = k
        cache.set_rows(range(b, cache.batch_size), max(lengths))            # padding rows: results dropped
        return torch.cat(logits)

    def infer_impl(self, feed_dict):
        rt = self.runtime
        as_torch = isinstance(feed_dict["input_ids"], torch.Tensor)

        def tensor(value):
            t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            return t.to(rt.device)
        ids = tensor(feed_dict["input_ids"]).long()
        rows = ids.shape[0]
        cache = self._cache(rows)
        sync = rt.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(rt.device)
        t0 = time.perf_counter()
        if self.graph == "prefill":
            lengths = feed_dict.get(LENGTHS_INPUT)
            lengths = [ids.shape[1]] * rows if lengths is None else [int(n) for n in tensor(lengths).tolist()]
            logits = self._prefill(ids, lengths, cache)                                  # (b, n, V) or (b, V)
        else:
            states = {n: tensor(feed_dict[n]) for n in self.past_names}
            positions = feed_dict.get(POSITIONS_INPUT)
            cache.load_named_states(states, seen_tokens=states[self.position_key].shape[1] if positions is None
                                    else tensor(positions).tolist())
            pad = torch.zeros(cache.batch_size - rows, 1, dtype=ids.dtype, device=rt.device)
            logits = rt.decode(cache, torch.cat([ids, pad]))[:rows]                      # (b, V)
        if logits.dim() == 2:
            logits = logits[:, None]                                                       # (b, 1, V)
        out = {k: v.clone() for k, v in {"logits": logits, **cache.named_states(rows, present=True)}.items()}
        if sync:
            torch.cuda.synchronize(rt.device)
        self.inference_time = time.perf_counter() - t0
        return out if as_torch else {k: to_numpy(v) for k, v in out.items()}
