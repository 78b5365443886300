"""The torch runtime (the PyTorch reference model, eager): prefill latency, decode throughput and, with
`paper`, the paper's decode setup (8k context, batch 128, halving the batch on out-of-memory).

Prefill: one prompt of each length, a fresh cache per call. Decode: B sequences over `synthetic_cache`
(random contents of the right shapes), one token each per step; tokens/s = B / median step time.
Timing: `Clock` (CUDA events on a GPU, perf_counter on the CPU). Memory: peak GPU MiB and cache MiB.
"""

from __future__ import annotations

from . import states
from .settings import PAPER, BenchSettings
from .timing import Clock, Deadline, halve_on_oom, is_oom, percentiles, timed


def bench_torch(model, s: BenchSettings, deadline: Deadline, say) -> dict:
    """`s`: settings for the torch runtime (`BenchSettings.for_runtime`) -> {"prefill", "decode",
    ["paper"], "device", "dtype"}; a row that ran out of memory says so ("oom"), one past the time budget
    says "skipped"."""
    import torch

    device = model.device
    out = {"prefill": [], "decode": [], "device": str(device), "dtype": str(model.dtype).replace("torch.", "")}
    with torch.no_grad():
        for L in [L for L in s.prefill_lengths if L <= model.config.seq_length]:
            row = _unless_over(deadline, {"tokens": L}, lambda: _prefill(model, L, s, deadline))
            say(f"    torch prefill {L:>5} tokens: {row.get('p50_ms', float('nan')):.2f} ms p50")
            out["prefill"].append(row)
        for B in s.decode_batches:
            row = _unless_over(deadline, {"batch": B, "context": s.context},
                               lambda: _decode(model, B, s.context, s, deadline))
            say(f"    torch decode batch {B:>4} @ {s.context}: {row.get('tokens_per_s', float('nan')):.1f} tokens/s")
            out["decode"].append(row)
        if s.paper:
            out["paper"] = _paper(model, s, deadline)
            if out["paper"]["result"]:
                r = out["paper"]["result"]
                say(f"    torch paper setup: batch {r['batch']} @ {PAPER['context']}: {r['tokens_per_s']:.1f} tokens/s")
    return out


def _unless_over(deadline: Deadline, key: dict, measure) -> dict:
    """measure() -> its row; `key` + skipped past the deadline, `key` + oom when it runs out of memory."""
    if deadline.reason():
        return {**key, "skipped": deadline.reason()}
    try:
        return measure()
    except Exception as e:                                                  # noqa: BLE001 - filtered by is_oom
        if not is_oom(e):
            raise
        return {**key, "oom": True}


def _reset_peak(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gpu_mib(cuda: bool) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None


def _prefill(model, L: int, s: BenchSettings, deadline: Deadline) -> dict:
    import torch

    clock = Clock(model.device)
    _reset_peak(clock.cuda)
    ids = torch.randint(0, model.config.vocab_size, (1, L), device=model.device)
    times = timed(lambda: clock.measure(lambda: model(ids, model.new_cache(1))), s.warmup, s.iters, deadline)
    row = {"tokens": L, "batch": 1}
    if len(times) < s.iters:
        row["truncated"] = "time budget"
    return {**row, **percentiles(times), "peak_gpu_mib": _peak_gpu_mib(clock.cuda)}


def _decode(model, B: int, C: int, s: BenchSettings, deadline: Deadline) -> dict:
    import torch

    clock = Clock(model.device)
    _reset_peak(clock.cuda)
    cache = states.synthetic_cache(model, B, C, seed=s.seed)
    tok = torch.randint(0, model.config.vocab_size, (B, 1), device=model.device)
    p = percentiles(timed(lambda: clock.measure(lambda: model(tok, cache)), s.warmup, s.decode_steps, deadline))
    return {"batch": B, "context": C, "cache_mib": round(cache.nbytes() / 2**20, 1), "step_ms": p,
            "tokens_per_s": B / (p["p50_ms"] / 1e3), "peak_gpu_mib": _peak_gpu_mib(clock.cuda)}


def _paper(model, s: BenchSettings, deadline: Deadline) -> dict:
    """Decode at the paper's context from its batch, halving on out-of-memory: every try, and the result."""
    C = PAPER["context"]
    got = halve_on_oom(PAPER["batch"], lambda B: _decode(model, B, C, s, deadline), stop=deadline.reason)
    tries = [{"batch": B, "context": C, "oom": True} for B in got.oom_batches]
    if got.stopped:
        tries.append({"batch": got.batch, "skipped": got.stopped})
    elif got.result is not None:
        tries.append(got.result)
    return {"setup": "decode at 8k context, batch 128, halving on OOM", "tries": tries, "result": got.result}
