"""The `hymba-deploy` command line: one thin command per job, library imported inside the body (so
`--help` stays instant), user errors (`HymbaDeployError`) printed and turned into exit code 1."""

from __future__ import annotations

import functools
import json
import sys

import click


def _user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from hymba_deploy.errors import HymbaDeployError
        try:
            return fn(*args, **kwargs)
        except HymbaDeployError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
    return wrapper


@click.group()
@click.version_option(package_name="hymba-deploy")
def main():
    """Deploy NVIDIA Hymba: PyTorch -> ONNX -> TensorRT, with parity checks and benchmarks.

    MODEL is a preset (tiny, hymba-1.5b; random weights) or a Hugging Face checkpoint directory.
    """


@main.command()
@click.argument("model")
@click.option("--context", default=8192, show_default=True, help="Context length (text tokens) for the cache size.")
@click.option("--dtype", default="float16", show_default=True, help="Cache dtype: float32, float16, bfloat16.")
@click.option("--batch-size", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_user_errors
def info(model, context, dtype, batch_size, as_json):
    """Parameter count, per-layer kind and cache size of MODEL (no weights allocated)."""
    from hymba_deploy.info import format_info, model_info
    result = model_info(model, context=context, dtype=dtype, batch_size=batch_size)
    click.echo(json.dumps(result, indent=2) if as_json else format_info(result))


@main.command()
@click.argument("model")
@click.option("--ids", "ids", multiple=True,
              help="A prompt's token ids, comma-separated (e.g. 1,2,3); repeat for more prompts (one batch).")
@click.option("--ids-file", type=click.Path(dir_okay=False), default=None,
              help="A file of prompts, one comma-separated list of token ids per line (one batch).")
@click.option("--prompt", "prompts", multiple=True,
              help="Prompt text (repeatable); needs tokenizer.json in the checkpoint and the tokenizers package.")
@click.option("--backend", type=click.Choice(["reference", "onnxruntime", "tensorrt", "cuda"]), default="reference",
              show_default=True, help="reference: the PyTorch model; onnxruntime: the graphs of --onnx; tensorrt: the "
                                      "engines of --engine; cuda: the serving runtime on our CUDA kernels (GPU).")
@click.option("--onnx", "onnx_dir", type=click.Path(file_okay=False), default=None,
              help="Export directory (hymba-deploy export) for --backend onnxruntime.")
@click.option("--engine", "engine_dir", type=click.Path(file_okay=False), default=None,
              help="Build directory (hymba-deploy build) for --backend tensorrt.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Where reference and onnxruntime run [default: cpu]; onnxruntime on cuda uses the CUDA provider "
                   "(onnxruntime-gpu) with TF32 off.")
@click.option("--max-new-tokens", default=16, show_default=True)
@click.option("--dtype", default=None, help="float32, float16 or bfloat16 (default: the checkpoint's, fp32 for presets; "
                                            "onnxruntime/tensorrt: the export's).")
@click.option("--eviction", type=click.Choice(["upstream", "exact"]), default=None,
              help="Decode-time sliding-window eviction rule (see HybridMambaAttentionDynamicCache) [default: "
                   "upstream; onnxruntime/tensorrt: the export's].")
@click.option("--seed", default=0, show_default=True, help="Seed of a preset's random weights (as for export).")
@click.option("--plugins", "plugin_library", type=click.Path(dir_okay=False), default=None,
              help="Plugin library for the engines, if its sha256 is the one recorded at build (default: the "
                   "project's build).")
@_user_errors
def generate(model, ids, ids_file, prompts, backend, onnx_dir, engine_dir, device, max_new_tokens, dtype, eviction,
             seed, plugin_library):
    """Greedy generation for one batch of prompts of any lengths, from the PyTorch reference or what was
    deployed. Prints one line per prompt, in input order: its new token ids, comma-separated (then a tab and the
    text as a JSON string where the checkpoint has a tokenizer). A backend that cannot run here prints
    "not run: <reason>" and exits 1."""
    from hymba_deploy.errors import HymbaDeployError
    from hymba_deploy.generation import NotRun, format_rows, generate as run, parse_ids, read_ids_file
    if sum(map(bool, (ids, ids_file, prompts))) != 1:
        raise HymbaDeployError("give exactly one of --ids, --ids-file and --prompt")
    batch = ([parse_ids(text) for text in ids] if ids else read_ids_file(ids_file) if ids_file else None)
    try:
        result = run(model, ids=batch, prompts=list(prompts) or None, max_new_tokens=max_new_tokens,
                     backend=backend, onnx_dir=onnx_dir, engine_dir=engine_dir, device=device, dtype=dtype,
                     eviction=eviction, seed=seed, plugin_library=plugin_library)
    except NotRun as e:
        click.echo(f"not run: {e}")
        sys.exit(1)
    for note in result["notes"]:
        click.echo(f"... {note}", err=True)
    click.echo(format_rows(result))


@main.command()
@click.argument("model")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory for prefill.onnx, decode.onnx and manifest.json.")
@click.option("--graphs", default="prefill,decode", show_default=True, help="Comma-separated graphs to export.")
@click.option("--dtype", default=None, help="float32, float16 or bfloat16 (default: the checkpoint's; fp32 for presets).")
@click.option("--opset", default=18, show_default=True, help="ONNX opset of the default domain (18-23).")
@click.option("--max-seq-len", default=None, type=int,
              help="Upper bound of the dynamic sequence axes (default: the config's seq_length).")
@click.option("--eviction", type=click.Choice(["upstream", "exact"]), default="upstream", show_default=True,
              help="Decode-time sliding-window eviction rule baked into decode.onnx.")
@click.option("--prefill-logits", type=click.Choice(["all", "last"]), default="all", show_default=True,
              help="Prefill returns logits of every prompt token, or of the last one only.")
@click.option("--seed", default=0, show_default=True, help="Seed of a preset's random weights.")
@_user_errors
def export(model, out_dir, graphs, dtype, opset, max_seq_len, eviction, prefill_logits, seed):
    """Export MODEL to ONNX: prefill and decode graphs with hymba custom ops (runs in stock ONNX Runtime)."""
    from hymba_deploy.exporters.onnx_export import export as run, format_summary
    manifest = run(model, out_dir, graphs=graphs, dtype=dtype, opset=opset, max_seq_len=max_seq_len,
                   eviction=eviction, seed=seed, prefill_logits=prefill_logits,
                   progress=lambda msg: click.echo(f"... {msg}", err=True))
    click.echo(format_summary(manifest, out_dir))


def _reexec_with_library_path(directory) -> None:
    """TensorRT-RTX needs its private libtensorrt_rtx.so folder on LD_LIBRARY_PATH at process start
    (hymba_deploy.engine.backends): run this same command again with it, once."""
    import os
    if os.environ.get("HYMBA_DEPLOY_REEXEC"):
        return
    env = dict(os.environ, HYMBA_DEPLOY_REEXEC="1",
               LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(directory), os.environ.get("LD_LIBRARY_PATH")])))
    click.echo(f"... restarting with LD_LIBRARY_PATH={directory} (TensorRT-RTX needs libtensorrt_rtx.so)", err=True)
    os.execve(sys.executable, [sys.executable, "-m", "cli", *sys.argv[1:]], env)


