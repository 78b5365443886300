"""Timing, out-of-memory halving and bandwidth: the helpers every measurement of the bench shares.

- `percentiles`: p50/p90/p99/mean in ms of per-iteration times in seconds.
- `Clock.measure(fn)`: one call timed by CUDA events on a GPU device, by `perf_counter` elsewhere.
- `events_ms(fn, reps)`: mean ms of `reps` back-to-back calls between two CUDA events (one sync at the end).
- `timed(one, warmup, iters, deadline)`: per-iteration times after warm-up, cut short by a `Deadline`.
- `halve_on_oom(batch, fn)`: the paper's rule, fn(b) for b = batch, batch // 2, ... until it fits.
- `copy_bandwidth()`: device copy bandwidth, read + write bytes per second; `floor_ms(nbytes, bandwidth)`:
  the time to stream `nbytes` once at that bandwidth (a storage floor).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


def percentiles(times_s: list[float]) -> dict:
    """Times in seconds -> p50/p90/p99/mean in ms and the number of iterations."""
    ms = np.asarray(times_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "iters": int(ms.size)}


class Clock:
    """CUDA events on a GPU device, perf_counter elsewhere; `measure(fn)` returns seconds."""

    def __init__(self, device):
        self.cuda = getattr(device, "type", str(device)).startswith("cuda")

    def measure(self, fn) -> float:
        if self.cuda:
            return events_ms(fn, 1) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def events_ms(fn, reps: int) -> float:
    """Mean ms per call of `reps` calls of fn, between two CUDA events on the current stream."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


class Deadline:
    """A time budget from now; `reason()` is "time budget" once it has passed, else None."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds

    def reason(self) -> str | None:
        return "time budget" if time.monotonic() > self.at else None


def timed(one: Callable[[], float], warmup: int, iters: int, deadline: Deadline | None = None) -> list[float]:
    """`warmup` untimed then `iters` timed calls of one() (which returns its own seconds) -> the timed
    seconds; past the deadline it stops after the first timed call (fewer than `iters` times)."""
    times: list[float] = []
    for i in range(warmup + iters):
        t = one()
        if i >= warmup:
            times.append(t)
        if times and deadline is not None and deadline.reason():
            break
    return times


def is_oom(e: BaseException) -> bool:
    """A CUDA (or any runtime's) out-of-memory error, by type or by message."""
    return "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


def free_cached_memory() -> None:
    """Give the CUDA caching allocator's free blocks back (after an OOM or between sections); no-op on CPU."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclass
class Halving:
    """What `halve_on_oom` tried: the batch that ran (0: none) and its result, the batches that ran out
    of memory (largest first), and the reason it stopped early (`stop`), if it did."""
    batch: int
    result: Any = None
    oom_batches: list[int] = field(default_factory=list)
    stopped: str | None = None


def halve_on_oom(batch: int, fn: Callable[[int], Any], stop: Callable[[], str | None] = lambda: None) -> Halving:
    """fn(b) for b = batch, then half of it on each out-of-memory error (`is_oom`; any other error
    propagates), down to 1. `stop()` is asked before each try: a reason ends the halving there."""
    tried = Halving(batch)
    b = batch
    while b >= 1:
        tried.stopped = stop()
        if tried.stopped:
            tried.batch = b
            return tried
        try:
            tried.batch, tried.result = b, fn(b)
            return tried
        except Exception as e:                                              # noqa: BLE001 - filtered by is_oom
            if not is_oom(e):
                raise
            tried.oom_batches.append(b)
            free_cached_memory()
            b //= 2
    tried.batch = 0
    return tried


def host_peak_mib() -> float:
    """The process's peak resident host memory in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bytes_per_s(nbytes: int, ms: float) -> float:
    """nbytes moved in ms milliseconds -> bytes per second."""
    return nbytes / (ms / 1e3)


def floor_ms(nbytes: int, bandwidth: float) -> float:
    """Milliseconds to move nbytes at `bandwidth` bytes per second."""
    return nbytes / bandwidth * 1e3


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device copy bandwidth in bytes/s of one `nbytes` buffer copied `reps` times, counting read + write
    (2 × nbytes per copy), after one untimed copy."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = events_ms(lambda: dst.copy_(src), reps)
    del src, dst
    return bytes_per_s(2 * nbytes, ms)
