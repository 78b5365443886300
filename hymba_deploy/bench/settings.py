"""What `hymba-deploy bench` measures and how: the runtimes, their defaults, and one settings object.

A *runtime* is what executes the model: `torch` (the PyTorch reference, eager), `onnxruntime` (the exported
graphs), `tensorrt` (built engines) and `cuda` (the serving runtime on our CUDA kernels: CUDA graphs,
GPU only). An option left out takes its runtime's default (`DEFAULTS`): the cuda runtime is measured at
the paper's serving setup, the others at sizes a CPU finishes in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import HymbaDeployError

RUNTIMES = ("torch", "onnxruntime", "tensorrt", "cuda")
DEFAULT_OUT = "bench/out"
PAPER = {"context": 8192, "batch": 128}        # the Hymba paper's decode throughput setup (torch --paper)

# Defaults of the options a user leaves out, by runtime ("suite": torch, onnxruntime, tensorrt).
DEFAULTS = {
    "suite": {"models": ("tiny",), "prefill_lengths": (128, 512, 2048), "decode_batches": (1, 8, 32),
              "context": 1024, "decode_steps": 16, "iters": 10},
    "cuda": {"models": ("hymba-1.5b",), "prefill_lengths": (1024, 4096, 8192), "decode_batches": (1, 8, 32, 128),
             "context": 8192, "decode_steps": 32, "iters": 3},
}


def default_help(name: str) -> str:
    """The default of option `name` for the CLI's help: '[default: torch, onnxruntime, tensorrt: X; cuda: Y]'
    for those with a default per runtime, else '[default: X]' (a `BenchSettings` or `CudaSections` field's)."""
    show = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    if name in DEFAULTS["suite"]:
        return (f"[default: torch, onnxruntime, tensorrt: {show(DEFAULTS['suite'][name])}; "
                f"cuda: {show(DEFAULTS['cuda'][name])}]")
    fields = {**BenchSettings.__dataclass_fields__, **CudaSections.__dataclass_fields__}
    value = fields[name].default
    return f"[default: {show(value) if value not in ((), None) else 'none'}]"


@dataclass(frozen=True)
class CudaSections:
    """The cuda runtime's extra measurements (`bench.serving`): eager steps beside the graphs, the
    reference baselines, kernel profiles and ablations, each at its own batches (empty: not measured)."""
    eager_steps: int = 4
    reference: bool = True
    ref_steps: int = 3
    ref_graph_batches: tuple[int, ...] = (1, 8)
    compile_reference_batches: tuple[int, ...] = ()
    profile_batches: tuple[int, ...] = (1, 8, 32, 128)        # every default decode batch
    prefill_profile: tuple[int, ...] | None = None      # None: the longest prefill length
    uncompiled_batches: tuple[int, ...] = (1, 128)
    no_overlap_batches: tuple[int, ...] = (1, 128)
    gemm_ablation_batches: tuple[int, ...] = (1, 8, 32, 128)
    gemm_configs: str | None = None                     # JSON tilings file (tools/gemm_bench.py --best-out)


@dataclass(frozen=True)
class BenchSettings:
    """One bench run. Fields left None take each runtime's default (`DEFAULTS`, `for_runtime`).
    The `ort_*` fields narrow ONNX Runtime on the CPU (None: as the others)."""
    runtimes: tuple[str, ...] = ("torch", "onnxruntime")
    models: tuple[str, ...] | None = None
    out_dir: str = DEFAULT_OUT
    device: str | None = None                   # torch's device (default: cuda when available)
    dtype: str | None = None                    # default: bfloat16 (cuda; torch on a GPU), else float32
    onnx_dtype: str = "float32"
    prefill_lengths: tuple[int, ...] | None = None
    decode_batches: tuple[int, ...] | None = None
    context: int | None = None
    warmup: int = 2
    iters: int | None = None
    decode_steps: int | None = None
    prefill_only: bool = False
    paper: bool = False
    onnx_dirs: dict | None = None
    engine_dirs: dict | None = None
    time_budget_s: float = 600.0
    seed: int = 0
    ort_threads: int | None = None
    ort_device: str = "cpu"                     # ONNX Runtime's provider: cpu, or cuda (the CUDA provider, TF32 off)
    ort_prefill_lengths: tuple[int, ...] | None = None
    ort_decode_batches: tuple[int, ...] | None = None
    ort_iters: int | None = None
    plugin_library: str | None = None
    cuda: CudaSections = field(default_factory=CudaSections)

    def __post_init__(self):
        bad = [r for r in self.runtimes if r not in RUNTIMES]
        if bad or not self.runtimes:
            raise HymbaDeployError(f"--runtimes {','.join(bad) or '(none)'}: choose from {', '.join(RUNTIMES)}")

    def for_runtime(self, runtime: str) -> "BenchSettings":
        """These settings with every None default filled in for `runtime`: what it really runs with (ONNX
        Runtime: its `ort_*` narrowing, one warm-up, no more decode steps than iterations; no decode batches
        with `prefill_only`)."""
        d = DEFAULTS["cuda" if runtime == "cuda" else "suite"]
        s = replace(self, **{k: v for k, v in d.items() if getattr(self, k) is None})
        if s.dtype is None:                     # the cuda runtime, and torch on a GPU: bfloat16
            on_gpu = runtime == "cuda" or (runtime == "torch" and (s.device or "").startswith("cuda"))
            s = replace(s, dtype="bfloat16" if on_gpu else "float32")
        if runtime == "onnxruntime":            # on the CPU here: one warm-up, fewer steps than iterations
            iters = self.ort_iters or s.iters
            s = replace(s, prefill_lengths=self.ort_prefill_lengths or s.prefill_lengths,
                        decode_batches=self.ort_decode_batches or s.decode_batches, iters=iters,
                        warmup=min(s.warmup, 1), decode_steps=min(s.decode_steps, iters))
        return replace(s, decode_batches=()) if self.prefill_only else s

    def plan(self) -> list[tuple[str, str]]:
        """(model, runtime) pairs in run order: models first, then runtimes as requested."""
        models: list[str] = []
        for runtime in self.runtimes:
            models += [m for m in self.for_runtime(runtime).models if m not in models]
        return [(m, r) for m in models for r in self.runtimes if m in self.for_runtime(r).models]


def parse_ints(value, name: str) -> tuple[int, ...] | None:
    """'1,8,32' (or a sequence) -> (1, 8, 32); None and '' stay None (the default); else positive
    integers or a HymbaDeployError naming --`name`."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        out = tuple(int(v) for v in value)
    else:
        try:
            out = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            raise HymbaDeployError(f"--{name} {value!r}: expected comma-separated integers") from None
    if not out or min(out) < 1:
        raise HymbaDeployError(f"--{name} {value!r}: expected positive integers")
    return out


def parse_batches(value, name: str) -> tuple[int, ...]:
    """Like `parse_ints`, but '' is an empty tuple (measure at no batch)."""
    return parse_ints(value, name) or ()


def parse_names(value) -> tuple[str, ...] | None:
    """'a,b' (or a sequence) -> ('a', 'b'); None and '' stay None."""
    if not value:
        return None
    return tuple(v for v in (value.split(",") if isinstance(value, str) else value) if v)


def parse_pairs(value, name: str) -> dict | None:
    """'tiny=DIR,hymba-1.5b=DIR2' (or a dict) -> {model: dir}."""
    if not value:
        return None
    if isinstance(value, dict):
        return value
    out = {}
    for item in str(value).split(","):
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise HymbaDeployError(f"--{name} {value!r}: expected MODEL=DIR[,MODEL=DIR...]")
        out[key] = path
    return out


def from_options(runtimes=None, models=None, prefill_lengths=None, decode_batches=None, onnx=None, engine=None,
                 ort_prefill_lengths=None, ort_decode_batches=None, cuda: dict | None = None, **rest) -> BenchSettings:
    """BenchSettings from the CLI's option values (comma-separated strings as typed; None: the default).
    `cuda`: CudaSections fields, batch lists as strings ('' measures at no batch)."""
    sections = {}
    for key, value in (cuda or {}).items():
        if value is None:
            continue
        if key.endswith("_batches") or key == "prefill_profile":
            value = parse_batches(value, key.replace("_", "-"))
        sections[key] = value
    return BenchSettings(
        runtimes=parse_names(runtimes) or BenchSettings.runtimes, models=parse_names(models),
        prefill_lengths=parse_ints(prefill_lengths, "prefill-lengths"),
        decode_batches=parse_ints(decode_batches, "decode-batches"),
        ort_prefill_lengths=parse_ints(ort_prefill_lengths, "ort-prefill-lengths"),
        ort_decode_batches=parse_ints(ort_decode_batches, "ort-decode-batches"),
        onnx_dirs=parse_pairs(onnx, "onnx"), engine_dirs=parse_pairs(engine, "engine"),
        cuda=CudaSections(**sections), **rest)
