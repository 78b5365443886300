"""Checkpoint I/O in the Hugging Face layout: `config.json` + `model.safetensors` (or shards listed in
`model.safetensors.index.json`). safetensors and JSON only: nothing is unpickled.

Loading is strict. The safetensors headers are checked against the config before any tensor data is
read (`weight_headers` + `check_weights`, which `info` uses too): missing, unexpected, mis-shaped and
non-float tensors are all collected and reported in one `HymbaDeployError`, by name, shape and file; a
sharded index must agree with its shards. NaN or Inf in the loaded weights is an error naming the tensors. `lm_head.weight` is tied to `model.embed_tokens.weight`: it is
accepted when absent, and when present it must equal the embedding.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import PRESETS, HymbaConfig, preset
from .errors import HymbaDeployError
from .fileio import atomic_write, atomic_write_json, resolve_inside
from .model import HymbaForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TIED = "lm_head.weight"
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}    # safetensors dtype names where weights belong
MAX_HEADER_BYTES = 100 << 20                     # safetensors' own limit

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: torch.dtype | str | None, default: str = "float32") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise HymbaDeployError(f"dtype {dtype}: choose float32, float16 or bfloat16")
        return dtype
    name = default if dtype is None else str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise HymbaDeployError(f"dtype {dtype!r}: choose one of float32, float16, bfloat16 (or fp32, fp16, bf16)")
    return _DTYPES[name]


def _header_error(path: Path, why: str) -> HymbaDeployError:
    return HymbaDeployError(f"{path}: not a readable safetensors file ({why})")


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape) from the JSON header of one safetensors file; no tensor data
    is read. Raises HymbaDeployError naming the file when the header is not one safetensors writes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _header_error(path, f"{size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(prefix, "little")
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise _header_error(path, f"header length {n} does not fit the {size}-byte file")
            header = json.loads(f.read(n))
    except OSError as e:
        raise _header_error(path, e.strerror or str(e)) from None
    except (UnicodeDecodeError, ValueError):
        raise _header_error(path, "the header is not JSON") from None
    if not isinstance(header, dict):
        raise _header_error(path, "the header is not a JSON object")
    data_bytes = size - 8 - n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
              and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)
              and all(type(d) is int and d >= 0 for d in entry["shape"])
              and len(entry["data_offsets"]) == 2 and all(type(o) is int for o in entry["data_offsets"])
              and 0 <= entry["data_offsets"][0] <= entry["data_offsets"][1] <= data_bytes)
        if not ok:
            raise _header_error(path, f"tensor {name!r} has no valid dtype, shape and data_offsets")
        out[name] = (entry["dtype"], tuple(entry["shape"]))
    return out


def _read_index(root: Path) -> dict[str, str]:
    """The weight_map of model.safetensors.index.json: tensor name -> shard file name."""
    index = root / INDEX_FILE
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise HymbaDeployError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise HymbaDeployError(f"{index}: 'weight_map' must map tensor names to shard file names")
    return weight_map


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):                                  # e.g. a NUL byte in the name
        return False


def weight_headers(root: Path) -> dict[str, tuple[str, tuple[int, ...], Path]]:
    """name -> (dtype, shape, file) of every tensor of the checkpoint in `root`, from the safetensors
    headers alone. A sharded checkpoint's index must agree with its shards: every tensor it maps to a
    shard is in that shard, every tensor of a shard is mapped to it, no tensor is in two shards."""
    root = Path(root)
    if (root / SINGLE_FILE).is_file():
        return {k: (*v, root / SINGLE_FILE) for k, v in read_header(root / SINGLE_FILE).items()}
    if not (root / INDEX_FILE).is_file():
        if any(root.glob("*.bin")) or any(root.glob("*.pt")):
            raise HymbaDeployError(f"{root}: only pickle weights (.bin/.pt) found; hymba-deploy loads safetensors only")
        raise HymbaDeployError(f"{root}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    index = root / INDEX_FILE
    weight_map = _read_index(root)
    shards = sorted(set(weight_map.values()))
    paths = {f: resolve_inside(root, f, index) for f in shards}
    missing = [f for f in shards if not _is_file(paths[f])]
    if missing:
        raise HymbaDeployError(f"{index} lists shards that do not exist: {', '.join(map(repr, missing))}")
    out: dict[str, tuple[str, tuple[int, ...], Path]] = {}
    problems = []
    for shard in shards:
        header = read_header(paths[shard])
        for name in sorted(header.keys() & out.keys()):
            problems.append(f"  {name} is in both {out[name][2].name} and {shard}")
        for name in sorted(header.keys() - out.keys()):
            if weight_map.get(name) != shard:
                where = f"maps it to {weight_map[name]}" if name in weight_map else "does not list it"
                problems.append(f"  {name} is in {shard}, but the index {where}")
        for name in sorted(k for k, v in weight_map.items() if v == shard and k not in header):
            problems.append(f"  {name} is not in {shard}, where the index puts it")
        out.update({k: (*v, paths[shard]) for k, v in header.items() if k not in out})
    if problems:
        raise HymbaDeployError(f"{index} does not agree with its shards:\n" + "\n".join(problems[:20])
                               + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else ""))
    return out


def expected_shapes(config: HymbaConfig) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor a checkpoint of `config` holds (computed on the meta device)."""
    from .model import HymbaForCausalLM

    with torch.device("meta"):
        model = HymbaForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights(expected: dict[str, tuple], found: dict[str, tuple[str, tuple[int, ...], Path]]) -> None:
    """Compare the checkpoint's names, shapes and dtypes with the config's; raise one error listing every
    problem (each with the file it is in)."""
    problems = []
    for name in sorted(expected.keys() - found.keys() - {TIED}):
        problems.append(f"  missing     {name} {list(expected[name])}")
    for name in sorted(found.keys() - expected.keys()):
        problems.append(f"  unexpected  {name} {list(found[name][1])} in {found[name][2].name}")
    for name in sorted(expected.keys() & found.keys()):
        dtype, shape, file = found[name]
        if shape != tuple(expected[name]):
            problems.append(f"  wrong shape {name}: {file.name} has {list(shape)}, expected {list(expected[name])}")
        if dtype not in FLOAT_DTYPES:
            problems.append(f"  wrong dtype {name}: {file.name} has {dtype}, expected a float type "
                            f"({', '.join(sorted(FLOAT_DTYPES))})")
    if problems:
        raise HymbaDeployError("checkpoint does not match the config:\n" + "\n".join(problems))


