"""The two exported graphs as `nn.Module`s with flat tensor I/O around `HymbaForCausalLM`.

`PrefillGraph`: input_ids (B, T) right-padded + lengths (B,) int64 (text tokens per row) -> logits
(B, T, vocab) fp32 (or (B, 1, vocab), each row's last real token: `logits_to_keep=1`), then every cache
tensor after the prompts.
`DecodeGraph`:  input_ids (B, 1) + positions (B,) int64 (each row's positions consumed so far, meta
included) + every past cache tensor -> logits (B, 1, vocab) + updated caches.

Each row gives what its prompt gives alone (hymba_deploy/contract.py, the cache layout in
hymba_deploy/cache.py: row b's valid K/V entries are the first c_b, derived from `positions`). Names come
from `contract.GRAPH_INPUTS` and `HybridMambaAttentionDynamicCache.state_names` (house rule 11).
"""

from __future__ import annotations

import torch.nn as nn

from hymba_deploy.cache import HybridMambaAttentionDynamicCache as Cache
from hymba_deploy.contract import GRAPH_INPUTS
from hymba_deploy.errors import HymbaDeployError
from hymba_deploy.model import HymbaForCausalLM


def position_layer(config) -> int:
    """A global producer layer: a decode graph needs one (a global layer's past keys hold every position,
    so the `past` axis bounds every row's position)."""
    for i in range(config.num_hidden_layers):
        if config.is_global(i) and config.is_producer(i):
            return i
    raise HymbaDeployError("the decode graph needs a global attention layer, but global_attn_idx is empty; "
                           "export the prefill graph only")


class PrefillGraph(nn.Module):
    """`logits_to_keep` = 0 returns logits of every prompt position; 1 only each row's last real token."""

    def __init__(self, model: HymbaForCausalLM, eviction: str = "upstream", logits_to_keep: int = 0):
        super().__init__()
        self.model, self.eviction, self.logits_to_keep = model, eviction, logits_to_keep
        self.input_names = list(GRAPH_INPUTS["prefill"])
        self.output_names = ["logits"] + [n for n, _, _ in Cache.state_names(model.config, present=True)]

    def forward(self, input_ids, lengths):
        cache = self.model.new_cache(input_ids.shape[0], self.eviction)
        logits = self.model(input_ids, cache, lengths=lengths, logits_to_keep=self.logits_to_keep)
        return (logits, *cache.named_states(present=True).values())


class DecodeGraph(nn.Module):
    def __init__(self, model: HymbaForCausalLM, eviction: str = "upstream"):
        super().__init__()
        self.model, self.eviction = model, eviction
        self.past_names = [n for n, _, _ in Cache.state_names(model.config)]
        self.input_names = list(GRAPH_INPUTS["decode"]) + self.past_names
        self.output_names = ["logits"] + [n for n, _, _ in Cache.state_names(model.config, present=True)]

    def forward(self, input_ids, positions, *past):
        states = dict(zip(self.past_names, past))
        cache = Cache.from_named_states(self.model.config, states, positions, self.eviction)
        logits = self.model(input_ids, cache)                               # (B, 1, vocab)
        return (logits, *cache.named_states(present=True).values())
