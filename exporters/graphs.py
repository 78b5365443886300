"""The two exported graphs as `nn.Module`s with flat tensor I/O around `HymbaForCausalLM`.

`PrefillGraph`: input_ids (B, T) -> logits (B, T, vocab) fp32 (or (B, 1, vocab): `logits_to_keep=1`),
then every cache tensor after the prompt.
`DecodeGraph`:  input_ids (B, 1) + every past cache tensor -> logits (B, 1, vocab) + updated caches.

Names come from `HybridMambaAttentionDynamicCache.state_names` (house rule 11). The decode position
(tokens seen, meta included) is the length of a global layer's past keys, as upstream derives
`past_key_values_length` from layer 0: global layers never evict.
"""

from __future__ import annotations

import torch.nn as nn

from hymba_deploy.cache import HybridMambaAttentionDynamicCache as Cache
from hymba_deploy.errors import HymbaDeployError
from hymba_deploy.model import HymbaForCausalLM


def position_layer(config) -> int:
    """The global producer layer whose past key length is the decode position."""
    for i in range(config.num_hidden_layers):
        if config.is_global(i) and config.is_producer(i):
            return i
    raise HymbaDeployError("the decode graph derives its position from a global attention layer, "
                           "but global_attn_idx is empty; export the prefill graph only")


class PrefillGraph(nn.Module):
    """`logits_to_keep` = 0 returns logits of every prompt token; 1 only the last (generation)."""

    def __init__(self, model: HymbaForCausalLM, eviction: str = "upstream", logits_to_keep: int = 0):
        super().__init__()
        self.model, self.eviction, self.logits_to_keep = model, eviction, logits_to_keep
        self.output_names = ["logits"] + [n for n, _, _ in Cache.state_names(model.config, present=True)]

    def forward(self, input_ids):
        cache = self.model.new_cache(input_ids.shape[0], self.eviction)
        logits = self.model(input_ids, cache, logits_to_keep=self.logits_to_keep)  # (B, T or 1, vocab)
        return (logits, *cache.named_states(present=True).values())


class DecodeGraph(nn.Module):
    def __init__(self, model: HymbaForCausalLM, eviction: str = "upstream"):
        super().__init__()
        self.model, self.eviction = model, eviction
        self.past_names = [n for n, _, _ in Cache.state_names(model.config)]
        self.position_key = f"past.{position_layer(model.config)}.key"
        self.output_names = ["logits"] + [n for n, _, _ in Cache.state_names(model.config, present=True)]

    def forward(self, input_ids, *past):
        states = dict(zip(self.past_names, past))
        seen = states[self.position_key].shape[1]                           # meta + tokens so far
        cache = Cache.from_named_states(self.model.config, states, seen, self.eviction)
        logits = self.model(input_ids, cache)                               # (B, 1, vocab)
        return (logits, *cache.named_states(present=True).values())