def has_weights(root: Path) -> bool:
    return (Path(root) / SINGLE_FILE).is_file() or (Path(root) / INDEX_FILE).is_file()


def read_state_dict(root: Path, headers: dict[str, tuple[str, tuple[int, ...], Path]]) -> dict[str, torch.Tensor]:
    """The tensors of the files `headers` names. NaN or Inf anywhere is an error naming the tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    bad = []
    for f in sorted({file for _, _, file in headers.values()}):
        try:
            shard = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise HymbaDeployError(f"{f}: not a readable safetensors file ({e})") from None
        bad += [f"{name} ({f.name})" for name, t in shard.items()
                if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        tensors.update(shard)
    if bad:
        raise HymbaDeployError(f"{root}: NaN or Inf in {len(bad)} tensor(s): {', '.join(bad[:10])}"
                               + (" ..." if len(bad) > 10 else ""))
    return tensors


def load_pretrained(path, dtype=None, device="cpu") -> HymbaForCausalLM:
    root = Path(path)
    if not root.is_dir():
        raise HymbaDeployError(f"{root}: not a checkpoint directory")
    config = HymbaConfig.from_json_file(root / "config.json")
    dtype = parse_dtype(dtype, default=config.torch_dtype)
    headers = weight_headers(root)
    check_weights(expected_shapes(config), headers)
    tensors = read_state_dict(root, headers)
    with torch.device("meta"):
        model = HymbaForCausalLM(config)
    if TIED in tensors and not torch.equal(tensors[TIED], tensors["model.embed_tokens.weight"]):
        raise HymbaDeployError(f"{TIED} differs from model.embed_tokens.weight, but the config ties them")
    tensors[TIED] = tensors["model.embed_tokens.weight"]
    state = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.lm_head.weight = model.model.embed_tokens.weight              # re-tie after assign
    return model.eval().requires_grad_(False)


def save_pretrained(model, path) -> None:
    from safetensors.torch import save_file

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != TIED}
    atomic_write(root / SINGLE_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = model.config.to_dict()
    config["torch_dtype"] = str(model.dtype).replace("torch.", "")
    atomic_write_json(root / "config.json", config, sort_keys=True)


def load_model(spec: str, dtype=None, seed: int = 0, device="cpu"):
    """MODEL as the CLI takes it: a preset name (random weights from `seed`) or a checkpoint directory."""
    if model_dir(spec) is None:
        dtype = parse_dtype(dtype, default="float32")
        model = _random_weights(preset(spec), "cpu", torch.Generator().manual_seed(seed))
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return load_pretrained(spec, dtype=dtype, device=device)


def model_dir(spec: str) -> Path | None:
    """MODEL as the CLI takes it: None for a preset name, the directory for a checkpoint directory."""
    if spec in PRESETS:
        return None
    if Path(spec).is_dir():
        return Path(spec)
    raise HymbaDeployError(f"MODEL {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")


def random_model(spec: str, dtype, device, seed: int = 0):
    """A preset with upstream's random init drawn on `device` itself (fast for hymba-1.5b on a GPU; the weights
    differ from `load_model`'s, which draws them on the CPU so that every device sees the same model)."""
    model = _random_weights(preset(spec), device, torch.Generator(device=device).manual_seed(seed))
    return model.to(dtype).eval().requires_grad_(False)


def _random_weights(config, device, generator):
    """HymbaForCausalLM(config) on `device` with tied embeddings and `init_weights(generator)`."""
    with torch.device("meta"):
        model = HymbaForCausalLM(config)
    model = model.to_empty(device=device)
    model.lm_head.weight = model.model.embed_tokens.weight
    with torch.device(device):
        model.init_weights(generator)
    return model


def config_of(spec: str) -> HymbaConfig:
    """MODEL (a preset name or a checkpoint directory) -> its HymbaConfig, without reading any weights."""
    root = model_dir(spec)
    return preset(spec) if root is None else HymbaConfig.from_json_file(root / "config.json")
