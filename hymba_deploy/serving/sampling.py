"""Token selection: greedy, or sampled with temperature, top-k and top-p from a seeded generator.

`SamplingParams(temperature=0)` is greedy (argmax). Otherwise logits are divided by the temperature, cut
to the top-k (k = 0: no cut), then to the smallest set whose probability reaches top_p (1.0: no cut; the
most likely token always stays), and one token per row is drawn with `torch.multinomial` from a
`torch.Generator` seeded once per request, so equal seeds give equal tokens on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import HymbaDeployError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0   # 0: greedy
    top_k: int = 0             # 0: all tokens
    top_p: float = 1.0         # 1.0: all tokens
    seed: int = 0

    def validate(self) -> "SamplingParams":
        if self.temperature < 0:
            raise HymbaDeployError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_k < 0:
            raise HymbaDeployError(f"top_k must be ≥ 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise HymbaDeployError(f"top_p must be in (0, 1], got {self.top_p}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(params: SamplingParams, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(params.seed)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits (B, V) fp32 -> the same with excluded entries set to -inf."""
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]              # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs                       # mass of strictly better tokens
        drop_sorted = before >= top_p                                        # the top token is never dropped
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next tokens (B, 1) int64."""
    if params.greedy:
        return logits.argmax(-1, keepdim=True)
    logits = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
