"""Ragged batches in the reference model (issue 14, /ISSUE14_CONTRACT): right-padded prompts plus `lengths`
(or a right-padding `attention_mask`); every row gives what its prompt gives alone."""

from __future__ import annotations

import pytest
import torch

from hymba_deploy import HymbaDeployError
from hymba_deploy.cache import HybridMambaAttentionDynamicCache as Cache
from hymba_deploy.parity.tolerances import rel_err

TOL = 1e-5          # fp32 house bound (OP_BOUNDS["float32"])
N_DECODE = 40       # decode steps; with the longest prompt they run far past the window (tiny: 16)


def ragged_lengths(config) -> list[int]:
    """A length of 1, one below the window, one above window + meta, the longest."""
    window, meta = config.sliding_window, config.num_memory_tokens
    return [1, window - 3, window + meta + 6, window + meta + 21]


def right_padded(prompts: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n) ids, right-padded with `pad`, and (B,) lengths."""
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad, dtype=torch.int64)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = p
    return ids, torch.tensor([len(p) for p in prompts])


def random_prompts(config, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, config.vocab_size, (n,), generator=g) for n in lengths]


def snapshot(cache) -> dict:
    """Copies of the cache's tensors and positions (the cache is updated in place)."""
    out = {name: t.clone() for name, t in cache.named_states().items()}
    out["positions"] = cache.positions.clone()
    return out


@torch.no_grad()
def greedy(model, ids, eviction, n_decode, **prompt):
    """Prefill (last-token logits per row), then greedy decode steps. Returns the new tokens (B, n_decode),
    the logits of every step (B, 1 + n_decode, V), the cache after the prefill and at the end."""
    cache = model.new_cache(ids.shape[0], eviction)
    logits = model(ids, cache, logits_to_keep=1, **prompt)[:, -1]
    after_prefill = snapshot(cache)
    steps, tokens = [logits], []
    for _ in range(n_decode):
        tokens.append(logits.argmax(-1, keepdim=True))
        logits = model(tokens[-1], cache)[:, -1]
        steps.append(logits)
    return torch.cat(tokens, 1), torch.stack(steps, 1), after_prefill, snapshot(cache)


def assert_row_states_equal(config, eviction, batch_states, b, alone_states):
    """Row b's carried state (conv, SSM, its valid K/V entries, position) equals the alone run's."""
    assert int(batch_states["positions"][b]) == int(alone_states["positions"][0])
    for name, kind, layer in Cache.state_names(config):
        row, ref = batch_states[name][b], alone_states[name][0]
        if kind in ("key", "value"):
            count = int(Cache.kv_counts(config, layer, batch_states["positions"], eviction)[b])
            assert count == ref.shape[0], f"{name}: {count} valid entries, alone run stores {ref.shape[0]}"
            row = row[:count]
        assert rel_err(row, ref) <= TOL, f"row {b} {name}: {rel_err(row, ref)}"


@pytest.mark.parametrize("eviction", ["upstream", "exact"])
def test_ragged_batch_rows_equal_each_prompt_alone(tiny, seed, eviction):
    cfg = tiny.config
    prompts = random_prompts(cfg, ragged_lengths(cfg), seed)
    ids, lengths = right_padded(prompts)
    tokens, logits, prefilled, final = greedy(tiny, ids, eviction, N_DECODE, lengths=lengths)
    assert bool(torch.isfinite(logits).all())
    for b, prompt in enumerate(prompts):
        a_tokens, a_logits, a_prefilled, a_final = greedy(tiny, prompt[None], eviction, N_DECODE)
        for s in range(1 + N_DECODE):
            err = rel_err(logits[b, s], a_logits[0, s])
            assert err <= TOL, f"row {b} (length {len(prompt)}), step {s}: {err}"
        assert torch.equal(tokens[b], a_tokens[0]), f"row {b}: greedy tokens differ"
        assert_row_states_equal(cfg, eviction, prefilled, b, a_prefilled)
        assert_row_states_equal(cfg, eviction, final, b, a_final)


