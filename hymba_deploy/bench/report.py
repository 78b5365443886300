"""bench.md (tables), bench.png (prefill latency vs prompt length, decode throughput vs batch), and the
cuda runtime's serving_cuda_<model>.md (`serving_markdown`).

Every table has a row for each requested runtime: its results, or "not run"/"skipped" with the reason
(the cuda runtime: the name of its own report). Each runtime's real settings (warm-up, timed iterations
and steps, threads) are in a table of their own, since ONNX Runtime on the CPU may run fewer than the
others. No plot is written without data to plot.
"""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_write, atomic_write_text


def _f(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def to_markdown(report: dict) -> str:
    env, s = report["environment"], report["settings"]
    gpu = f"{env.get('gpu')} (sm{env.get('compute_capability', '').replace('.', '')}, CUDA {env.get('cuda')})" \
        if env.get("gpu") else "none"
    lines = ["# hymba-deploy bench", "",
             f"- device: {env['device']}; GPU: {gpu}; CPU cores: {env.get('cpu_count')}",
             f"- torch {env['torch']}, onnxruntime {env.get('onnxruntime', '-')} "
             f"({', '.join(env.get('onnxruntime_providers', [])) or '-'})",
             f"- dtype {', '.join(f'{r} {d}' for r, d in s['dtype'].items()) or '-'}; ONNX dtype {s['onnx_dtype']}; "
             f"random weights (seed {s['seed']})",
             f"- timing: {s['timing']}", *_plot_note(report), ""]
    for spec, runtimes in report["results"].items():
        lines += [f"## {spec}", "", "### Settings per runtime", "",
                  "| runtime | warm-up | timed prefill iterations | timed decode steps | threads | prompt lengths "
                  "| decode batches |", "|---|---:|---:|---:|---|---|---|"]
        for name, r in runtimes.items():
            if r.get("status") != "ran":
                lines.append(f"| {name} | {_not_run(r)} | | | | | |")
                continue
            st = r["settings"]
            lines.append(f"| {name} | {st['warmup']} | {st['iters']} | {st['decode_steps']} | "
                         f"{st['threads'] if st['threads'] is not None else '-'} | "
                         f"{', '.join(map(str, st['prefill_lengths']))} | {', '.join(map(str, st['decode_batches']))} |")
        lines += ["", "### Prefill latency (batch 1)", "",
                  "| runtime | tokens | p50 ms | p90 ms | p99 ms | peak GPU MiB | host peak MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in runtimes.items():
            if r.get("status") != "ran" or r.get("report"):
                lines.append(f"| {name} | {_not_run(r)} | | | | | |")
                continue
            for row in r["prefill"]:
                if "p50_ms" not in row:
                    lines.append(f"| {name} | {row['tokens']} | {'OOM' if row.get('oom') else row.get('skipped')} | | | | |")
                    continue
                lines.append(f"| {name} ({r.get('device', '')}, {r.get('dtype', '')}) | {row['tokens']} | "
                             f"{_f(row['p50_ms'])} | {_f(row['p90_ms'])} | {_f(row['p99_ms'])} | "
                             f"{_f(row.get('peak_gpu_mib'), '.0f')} | {_f(row.get('host_peak_mib'), '.0f')} |")
        lines += ["", "### Decode throughput", "",
                  "| runtime | batch | context | cache MiB | step p50 ms | tokens/s | peak GPU MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        notes = []
        for name, r in runtimes.items():
            if r.get("status") != "ran" or r.get("report"):
                lines.append(f"| {name} | {_not_run(r)} | | | | | |")
                continue
            rows = list(r["decode"]) + ([dict(r["paper"]["result"], paper=True)] if r.get("paper", {}).get("result") else [])
            for row in rows:
                if "tokens_per_s" not in row:
                    lines.append(f"| {name} | {row['batch']} | {row['context']} | | {'OOM' if row.get('oom') else row.get('skipped')} | | |")
                    continue
                tag = " (paper setup)" if row.get("paper") else ""
                lines.append(f"| {name}{tag} | {row['batch']} | {row['context']} | {_f(row['cache_mib'], '.1f')} | "
                             f"{_f(row['step_ms']['p50_ms'])} | {_f(row['tokens_per_s'], '.1f')} | "
                             f"{_f(row.get('peak_gpu_mib'), '.0f')} |")
            if r.get("paper"):
                tries = ", ".join(f"batch {t['batch']}: {'OOM' if t.get('oom') else t.get('skipped', 'ok')}"
                                  for t in r["paper"]["tries"])
                paper = " The paper reports 664 tokens/s for Hymba-1.5B with PyTorch on one A100." \
                    if spec == "hymba-1.5b" else ""
                notes.append(f"Paper setup (8k context, batch 128, halving on OOM) with {name}: {tries}.{paper}")
        lines += [""] + notes + ([""] if notes else [])
    return "\n".join(lines)


def _not_run(r: dict) -> str:
    """A runtime that did not run, as a table cell: its status and reason (pipes escaped); one with a report
    of its own (cuda): where that is."""
    if r.get("report"):
        return f"ran: see {r['markdown']} ({r['report']})"
    return f"{r.get('status')}: {r.get('reason', '')}".replace("|", "\\|").replace("\n", " ")


def _plot_note(report: dict) -> list[str]:
    plot = report.get("plot")
    if not plot:
        return []
    return [f"- plot: {plot['file']}" if plot.get("file") else f"- no plot: {plot['not_written']}"]


def write_markdown(report: dict, path) -> None:
    path = Path(path)
    atomic_write_text(path, to_markdown(report))


def _has_points(r: dict) -> bool:
    return r.get("status") == "ran" and (any("p50_ms" in row for row in r["prefill"])
                                         or any("tokens_per_s" in row for row in r["decode"]))


def write_plot(report: dict, path) -> str | None:
    """Two panels per model into `path` and None; or the reason no plot was written (nothing ran, no
    matplotlib), with no file at `path` (a stale one from an earlier run is removed). A panel without
    data says so instead of showing empty axes."""
    path = Path(path)
    reason = None
    if not any(_has_points(r) for runtimes in report["results"].values() for r in runtimes.values()):
        reason = "no runtime produced a measurement (see the tables)"
    else:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            reason = "matplotlib is not installed (pip install matplotlib)"
    if reason:
        path.unlink(missing_ok=True)
        return reason
    models = list(report["results"])
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.6 * len(models)), squeeze=False)
    for i, spec in enumerate(models):
        ax_p, ax_d = axes[i]
        for name, r in report["results"][spec].items():
            if not _has_points(r):
                continue
            pts = [(row["tokens"], row["p50_ms"]) for row in r["prefill"] if "p50_ms" in row]
            if pts:
                ax_p.plot(*zip(*pts), marker="o", label=f"{name} ({r.get('device', '')})")
            pts = [(row["batch"], row["tokens_per_s"]) for row in r["decode"] if "tokens_per_s" in row]
            if pts:
                ax_d.plot(*zip(*pts), marker="o", label=f"{name} ({r.get('device', '')})")
        ax_p.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="prefill p50 (ms)", title=f"{spec}: prefill")
        contexts = sorted({row["context"] for r in report["results"][spec].values() if _has_points(r)
                           for row in r["decode"] if "tokens_per_s" in row})
        ax_d.set(xscale="log", yscale="log", xlabel="batch", ylabel="tokens/s",
                 title=f"{spec}: decode at {', '.join(map(str, contexts)) or '-'} context")
        for ax in (ax_p, ax_d):
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
            else:
                ax.set(xscale="linear", yscale="linear", xticks=[], yticks=[])
                ax.text(0.5, 0.5, "no measurement: see bench.md", ha="center", va="center", transform=ax.transAxes)
    env = report["environment"]
    fig.suptitle(f"hymba-deploy bench on {env.get('gpu') or 'CPU'}", fontsize=11)
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return None


