"""bench.md (tables) and bench.png (prefill latency vs prompt length, decode throughput vs batch).

Every table has a row for each requested backend: its results, or "not run"/"skipped" with the reason.
Each backend's real settings (warm-up, timed iterations and steps, threads) are in a table of their own,
since ONNX Runtime on the CPU may run fewer than the others. No plot is written without data to plot.
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
             f"- torch dtype {s['dtype']}; ONNX dtype {s['onnx_dtype']}; decode context {s['context']} tokens; "
             f"random weights",
             f"- timing: {s['timing']}", *_plot_note(report), ""]
    for spec, backends in report["results"].items():
        lines += [f"## {spec}", "", "### Settings per backend", "",
                  "| backend | warm-up | timed prefill iterations | timed decode steps | threads | prompt lengths "
                  "| decode batches |", "|---|---:|---:|---:|---|---|---|"]
        for name, r in backends.items():
            if r.get("status") != "ran":
                lines.append(f"| {name} | {_not_run(r)} | | | | | |")
                continue
            st = r["settings"]
            lines.append(f"| {name} | {st['warmup']} | {st['iters']} | {st['decode_steps']} | "
                         f"{st['threads'] if st['threads'] is not None else '-'} | "
                         f"{', '.join(map(str, st['prefill_lengths']))} | {', '.join(map(str, st['decode_batches']))} |")
        lines += ["", "### Prefill latency (batch 1)", "",
                  "| backend | tokens | p50 ms | p90 ms | p99 ms | peak GPU MiB | host peak MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in backends.items():
            if r.get("status") != "ran":
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
                  "| backend | batch | context | cache MiB | step p50 ms | tokens/s | peak GPU MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        notes = []
        for name, r in backends.items():
            if r.get("status") != "ran":
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
    """A backend that did not run, as a table cell: its status and reason (pipes escaped)."""
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
    if not any(_has_points(r) for backends in report["results"].values() for r in backends.values()):
        reason = "no backend produced a measurement (see the tables)"
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
            if r.get("status") != "ran":
                continue
            pts = [(row["tokens"], row["p50_ms"]) for row in r["prefill"] if "p50_ms" in row]
            if pts:
                ax_p.plot(*zip(*pts), marker="o", label=f"{name} ({r.get('device', '')})")
            pts = [(row["batch"], row["tokens_per_s"]) for row in r["decode"] if "tokens_per_s" in row]
            if pts:
                ax_d.plot(*zip(*pts), marker="o", label=f"{name} ({r.get('device', '')})")
        ax_p.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="prefill p50 (ms)", title=f"{spec}: prefill")
        context = report["settings"]["context"]
        ax_d.set(xscale="log", yscale="log", xlabel="batch", ylabel="tokens/s",
                 title=f"{spec}: decode at {context} context")
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
