"""`hymba-deploy generate`: greedy generation for one batch of prompts of any lengths, from the PyTorch
reference or from what was deployed (the exported graphs in ONNX Runtime, the engines, the `cuda` serving
runtime). Each row gets exactly the tokens its prompt gets alone (the ragged-batch contract).

Every backend is an object with `generate(prompts: list[list[int]], max_new_tokens) -> list[list[int]]`
(the new tokens of each prompt, in order), made by `open_backend`. A backend that cannot run on this machine
(engines without a GPU they run on, the cuda runtime without a CUDA device) raises `NotRun` with the reason;
bad input raises HymbaDeployError naming the option or file at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import config_of, load_model, model_dir, parse_dtype
from .contract import graph_file
from .errors import HymbaDeployError
from .runtime.greedy import pad_prompts

BACKENDS = ("reference", "onnxruntime", "tensorrt", "cuda")
DEVICES = ("cpu", "cuda")


class NotRun(Exception):
    """The backend cannot run on this machine; str(e) is the reason."""


# ---- prompts ---------------------------------------------------------------------------------------------
def parse_ids(text: str, where: str = "--ids") -> list[int]:
    """"1, 2,3" -> [1, 2, 3]; `where` names the source in the error (an option, or FILE:LINE)."""
    try:
        ids = [int(t) for t in text.replace(" ", "").replace("\t", "").split(",") if t]
    except ValueError:
        raise HymbaDeployError(f"{where} {text.strip()[:60]!r}: expected comma-separated integers such as 1,2,3") from None
    if not ids:
        raise HymbaDeployError(f"{where} is empty")
    return ids


def read_ids_file(path) -> list[list[int]]:
    """One comma-separated prompt per line of `path` (blank lines skipped); a bad line names the file and its
    line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HymbaDeployError(f"--ids-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HymbaDeployError(f"--ids-file {path}: not a readable text file ({e})") from None
    prompts = [parse_ids(line, f"{path}:{n}:") for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not prompts:
        raise HymbaDeployError(f"--ids-file {path}: no prompts (one comma-separated prompt per line)")
    return prompts


def load_tokenizer(spec: str, required: bool):
    """The checkpoint's tokenizer.json as a `tokenizers.Tokenizer`; None when absent and not `required`."""
    root = model_dir(spec)
    path = (root or Path(spec)) / "tokenizer.json"
    if not path.is_file():
        if required:
            raise HymbaDeployError(f"--prompt needs a tokenizer: {path} does not exist (use --ids instead)")
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        if required:
            raise HymbaDeployError("--prompt needs the 'tokenizers' package: pip install tokenizers") from None
        return None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:                                  # the Rust library raises a bare Exception
        raise HymbaDeployError(f"{path}: not a readable tokenizer ({e})") from None


def check_request(config, ids: list[int], max_new_tokens: int, limit: int | None = None,
                  limit_name: str | None = None) -> None:
    """Refuse, before any weights are loaded, a request the model cannot serve: token ids outside the
    vocabulary, or a prompt plus new tokens beyond `limit` tokens (default: the config's `seq_length`, the
    context the model holds; an export's or engine's own limit is named by `limit_name`)."""
    vocab = config.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise HymbaDeployError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    if max_new_tokens < 0:
        raise HymbaDeployError(f"--max-new-tokens {max_new_tokens}: must be ≥ 0")
    if limit is None:
        limit, limit_name = config.seq_length, "the model holds (config field 'seq_length')"
    if len(ids) + max_new_tokens > limit:
        raise HymbaDeployError(
            f"--max-new-tokens {max_new_tokens}: the {len(ids)}-token prompt plus {max_new_tokens} new tokens exceed "
            f"the {limit} tokens {limit_name}; give at most {max(0, limit - len(ids))}")


# ---- backends --------------------------------------------------------------------------------------------
class ReferenceBackend:
    """The PyTorch reference: `HymbaForCausalLM.generate` over the right-padded batch and its lengths."""

    def __init__(self, model, eviction: str):
        self.model, self.eviction = model, eviction

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        ids, lengths = pad_prompts(prompts)
        device = self.model.device
        out = self.model.generate(torch.from_numpy(ids).to(device), max_new_tokens, eviction=self.eviction,
                                  lengths=torch.from_numpy(lengths).to(device))
        return out[:, ids.shape[1]:].tolist()


class ServingBackend:
    """The serving runtime around `model` (on the cuda kernels: the `cuda` backend): `ServingRuntime.generate(
    input_ids, max_new_tokens, sampling, lengths=...)` (greedy), one bucket of the batch's size."""

    def __init__(self, model, eviction: str):
        self.model, self.eviction = model, eviction

    @classmethod
    def on_cuda(cls, spec: str, dtype, seed: int, eviction: str) -> "ServingBackend":
        """MODEL on the GPU with the cuda kernels; NotRun without a CUDA device."""
        if not torch.cuda.is_available():
            raise NotRun("no CUDA device")
        from .cuda import load_model as load_on_cuda
        return cls(load_on_cuda(spec, dtype=dtype, seed=seed), eviction)

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        from .serving import SamplingParams, ServingConfig, ServingRuntime
        ids, lengths = pad_prompts(prompts)
        runtime = ServingRuntime(self.model, ServingConfig(max_context=ids.shape[1] + max_new_tokens,
                                                           buckets=(len(prompts),), eviction=self.eviction))
        device = runtime.device
        out = runtime.generate(torch.from_numpy(ids).to(device), max_new_tokens, SamplingParams(),
                               lengths=torch.from_numpy(lengths).to(device))
        return out[:, ids.shape[1]:].tolist()


@dataclass
class Artifact:
    """What a deployed backend was made from: MODEL's config, its eviction rule and dtype, and the longest
    prompt plus new tokens it takes (`limit`, named by `limit_name`)."""
    config: object
    eviction: str
    dtype: str
    limit: int
    limit_name: str
    batch_limit: int | None = None


def _onnxruntime(spec: str, onnx_dir, device: str, seed: int, need_decode: bool):
    """(GreedyGenerator over the export's graphs in ONNX Runtime on `device`, Artifact); the export verified
    against its manifest and MODEL."""
    from .engine.onnx_inputs import load_ours, metadata
    from .exporters.manifest import read_manifest, verify_export
    from .runtime import OnnxRuntimeRunner
    from .runtime.greedy import GreedyGenerator
    from .runtime.onnxruntime_runner import providers_for
    if onnx_dir is None:
        raise HymbaDeployError("--backend onnxruntime needs --onnx DIR (a folder written by `hymba-deploy export`)")
    folder = Path(onnx_dir)
    graphs = ["prefill", "decode"] if need_decode else ["prefill"]
    verify_export(folder, graphs)
    metas = {g: metadata(load_ours(folder / graph_file(g))) for g in graphs}
    config = _matching_config(spec, seed, folder, metas["prefill"]["config"], read_manifest(folder))
    providers = providers_for(device)
    runners = {g: OnnxRuntimeRunner(folder / graph_file(g), providers) for g in graphs}
    meta = metas["prefill"]
    cache_io = json.loads(metas["decode"]["cache_io"]) if need_decode else []
    gen = GreedyGenerator(runners["prefill"], runners.get("decode"), cache_io, config.num_memory_tokens,
                          meta.get("prefill_logits", "all"))
    max_seq = int(meta["max_seq_len"])
    return gen, Artifact(config, meta["eviction"], meta["dtype"], max_seq,
                         f"{folder} was exported for (--max-seq-len {max_seq})")


def _matching_config(spec: str, seed: int, folder: Path, config_json: str, manifest: dict):
    """MODEL's config, which must be the export's (metadata hymba.config); a preset must also have been exported
    with the same --seed (its random weights)."""
    from .config import HymbaConfig
    config = config_of(spec)
    theirs = HymbaConfig.from_dict(json.loads(config_json)).to_dict()
    ours = config.to_dict()
    if theirs != ours:
        fields = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise HymbaDeployError(f"--onnx {folder} was exported from another model: its config differs from {spec}'s "
                               f"in {', '.join(fields[:5])}; pass the MODEL used for `hymba-deploy export`")
    if model_dir(spec) is None and manifest.get("model") == spec and manifest.get("seed") not in (None, seed):
        raise HymbaDeployError(f"--onnx {folder} was exported from {spec} with --seed {manifest['seed']} (its random "
                               f"weights), not --seed {seed}")
    return config


def _tensorrt(spec: str, engine_dir, plugin_library, need_decode: bool):
    """(GreedyGenerator over the engines of --engine DIR, Artifact); NotRun when they cannot run here."""
    from .cache import HybridMambaAttentionDynamicCache as Cache
    from .contract import POSITIONS_INPUT as POSITIONS
    from .engine import artifact
    from .runtime import TensorRTRunner
    from .runtime.greedy import GreedyGenerator
    from .runtime.tensorrt_runner import engine_unavailable
    if engine_dir is None:
        raise HymbaDeployError("--backend tensorrt needs --engine DIR (a folder written by `hymba-deploy build`)")
    folder = Path(engine_dir)
    artifact.engine_files(folder)
    graphs = ["prefill", "decode"] if need_decode else ["prefill"]
    engines = {}
    for g in graphs:
        path = folder / f"{g}{artifact.ENGINE_SUFFIX}"
        if not path.is_file():
            raise HymbaDeployError(f"--engine {folder}: {path.name} not found; build it with `hymba-deploy build`")
        engines[g] = (path, artifact.read_engine(path))
    for path, _ in engines.values():
        reason = engine_unavailable(path, plugin_library)
        if reason:
            raise NotRun(reason)
    config = config_of(spec)
    cache_io = Cache.io_pairs(config)
    if need_decode:                                       # MODEL's cache must be the decode engine's I/O
        want = {"input_ids", POSITIONS} | {name for name, _, _ in Cache.state_names(config)}
        got = {t["name"] for t in engines["decode"][1]["io"]["inputs"]}
        if got != want:
            raise HymbaDeployError(f"--engine {folder}: the decode engine's inputs are not those of {spec} "
                                   f"(differ in {', '.join(sorted(got ^ want)[:4])})")
    sidecar = engines["prefill"][1]
    logits = next(t for t in sidecar["io"]["outputs"] if t["name"] == "logits")
    axes = sidecar["profiles"][0]["axes"]
    gen = GreedyGenerator(*(TensorRTRunner(engines[g][0], user_library=plugin_library) if g in engines else None
                            for g in ("prefill", "decode")), cache_io, config.num_memory_tokens,
                          "last" if logits["shape"][1] == 1 else "all")
    return gen, Artifact(config, sidecar.get("eviction") or "upstream", sidecar.get("model_dtype") or "float32",
                         int(axes["seq"][2]), f"the engines' profile holds (seq max {axes['seq'][2]})",
                         int(axes["batch"][2]))


# ---- the command -----------------------------------------------------------------------------------------
def generate(spec: str, ids: list[list[int]] | None = None, prompts: list[str] | None = None,
             max_new_tokens: int = 16, backend: str = "reference", onnx_dir=None, engine_dir=None,
             device: str | None = None, dtype: str | None = None, eviction: str | None = None, seed: int = 0,
             plugin_library=None) -> dict:
    """One batch: `ids` (token ids per prompt) or `prompts` (texts, through the checkpoint's tokenizer).
    Returns {"backend", "device", "notes": [...], "rows": [{"prompt_ids", "new_ids"[, "text"]}, ...]} in input
    order; raises NotRun when `backend` cannot run here.

    `device` ("cpu" | "cuda", default cpu) is where the reference or ONNX Runtime runs (cuda: the CUDA
    provider, TF32 off); tensorrt and cuda run on the GPU. `dtype` / `eviction` default to the artifact's for
    the deployed backends (another value is an error: both are fixed at export), else to the checkpoint's
    dtype and "upstream". Every limit is checked before weights are loaded."""
    if backend not in BACKENDS:
        raise HymbaDeployError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    device = _device(backend, device)
    config = config_of(spec)
    ids, tokenizer = _prompt_ids(spec, ids, prompts)
    for prompt in ids:
        check_request(config, prompt, max_new_tokens)
    if dtype is not None:
        dtype = str(parse_dtype(dtype)).replace("torch.", "")
    notes = []
    if backend in ("onnxruntime", "tensorrt"):
        new = _deployed(spec, backend, ids, max_new_tokens, onnx_dir, engine_dir, device, dtype, eviction, seed,
                        plugin_library)
        if backend == "onnxruntime" and device == "cuda":
            notes.append("onnxruntime CUDA provider with TF32 off (use_tf32=0) for fp32 parity with the CPU")
    elif backend == "cuda":
        new = ServingBackend.on_cuda(spec, dtype, seed, eviction or "upstream").generate(ids, max_new_tokens)
    else:
        if device == "cuda" and not torch.cuda.is_available():
            raise NotRun("no CUDA device")
        model = load_model(spec, dtype=dtype, seed=seed, device=device)
        new = ReferenceBackend(model, eviction or "upstream").generate(ids, max_new_tokens)
    rows = []
    for prompt, tokens in zip(ids, new):
        row = {"prompt_ids": prompt, "new_ids": tokens}
        if tokenizer is not None:
            row["text"] = tokenizer.decode(tokens)
        rows.append(row)
    return {"backend": backend, "device": device, "notes": notes, "rows": rows}


def _device(backend: str, device: str | None) -> str:
    if device is not None and device not in DEVICES:
        raise HymbaDeployError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    if backend in ("tensorrt", "cuda"):
        if device == "cpu":
            raise HymbaDeployError(f"--device cpu: --backend {backend} runs on the GPU only")
        return "cuda"
    return device or "cpu"


def _prompt_ids(spec: str, ids, prompts) -> tuple[list[list[int]], object]:
    """(token ids per prompt, the checkpoint's tokenizer or None)."""
    if (ids is None) == (prompts is None):
        raise HymbaDeployError("give exactly one of --ids, --ids-file and --prompt")
    tokenizer = load_tokenizer(spec, required=prompts is not None)
    if prompts is not None:
        ids = [tokenizer.encode(p).ids for p in prompts]
        if any(not p for p in ids):
            raise HymbaDeployError("--prompt: a prompt encodes to no tokens")
    if not ids:
        raise HymbaDeployError("no prompts given")
    return ids, tokenizer


def _deployed(spec, backend, ids, max_new_tokens, onnx_dir, engine_dir, device, dtype, eviction, seed,
              plugin_library) -> list[list[int]]:
    """The new tokens from the export's graphs in ONNX Runtime or from the engines, after checking the request
    against what they were made with."""
    need_decode = max_new_tokens > 1
    gen, art = (_onnxruntime(spec, onnx_dir, device, seed, need_decode) if backend == "onnxruntime"
                else _tensorrt(spec, engine_dir, plugin_library, need_decode))
    where = f"--onnx {onnx_dir}" if backend == "onnxruntime" else f"--engine {engine_dir}"
    for option, asked, fixed in (("--dtype", dtype, art.dtype), ("--eviction", eviction, art.eviction)):
        if asked is not None and asked != fixed:
            raise HymbaDeployError(f"{option} {asked}: {where} was made with {fixed} (fixed at export); omit "
                                   f"{option} or re-export")
    for prompt in ids:
        check_request(art.config, prompt, max_new_tokens, art.limit, art.limit_name)
    if art.batch_limit is not None and len(ids) > art.batch_limit:
        raise HymbaDeployError(f"{len(ids)} prompts: the engines' profile holds at most {art.batch_limit}")
    return _run_graphs(gen, ids, max_new_tokens)


def _run_graphs(gen, ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    runners = [r for r in (gen.prefill, gen.decode) if r is not None]
    try:
        for r in runners:
            r.activate()
        return gen.generate(ids, max_new_tokens)
    finally:
        for r in runners:
            r.deactivate()


def format_rows(result: dict) -> str:
    """One line per prompt, in input order: the new token ids comma-separated, then (where a tokenizer is
    present) a tab and the decoded text as a JSON string (so it stays on its line)."""
    lines = []
    for row in result["rows"]:
        line = ",".join(map(str, row["new_ids"]))
        if "text" in row:
            line += "\t" + json.dumps(row["text"], ensure_ascii=False)
        lines.append(line)
    return "\n".join(lines)