def test_uniform_batch_is_unchanged_bit_for_bit(tiny, seed):
    """lengths=None, lengths all full and an all-ones attention_mask run the same arithmetic; each row also
    matches its prompt alone (a different batch size: within the fp32 bound)."""
    cfg = tiny.config
    n = cfg.sliding_window + cfg.num_memory_tokens + 4                 # the SWA caches evict
    ids = torch.randint(0, cfg.vocab_size, (3, n), generator=torch.Generator().manual_seed(seed))
    runs = [greedy(tiny, ids, "upstream", 20),
            greedy(tiny, ids, "upstream", 20, lengths=torch.full((3,), n)),
            greedy(tiny, ids, "upstream", 20, attention_mask=torch.ones(3, n, dtype=torch.int64))]
    for run in runs[1:]:
        assert torch.equal(run[0], runs[0][0]) and torch.equal(run[1], runs[0][1])
        for states, ref in ((run[2], runs[0][2]), (run[3], runs[0][3])):
            assert states.keys() == ref.keys() and all(torch.equal(states[k], ref[k]) for k in ref)
    with torch.no_grad():
        assert torch.equal(tiny(ids, lengths=torch.full((3,), n)), tiny(ids))
    for b in range(3):
        alone = greedy(tiny, ids[b:b + 1], "upstream", 20)
        assert torch.equal(alone[0][0], runs[0][0][b])
        assert rel_err(runs[0][1][b], alone[1][0]) <= TOL


def test_every_valid_position_and_the_padding_values(tiny, seed):
    """All logits (logits_to_keep=0) at each row's valid positions equal the alone run's; padded positions
    are finite; the pad token's value reaches neither a valid position nor a carried state."""
    cfg = tiny.config
    prompts = random_prompts(cfg, ragged_lengths(cfg), seed)
    ids, lengths = right_padded(prompts)
    other_pad, _ = right_padded(prompts, pad=cfg.vocab_size - 1)
    with torch.no_grad():
        caches = [tiny.new_cache(len(prompts)), tiny.new_cache(len(prompts))]
        logits = tiny(ids, caches[0], lengths=lengths)
        logits_pad = tiny(other_pad, caches[1], lengths=lengths)
        assert bool(torch.isfinite(logits).all())
        for b, prompt in enumerate(prompts):
            n = len(prompt)
            assert rel_err(logits[b, :n], tiny(prompt[None])[0]) <= TOL
            assert torch.equal(logits[b, :n], logits_pad[b, :n])
        a, p = snapshot(caches[0]), snapshot(caches[1])
        for name, kind, layer in Cache.state_names(cfg):
            counts = Cache.kv_counts(cfg, layer, a["positions"], "upstream") if kind in ("key", "value") else None
            for b in range(len(prompts)):
                rows = (a[name][b], p[name][b]) if counts is None else (a[name][b, :counts[b]], p[name][b, :counts[b]])
                assert torch.equal(*rows), f"{name} row {b}: the pad token's value leaked"


def test_attention_mask_right_padding_equals_lengths(tiny, seed):
    cfg = tiny.config
    prompts = random_prompts(cfg, [3, 1, 9], seed)
    ids, lengths = right_padded(prompts)
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).to(torch.int64)
    with torch.no_grad():
        assert torch.equal(tiny(ids, attention_mask=mask), tiny(ids, lengths=lengths))
        assert torch.equal(tiny(ids, attention_mask=mask.bool(), logits_to_keep=1),
                           tiny(ids, lengths=lengths, logits_to_keep=1))
    out = tiny.generate(ids, 6, attention_mask=mask)
    assert torch.equal(out, tiny.generate(ids, 6, lengths=lengths))
    assert out.shape == (3, ids.shape[1] + 6) and torch.equal(out[:, :ids.shape[1]], ids)
    for b, prompt in enumerate(prompts):
        assert torch.equal(out[b, ids.shape[1]:], tiny.generate(prompt[None], 6)[0, len(prompt):])


@pytest.mark.parametrize("row", [[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 2, 0], [0, 0, 0, 0]])
def test_attention_mask_other_than_right_padding_is_refused(tiny, row):
    ids = torch.randint(0, tiny.config.vocab_size, (2, 4))
    mask = torch.tensor([[1, 1, 1, 1], row])
    with pytest.raises(HymbaDeployError, match="attention_mask"):
        tiny(ids, attention_mask=mask)
    with pytest.raises(HymbaDeployError, match="attention_mask"):
        tiny.generate(ids, 2, attention_mask=mask)
    with pytest.raises(HymbaDeployError, match="attention_mask"):
        tiny(ids, attention_mask=torch.ones(2, 3))


@pytest.mark.parametrize("lengths,match", [([0, 4], r"lengths\[0\] gives 0 tokens, out of range"),
                                           ([4, 5], r"lengths\[1\] gives 5 tokens, out of range"),
                                           ([-1, 2], r"lengths\[0\] gives -1"),
                                           ([4], r"lengths must be a \(2,\) integer tensor"),
                                           ([[4, 4]], r"lengths must be a \(2,\) integer tensor")])
def test_lengths_out_of_range_are_refused(tiny, lengths, match):
    ids = torch.randint(0, tiny.config.vocab_size, (2, 4))
    with pytest.raises(HymbaDeployError, match=match):
        tiny(ids, lengths=torch.tensor(lengths))


