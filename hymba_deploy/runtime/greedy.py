"""Greedy generation over a pair of graph runners (prefill, decode): the loop a deployment runs around the
exported graphs or the engines built from them, for a batch of prompts of different lengths.

    prefill  input_ids (B, T) right-padded with PAD_ID, lengths (B,)     -> logits, present.*
    decode   input_ids (B, 1), positions (B,), past.* (= present.*)      -> logits (B, 1, V), present.*

`positions` is p_b, the positions row b has consumed (meta tokens included): M + lengths after the prefill,
+1 per decode step (the ragged-batch contract, exporters/README.md). Prefill logits are each row's at its last
real token: index lengths - 1 of an export with `--prefill-logits all`, the only position of one with
`last`. Each row of the batch gets exactly the tokens its prompt gets alone.
"""

from __future__ import annotations

import numpy as np

from ..contract import LENGTHS_INPUT as LENGTHS, POSITIONS_INPUT as POSITIONS
from ..errors import HymbaDeployError
from .base import Runner

PAD_ID = 0                   # token id of the right padding (never reaches a valid position's result)


def pad_prompts(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> (input_ids (B, T) int64 right-padded with PAD_ID, lengths (B,) int64), T the longest."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise HymbaDeployError("every prompt needs at least one token")
    lengths = np.array([len(p) for p in prompts], dtype=np.int64)
    ids = np.full((len(prompts), int(lengths.max())), PAD_ID, dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = prompt
    return ids, lengths


def prefill_feed(ids: np.ndarray, lengths) -> dict:
    """The prefill feed: right-padded `ids` (B, T) and each row's prompt length (B,)."""
    return {"input_ids": ids, LENGTHS: np.asarray(lengths, dtype=np.int64)}


def decode_feed(outputs: dict, token: np.ndarray, positions, cache_io) -> dict:
    """The next decode step's feed: `token` (B, 1) at `positions` (B,) (each row's positions consumed so far,
    meta included) and every present.X of `outputs` as X."""
    feed = {"input_ids": token, POSITIONS: np.asarray(positions, dtype=np.int64)}
    for present, past in cache_io:
        feed[past] = outputs[present]
    return feed


class GreedyGenerator:
    """`generate(prompts, max_new_tokens) -> list[list[int]]` over activated `prefill` / `decode` runners of one
    export (or its engines). `cache_io`: the [present, past] pairs (metadata `hymba.cache_io`); `num_meta`: M;
    `prefill_logits`: "all" | "last" (metadata `hymba.prefill_logits`)."""

    def __init__(self, prefill: Runner, decode: Runner, cache_io, num_meta: int, prefill_logits: str):
        if prefill_logits not in ("all", "last"):
            raise HymbaDeployError(f"prefill_logits {prefill_logits!r}: expected 'all' or 'last'")
        self.prefill, self.decode = prefill, decode
        self.cache_io, self.num_meta, self.prefill_logits = [tuple(p) for p in cache_io], num_meta, prefill_logits

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy: the `max_new_tokens` tokens after each prompt, one list per prompt, in order."""
        if max_new_tokens < 0:
            raise HymbaDeployError(f"max_new_tokens must be ≥ 0, got {max_new_tokens}")
        ids, lengths = pad_prompts(prompts)
        if max_new_tokens == 0:
            return [[] for _ in prompts]
        out = self.prefill.infer(prefill_feed(ids, lengths))
        token = self._last_logits(out["logits"], lengths).argmax(-1).astype(np.int64)[:, None]     # (B, 1)
        tokens = [token]
        positions = self.num_meta + lengths
        for _ in range(max_new_tokens - 1):
            out = self.decode.infer(decode_feed(out, token, positions, self.cache_io))
            token = np.asarray(out["logits"])[:, -1].argmax(-1).astype(np.int64)[:, None]
            tokens.append(token)
            positions = positions + 1
        return np.concatenate(tokens, axis=1).tolist()

    def _last_logits(self, logits, lengths: np.ndarray) -> np.ndarray:
        """(B, V): each row's logits at its last real token."""
        logits = np.asarray(logits)
        if self.prefill_logits == "last":
            return logits[:, -1]
        return logits[np.arange(len(lengths)), lengths - 1]