@main.command()
@click.argument("src", metavar="DIR_OR_ONNX")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the engines and sidecars.")
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt-rtx", show_default=True)
@click.option("--target", type=click.Choice(["sm80", "sm86", "sm89", "sm90", "sm120", "current"]), default="current",
              show_default=True, help="GPU to build for (TensorRT-RTX cross-builds; TensorRT builds for this GPU).")
@click.option("--plugins", "plugin_library", type=click.Path(dir_okay=False), default=None,
              help="Plugin library (default: $HYMBA_PLUGIN_LIB, else the project's libhymba_plugins.so, "
                   "built on first use into ~/.cache/hymba-deploy).")
@click.option("--profile", default=None,
              help="Optimisation profile, e.g. batch=1:8:32,seq=1:512:8192 (MAX = export limit).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file to read and update (full TensorRT; TensorRT-RTX has none).")
@click.option("--workspace", "workspace_mib", type=int, default=None, help="Builder workspace limit in MiB.")
@_user_errors
def build(src, out_dir, backend, target, plugin_library, profile, timing_cache, workspace_mib):
    """Build TensorRT / TensorRT-RTX engines from exported prefill.onnx / decode.onnx with our plugins."""
    from hymba_deploy.engine.backends import LibraryPathNeeded
    from hymba_deploy.engine.build import build as run, format_summary
    try:
        results = run(src, out_dir, backend=backend, target=target, plugin_library=plugin_library, profile=profile,
                      timing_cache=timing_cache, workspace_mib=workspace_mib,
                      progress=lambda msg: click.echo(f"... {msg}", err=True))
    except LibraryPathNeeded as e:
        _reexec_with_library_path(e.directory)
        raise
    click.echo(format_summary(results))