def test_lengths_misuse_is_refused(tiny):
    ids = torch.randint(0, tiny.config.vocab_size, (2, 4))
    with pytest.raises(HymbaDeployError, match="integer tensor"):
        tiny(ids, lengths=torch.tensor([2.0, 3.0]))
    with pytest.raises(HymbaDeployError, match="not both"):
        tiny(ids, lengths=torch.tensor([2, 3]), attention_mask=torch.ones(2, 4))
    cache = tiny.new_cache(2)
    tiny(ids, cache, lengths=torch.tensor([2, 4]))
    with pytest.raises(HymbaDeployError, match="apply to a prefill"):
        tiny(ids[:, :1], cache, lengths=torch.tensor([0, 1]))
    tiny(ids[:, :1], cache, lengths=torch.tensor([1, 1]))           # every row full: a plain decode step
    assert cache.positions.tolist() == [tiny.config.num_memory_tokens + 3, tiny.config.num_memory_tokens + 5]


def test_kv_counts_follow_the_contract(tiny):
    cfg = tiny.config
    meta, window = cfg.num_memory_tokens, cfg.sliding_window
    positions = torch.tensor([0, meta + 1, meta + window - 1, meta + window, meta + window + 7])
    swa = next(i for i in range(cfg.num_hidden_layers) if cfg.is_producer(i) and not cfg.is_global(i))
    glob = next(i for i in range(cfg.num_hidden_layers) if cfg.is_producer(i) and cfg.is_global(i))
    assert Cache.kv_counts(cfg, glob, positions).tolist() == positions.tolist()
    for eviction, keep in (("upstream", window - 1), ("exact", window)):
        expected = [0] + [meta + min(int(p) - meta, keep) for p in positions[1:]]
        assert Cache.kv_counts(cfg, swa, positions, eviction).tolist() == expected
        assert tiny.new_cache(1, eviction).keep(swa) == keep


def test_cache_rebuilt_from_named_states_and_positions_decodes_alike(tiny, seed):
    """What a decode graph does: the cache from its named tensors plus per-row positions continues exactly."""
    cfg = tiny.config
    prompts = random_prompts(cfg, ragged_lengths(cfg), seed)
    ids, lengths = right_padded(prompts)
    with torch.no_grad():
        cache = tiny.new_cache(len(prompts), "exact")
        token = tiny(ids, cache, lengths=lengths, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
        rebuilt = Cache.from_named_states(cfg, cache.named_states(), cache.positions.clone(), "exact")
        for _ in range(3):
            out, ref = tiny(token, rebuilt), tiny(token, cache)
            assert torch.equal(out, ref)
            token = ref[:, -1].argmax(-1, keepdim=True)
        assert torch.equal(rebuilt.positions, cache.positions)
    uniform = Cache.from_named_states(cfg, cache.named_states(), 40)
    assert uniform.positions.tolist() == [40] * len(prompts)


def test_decode_step_exports_with_dynamic_batch_and_past(tiny, seed):
    """torch.export traces a ragged decode step (per-row RoPE, scatter append, gather trim, kv_lengths) with
    the batch and the past lengths dynamic; the program equals eager on another batch size and past."""
    from torch.export import Dim

    cfg = tiny.config
    names = [n for n, _, _ in Cache.state_names(cfg)]

    class Decode(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, positions, *past):
            cache = Cache.from_named_states(cfg, dict(zip(names, past)), positions, "upstream")
            return (self.model(input_ids, cache), cache.positions, *cache.named_states(present=True).values())

    def prefilled(lengths):
        prompts = random_prompts(cfg, lengths, seed)
        ids, lens = right_padded(prompts)
        cache = tiny.new_cache(len(prompts))
        token = tiny(ids, cache, lengths=lens, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
        return token, cache.positions, tuple(cache.named_states().values())

    meta, batch = cfg.num_memory_tokens, Dim("batch", min=1, max=64)
    past, past_window = Dim("past", min=meta + 1, max=meta + 256), Dim("past_window", min=meta + 1, max=meta + 16)
    probe = tiny.new_cache(1)
    dims = tuple({0: batch, 1: past if probe.keep(layer) is None else past_window} if kind in ("key", "value")
                 else {0: batch} for _, kind, layer in Cache.state_names(cfg))
    module = Decode(tiny).eval()
    with torch.no_grad():
        example = prefilled(ragged_lengths(cfg))
        program = torch.export.export(module, (example[0], example[1], *example[2]),
                                      dynamic_shapes=({0: batch}, {0: batch}, dims)).module()
        for token, positions, states in (example, prefilled([3, 1, 5])):
            ref = module(token, positions, *states)
            out = program(token, positions, *states)
            assert all(torch.equal(a, b) for a, b in zip(out, ref))