# ---- the cuda runtime's report (serving_cuda_<model>.json -> .md) ---------------------------------------

def _table(header: list[str], rows: list[list]) -> list[str]:
    if not rows:
        return ["Not measured in this run.", ""]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


def _ms_row(r: dict, key: str = "ms_per_step") -> str:
    return _f(r.get(key)) if key in r else r.get("error", "OOM" if r.get("oom_batches") else "-")


def _gemms(g: dict) -> str:
    """The decode GEMMs line: the mode, and the batches the gemv kernel serves (reports from before it: mode only)."""
    rows = g.get("gemv_max_rows")
    return f"{g.get('mode')}" + (f" (gemv kernel up to {rows} rows)" if g.get("mode") == "triton" and rows else "")


def serving_markdown(res: dict) -> str:
    """The cuda runtime's JSON report as tables: decode against its storage floor, prefill, kernel time by
    category, ablations and the reference baselines."""
    cuda, gib = res.get("cuda", {}), 2**30
    lines = [f"# cuda runtime: {res['model']} on {res['gpu']}, {res['date']}", "",
             f"- torch {res['torch']}, CUDA {res['cuda_version']}, sm{''.join(map(str, res['capability']))}; "
             f"{res['dtype']}, weights {res['weights']}; kernel sources {res.get('plugin_kernel_sources_sha256')}",
             f"- decode over {res['context_tokens']} text + {res['meta_tokens']} meta tokens of "
             f"{res['cache_contents']}",
             f"- copy bandwidth {_f(res.get('copy_bandwidth_GBps'), '.0f')} GB/s (read + write); weights "
             f"{_f(res.get('weight_bytes', 0) / 1e9)} GB; storage floor = (weight bytes + cache bytes read per step) / "
             f"copy bandwidth; per-layer floor = (weight bytes + each layer's K/V, a consumer re-reading its "
             f"producer's, + SSM state read and written in fp32 + conv state) / copy bandwidth",
             f"- decode GEMMs: {_gemms(res.get('decode_gemms', {}))}; timing: {res['timing']}",
             f"- complete: {bool(res.get('complete'))}", "", "## Decode (CUDA graphs)", ""]
    lines += _table(["batch", "ms/step", "tokens/s", "eager ms/step", "floor ms", "% of floor", "per-layer floor ms",
                     "% of per-layer floor", "peak GiB", "OOM at"],
                    [[r.get("batch", r["requested_batch"]), _ms_row(r), _f(r.get("tokens_per_s"), ".0f"),
                      _f(r.get("eager_ms_per_step")), _f(r.get("decode_floor_ms")),
                      _f(100 * r["fraction_of_floor"] if "fraction_of_floor" in r else None, ".1f"),
                      _f(r.get("per_layer_floor_ms")),
                      _f(100 * r["fraction_of_per_layer_floor"] if "fraction_of_per_layer_floor" in r else None, ".1f"),
                      _f(r["peak_memory_bytes"] / gib if "peak_memory_bytes" in r else None),
                      ", ".join(map(str, r.get("oom_batches", []))) or "-"] for r in cuda.get("decode", [])])
    forward = {r["tokens"]: r for r in cuda.get("prefill_model_forward", [])}
    reference = {r["tokens"]: r for r in res.get("reference", {}).get("prefill", [])}
    lines += ["## Prefill (batch 1, median ms)", ""]
    lines += _table(["tokens", "runtime prefill", "model forward (same kernels)", "reference kernels"],
                    [[p["tokens"], _ms_row(p, "ms"), _ms_row(forward.get(p["tokens"], {}), "ms"),
                      _ms_row(reference.get(p["tokens"], {}), "ms")] for p in cuda.get("prefill", [])])
    for key, per in (("profile_prefill", "prefill"), ("profile_graphs", "step"), ("profile_eager", "step")):
        rows = [r for r in cuda.get(key, []) if "by_category" in r]
        if rows:
            lines += _profile_table(key, rows, per)
    lines += ["## Ablations and baselines (ms per decode step)", ""]
    sections = [(k, v) for k, v in cuda.items() if k.startswith("decode_graphs_")]
    sections += [(f"reference {k}", v) for k, v in res.get("reference", {}).items()
                 if k.startswith("decode_") or k == "torch_compile_whole_model"]
    lines += _table(["measurement", "batch", "ms/step", "tokens/s"],
                    [[k, r.get("batch", r.get("requested_batch")), _ms_row(r), _f(r.get("tokens_per_s"), ".0f")]
                     for k, rows in sections if isinstance(rows, list) for r in rows])
    return "\n".join(lines)


def _profile_table(key: str, rows: list[dict], per: str) -> list[str]:
    """Kernel µs per `per` by category, one column per profiled run."""
    us = f"us_per_{per}"
    names = list(dict.fromkeys(c for r in rows for c in r["by_category"]))
    heads = [f"{r.get('prefill_impl', '')} {r['tokens']} tokens" if per == "prefill" else f"batch {r['batch']}"
             for r in rows]
    body = [[c, *(_f(r["by_category"].get(c, {}).get(us), ".0f") for r in rows)] for c in names]
    body += [["glue (elementwise)", *(_f(r.get(f"glue_{us}"), ".0f") for r in rows)],
             ["total kernel time", *(_f(r.get(f"total_kernel_{us}"), ".0f") for r in rows)]]
    return [f"## Kernel time by category: {key} (µs per {per})", "", *_table(["category", *heads], body)]


def write_serving_markdown(res: dict, path) -> None:
    atomic_write_text(Path(path), serving_markdown(res))