@main.command()
@click.argument("engine", type=click.Path())
@click.option("--all-layers", is_flag=True, help="List every layer, not only our plugin layers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--plugins", "plugin_library", type=click.Path(dir_okay=False), default=None,
              help="Plugin library the engine inspector may load, if its sha256 is the one recorded at build "
                   "(default: the project's build; never the path the sidecar names).")
@_user_errors
def inspect(engine, all_layers, as_json, plugin_library):
    """Layers (engine inspector), our plugin layers and I/O of ENGINE (a .engine file or a build directory)."""
    from hymba_deploy.engine.inspect import format_inspection, inspect_engine
    result = inspect_engine(engine, plugin_library)
    click.echo(json.dumps(result, indent=2) if as_json else format_inspection(result, all_layers))


@main.command()
@click.argument("model")
@click.option("--onnx", "onnx_dir", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--engine", "engine_dir", type=click.Path(file_okay=False), default=None,
              help="Build directory (engines).")
@click.option("--prompts", default=2, show_default=True, help="Number of random prompts.")
@click.option("--steps", default=3, show_default=True, help="Decode steps after each prefill.")
@click.option("--dtype", default=None,
              help="Reference dtype (default: the ONNX's); tolerances follow the lower precision.")
@click.option("--seed", default=0, show_default=True,
              help="Seed of a preset's weights (as for export) and of the prompts.")
@click.option("--max-prompt-len", default=48, show_default=True)
@click.option("--device", default="cpu", show_default=True,
              help="Device of the PyTorch reference and of ONNX Runtime (cuda: the CUDA provider of onnxruntime-gpu, "
                   "TF32 off; without it onnxruntime is 'not run').")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also write the full report here.")
@click.option("--plugins", "plugin_library", type=click.Path(dir_okay=False), default=None,
              help="Plugin library for the engines, if its sha256 is the one recorded at build (default: the "
                   "project's build).")
@click.option("--runtime", "runtimes", multiple=True, type=click.Choice(["cuda"]),
              help="Also compare this runtime: cuda = the serving runtime on our CUDA kernels, in the ONNX's dtype "
                   "(needs a GPU; else 'not run').")
@click.option("--strict", is_flag=True, help="Exit 1 when any runtime did not run (for CI jobs).")
@_user_errors
def check(model, onnx_dir, engine_dir, prompts, steps, dtype, seed, max_prompt_len, device, json_out,
          plugin_library, runtimes, strict):
    """Parity of PyTorch, ONNX Runtime, engines and (--runtime cuda) the serving runtime over prefill and K
    decode steps; exit 1 on failure (with --strict also when a runtime did not run)."""
    from hymba_deploy.parity.check import check as run, format_report, write_report
    report = run(model, onnx_dir, engine_dir=engine_dir, prompts=prompts, steps=steps, dtype=dtype, seed=seed,
                 max_prompt_len=max_prompt_len, device=device, plugin_library=plugin_library,
                 runtimes=tuple(runtimes), progress=lambda msg: click.echo(f"... {msg}", err=True))
    click.echo(format_report(report))
    if json_out:
        write_report(report, json_out)
    sys.exit(0 if report["ok"] and not (strict and report["not_run"]) else 1)


class _BenchDefault(click.Option):
    """A bench option whose help ends with its default per runtime, read from the bench's settings only
    when help is shown (importing the library at startup would slow every command)."""

    def get_help_record(self, ctx):
        from hymba_deploy.bench.settings import default_help
        opts, text = super().get_help_record(ctx)
        return opts, f"{text}  {default_help(self.name)}"


_CUDA = "cuda runtime: "


@main.command()
@click.option("--runtimes", default=None, cls=_BenchDefault,
              help="What executes the model, comma-separated: torch (the PyTorch reference), onnxruntime, tensorrt, "
                   "cuda (the serving runtime on our CUDA kernels, CUDA graphs; GPU).")
@click.option("--backends", "backends_alias", default=None, hidden=True, help="Old spelling of --runtimes.")
@click.option("--backend", "backend_alias", type=click.Choice(["suite", "cuda"]), default=None, hidden=True,
              help="Old spelling: cuda = --runtimes cuda.")
@click.option("--models", default=None, cls=_BenchDefault, help="Comma-separated presets or checkpoint dirs.")
@click.option("--out", "out_dir", default="bench/out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (the default is git-ignored; bench/results/ holds committed results).")
@click.option("--device", default=None, help="torch runtime's device (default: cuda when available).")
@click.option("--dtype", default=None,
              help="Model dtype for torch and cuda (default: bfloat16 for cuda and for torch on a GPU, else float32).")
