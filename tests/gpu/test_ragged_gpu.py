"""Ragged batches on a GPU (issue #14): each row of a batch of right-padded prompts of different lengths gives
exactly what its prompt gives alone, through the model on the `cuda` kernel backend (the plugin kernels: attention
with per-row key counts, the scan passing padded steps with dt = -inf, the conv), fp32.

Rows: one token, below the window, above window + meta, the longest; greedy for `new` steps (>= 40 past the
window). Per row: the greedy tokens equal the alone run's, and the logits of every step (prefill's last token,
then each decode step) are within the fp32 model tolerance of the alone run's. The serving runtime's ragged
batches are tested in test_serving_gpu.py.
"""

from __future__ import annotations

import pytest
import torch

from hymba_deploy import cuda as backend
from hymba_deploy.checkpoint import random_model
from hymba_deploy.parity.tolerances import MODEL_TOLERANCES, rel_err

from .common import seed_of

pytestmark = pytest.mark.gpu

# (model, prompt lengths, new tokens): tiny has window 16 and 8 meta tokens, hymba-1.5b 1024 and 128.
RAGGED = [("tiny", (1, 9, 40, 64), 48), ("hymba-1.5b", (1, 700, 1300, 1500), 48)]


@torch.no_grad()
def _greedy(model, ids, new, lengths=None):
    """Greedy decoding with the logits of every step: (tokens (B, new), logits (B, new, V))."""
    cache = model.new_cache(ids.shape[0])
    logits = [model(ids, cache, lengths=lengths, logits_to_keep=1)[:, -1]]
    tokens = [logits[-1].argmax(-1, keepdim=True)]
    for _ in range(new - 1):
        logits.append(model(tokens[-1], cache)[:, -1])
        tokens.append(logits[-1].argmax(-1, keepdim=True))
    return torch.cat(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("spec,lengths,new", RAGGED, ids=[r[0] for r in RAGGED])
def test_ragged_batch_rows_equal_each_prompt_alone(cuda, record, spec, lengths, new):
    seed = seed_of("ragged", spec)
    torch._dynamo.reset()
    model = random_model(spec, torch.float32, "cuda", seed).use_kernels(backend.kernel_backend("cuda"))
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g) for n in lengths]
    T = max(lengths)
    ids = torch.zeros(len(prompts), T, dtype=torch.int64)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = p
    tokens, logits = _greedy(model, ids.cuda(), new, torch.tensor(lengths).cuda())
    bound = MODEL_TOLERANCES["float32"]["rel_l2"]
    rows = []
    for b, p in enumerate(prompts):
        alone_tokens, alone_logits = _greedy(model, p[None].cuda(), new)
        diff = (tokens[b] != alone_tokens[0]).nonzero()
        rows.append({"length": len(p), "first_token_diff": None if diff.numel() == 0 else int(diff[0]),
                     "logits_rel_err": rel_err(logits[b], alone_logits[0])})
    passed = all(r["first_token_diff"] is None and r["logits_rel_err"] <= bound for r in rows)
    record(dict(op="ragged_generate", case=spec, dtype="float32", path="model_cuda_backend", seed=seed,
                new_tokens=new, window=cfg.sliding_window, num_meta=cfg.num_memory_tokens, bound=bound,
                rows=rows, passed=passed))
    assert passed, f"rows differ from their prompts alone: {rows} [seed {seed}]"
