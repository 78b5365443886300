"""Checkpoint I/O in the Hugging Face layout: `config.json` + `model.safetensors` (or shards listed in
`model.safetensors.index.json`). safetensors and JSON only: nothing is unpickled.

Loading is strict. Missing, unexpected and mis-shaped tensors are all collected and reported in one
`HymbaDeployError`, by name and shape. `lm_head.weight` is tied to `model.embed_tokens.weight`: it is
accepted when absent, and when present it must equal the embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import HymbaConfig
from .errors import HymbaDeployError
from .fileio import atomic_write, atomic_write_json, resolve_inside

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TIED = "lm_head.weight"

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


def _shard_files(root: Path) -> list[Path]:
    if (root / SINGLE_FILE).is_file():
        return [root / SINGLE_FILE]
    if (root / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((root / INDEX_FILE).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HymbaDeployError(f"{root / INDEX_FILE}: not a safetensors index ({e})") from None
        files = sorted(set(map(str, weight_map.values())))
        paths = [resolve_inside(root, f, root / INDEX_FILE) for f in files]
        missing = [f for f, p in zip(files, paths) if not p.is_file()]
        if missing:
            raise HymbaDeployError(f"{root / INDEX_FILE} lists shards that do not exist: {', '.join(missing)}")
        return paths
    if any(root.glob("*.bin")) or any(root.glob("*.pt")):
        raise HymbaDeployError(f"{root}: only pickle weights (.bin/.pt) found; hymba-deploy loads safetensors only")
    raise HymbaDeployError(f"{root}: neither {SINGLE_FILE} nor {INDEX_FILE} found")


def read_state_dict(root: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in _shard_files(root):
        try:
            shard = load_file(str(f))
        except (SafetensorError, OSError) as e:
            raise HymbaDeployError(f"{f}: not a readable safetensors file ({e})") from None
        dup = tensors.keys() & shard.keys()
        if dup:
            raise HymbaDeployError(f"{f}: tensors repeated across shards: {', '.join(sorted(dup)[:5])}")
        tensors.update(shard)
    return tensors


def check_state_dict(expected: dict[str, tuple], found: dict[str, torch.Tensor]) -> None:
    """Compare names and shapes; raise one error listing every problem."""
    problems = []
    for name in sorted(expected.keys() - found.keys() - {TIED}):
        problems.append(f"  missing     {name} {list(expected[name])}")
    for name in sorted(found.keys() - expected.keys()):
        problems.append(f"  unexpected  {name} {list(found[name].shape)}")
    for name in sorted(expected.keys() & found.keys()):
        if tuple(found[name].shape) != tuple(expected[name]):
            problems.append(f"  wrong shape {name}: file {list(found[name].shape)}, expected {list(expected[name])}")
    if problems:
        raise HymbaDeployError("checkpoint does not match the config:\n" + "\n".join(problems))


def load_pretrained(cls, path, dtype=None, device="cpu"):
    root = Path(path)
    if not root.is_dir():
        raise HymbaDeployError(f"{root}: not a checkpoint directory")
    config = HymbaConfig.from_json_file(root / "config.json")
    dtype = parse_dtype(dtype, default=config.torch_dtype)
    with torch.device("meta"):
        model = cls(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tensors = read_state_dict(root)
    check_state_dict(expected, tensors)
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
    from .config import PRESETS, preset
    from .model import HymbaForCausalLM

    if spec in PRESETS:
        config = preset(spec)
        dtype = parse_dtype(dtype, default="float32")
        generator = torch.Generator().manual_seed(seed)
        with torch.device("meta"):
            model = HymbaForCausalLM(config)
        model = model.to_empty(device="cpu")
        model.lm_head.weight = model.model.embed_tokens.weight
        model.init_weights(generator)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if Path(spec).is_dir():
        return HymbaForCausalLM.from_pretrained(spec, dtype=dtype, device=device)
    raise HymbaDeployError(f"MODEL {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