@click.option("--onnx-dtype", default="float32", show_default=True, help="dtype of on-the-fly ONNX exports.")
@click.option("--prefill-lengths", default=None, cls=_BenchDefault, help="Prompt lengths.")
@click.option("--decode-batches", default=None, cls=_BenchDefault, help="Decode batches.")
@click.option("--context", default=None, type=int, cls=_BenchDefault, help="Cache length (tokens) for decode.")
@click.option("--warmup", default=2, show_default=True,
              help="Untimed iterations (torch, tensorrt; onnxruntime: at most 1).")
@click.option("--iters", default=None, type=int, cls=_BenchDefault, help="Timed prefill iterations.")
@click.option("--decode-steps", default=None, type=int, cls=_BenchDefault, help="Timed decode steps.")
@click.option("--prefill-only", is_flag=True, help="Measure the prefill only (no decode; cuda: no ablations either).")
@click.option("--paper", is_flag=True, help="torch: also the paper's setup: 8k context, batch 128, halving on OOM.")
@click.option("--onnx", default=None, help="MODEL=DIR,... exported graphs (default: exported on the fly).")
@click.option("--engine", default=None, help="MODEL=DIR,... built engines.")
@click.option("--time-budget", "time_budget_s", default=600.0, show_default=True,
              help="Seconds; later sections are skipped (the cuda runtime's report is not cut short).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights (presets), exports and inputs.")
@click.option("--ort-threads", type=int, default=None, help="ONNX Runtime's intra-op threads (default: one per core).")
@click.option("--ort-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime's device: cuda = the CUDA provider of onnxruntime-gpu, TF32 off for fp32 parity.")
@click.option("--ort-prefill-lengths", default=None, help="ONNX Runtime's prompt lengths (default: --prefill-lengths).")
@click.option("--ort-decode-batches", default=None, help="ONNX Runtime's batches (default: --decode-batches).")
@click.option("--ort-iters", type=int, default=None, help="ONNX Runtime's timed iterations and decode steps.")
@click.option("--plugins", "plugin_library", type=click.Path(dir_okay=False), default=None,
              help="Plugin library for the engines, if its sha256 is the one recorded at build (default: the "
                   "project's build).")
@click.option("--eager-steps", cls=_BenchDefault, type=int, default=None,
              help=_CUDA + "eager decode steps beside the graphs.")
@click.option("--prefill-profile", default=None,
              help=_CUDA + "kernel time by category of the prefill at these lengths (default: the longest "
                           "prefill length; '': none).")
@click.option("--profile-batches", cls=_BenchDefault, default=None,
              help=_CUDA + "kernel time by category of decode at these batches.")
@click.option("--uncompiled-batches", cls=_BenchDefault, default=None,
              help=_CUDA + "ablation: uncompiled elementwise glue.")
@click.option("--no-overlap-batches", cls=_BenchDefault, default=None,
              help=_CUDA + "ablations: attention on the main stream, time-major K/V, SSM stream priority off / on "
                           "(each at these batches).")
@click.option("--gemm-ablation-batches", cls=_BenchDefault, default=None,
              help=_CUDA + "ablation: decode GEMMs on cuBLAS.")
@click.option("--gemm-configs", type=click.Path(dir_okay=False), default=None,
              help=_CUDA + "JSON file of Triton GEMM tilings (tools/gemm_bench.py --best-out) instead of the defaults.")
@click.option("--no-reference", "reference", flag_value=False, default=None,
              help=_CUDA + "skip the reference-kernel baselines.")
@click.option("--ref-steps", cls=_BenchDefault, type=int, default=None,
              help=_CUDA + "decode steps of the eager reference model.")
@click.option("--ref-graph-batches", cls=_BenchDefault, default=None,
              help=_CUDA + "the serving runtime's graphs over the reference kernels at these batches.")
@click.option("--compile-reference-batches", cls=_BenchDefault, default=None,
              help=_CUDA + "the reference model under torch.compile at these batches (compiles for minutes).")
@_user_errors
def bench(runtimes, backends_alias, backend_alias, **options):
    """Prefill latency and decode throughput per runtime: bench.json, bench.md and bench.png in --out (the cuda
    runtime: also serving_cuda_<model>.json and .md). A runtime that cannot run here is reported "not run"."""
    from hymba_deploy.bench.report import to_markdown
    from hymba_deploy.bench.run import bench as run
    from hymba_deploy.bench.settings import CudaSections, from_options
    cuda = {name: options.pop(name) for name in CudaSections.__dataclass_fields__}
    runtimes = runtimes or backends_alias or ("cuda" if backend_alias == "cuda" else None)
    report = run(from_options(runtimes=runtimes, cuda=cuda, **options),
                 progress=lambda msg: click.echo(f"... {msg}", err=True))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
