"""HymbaConfig: the Hugging Face `config.json` of Hymba, validated, plus built-in presets.

Field names and meanings are upstream's (`configuration_hymba.py`; hymba-architecture.md §1). Derived
sizes (head dims, d_inner, which layers produce or reuse K/V) are properties, so a config read from a
checkpoint and one built from a preset answer the same questions the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import HymbaDeployError


@dataclass
class HymbaConfig:
    vocab_size: int = 32001
    hidden_size: int = 1600
    num_hidden_layers: int = 32
    num_attention_heads: int = 25
    num_key_value_heads: int = 5
    intermediate_size: int = 5504
    hidden_act: str = "silu"
    mlp_hidden_act: str = "silu"
    attn_hidden_size: int = -1          # -1: hidden_size
    kq_head_dim: int = -1               # -1: attn_hidden_size // num_attention_heads
    v_head_dim: int = 128               # upstream recomputes it as d_inner // heads and overwrites
    kq_norm: str = "none"
    rms_norm_eps: float = 1e-6
    # Mamba branch.
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int = 100
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_inner_layernorms: bool = True
    num_mamba: int = 1
    # Meta tokens, attention pattern, KV sharing.
    num_memory_tokens: int = 128
    memory_tokens_interspersed_every: int = 0
    sliding_window: int = 1024
    global_attn_idx: list[int] = field(default_factory=lambda: [0, 15, 31])
    kv_reuse_group: list[list[int]] = field(default_factory=lambda: [
        [1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [16, 17, 18],
        [19, 20], [21, 22], [23, 24], [25, 26], [27, 28], [29, 30]])
    kv_reuse_every_i_layer: int = -1
    kv_weight_reuse: bool = False
    # Rotary embedding: static NTK scaling (§4.1).
    rope: bool = True
    rope_theta: float = 10000.0
    rope_type: str = "ntk"
    max_position_embeddings: int = 8192
    orig_max_position_embeddings: int = 2048
    seq_length: int = 8192
    # MLP ("MoE" with one expert) and head.
    num_experts: int = 1
    num_experts_per_tok: int = 1
    tie_word_embeddings: bool = True
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    torch_dtype: str = "bfloat16"
    # Every other key of config.json (auto_map, layer_type, ...) is kept verbatim for save_pretrained.
    extra: dict = field(default_factory=dict, repr=False)

    # ---- derived sizes ---------------------------------------------------------------------------
    @property
    def attn_dim(self) -> int:
        return self.hidden_size if self.attn_hidden_size in (-1, None) else self.attn_hidden_size

    @property
    def qk_head_dim(self) -> int:
        return self.attn_dim // self.num_attention_heads if self.kq_head_dim in (-1, None) else self.kq_head_dim

    @property
    def d_inner(self) -> int:
        return self.mamba_expand * self.hidden_size

    @property
    def v_dim(self) -> int:
        """Per-head V width. Upstream overwrites `v_head_dim` with d_inner // heads (3200/25 = 128)."""
        return self.d_inner // self.num_attention_heads

    @property
    def kv_producer(self) -> dict[int, int]:
        """layer -> the layer whose K/V it attends over (itself for producers)."""
        owner = {i: i for i in range(self.num_hidden_layers)}
        for group in self.kv_reuse_group:
            for consumer in group[1:]:
                owner[consumer] = group[0]
        return owner

    def is_producer(self, layer: int) -> bool:
        return self.kv_producer[layer] == layer

    def is_global(self, layer: int) -> bool:
        return layer in self.global_attn_idx

    def layer_window(self, layer: int) -> int:
        """The attention window of a layer; 0 for global (plain causal) layers."""
        return 0 if self.is_global(layer) else self.sliding_window

    @property
    def rope_base(self) -> float:
        """Static NTK base: theta·(2·max/orig − 1)^(d/(d−2)); 10000·7^(64/62) ≈ 74534.83 for 1.5B."""
        if self.rope_type != "ntk":
            return self.rope_theta
        factor = 2.0 * self.max_position_embeddings / self.orig_max_position_embeddings - 1.0
        d = self.qk_head_dim
        return self.rope_theta * factor ** (d / (d - 2))

    # ---- validation ------------------------------------------------------------------------------
    def validate(self) -> "HymbaConfig":
        """Raise HymbaDeployError naming the first field that upstream's code could not run with."""
        def bad(name, why):
            raise HymbaDeployError(f"config field {name!r} = {getattr(self, name)!r}: {why}")

        positive = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "intermediate_size", "mamba_d_state", "mamba_d_conv",
                    "mamba_expand", "mamba_dt_rank"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                bad(name, "must be a positive integer")
        if self.num_memory_tokens < 0:
            bad("num_memory_tokens", "must be ≥ 0")
        if self.sliding_window <= 0:
            bad("sliding_window", "must be a positive integer")
        if self.attn_dim % self.num_attention_heads:
            bad("num_attention_heads", f"must divide the attention width {self.attn_dim}")
        if self.d_inner % self.num_attention_heads:
            bad("num_attention_heads", f"must divide d_inner = mamba_expand·hidden_size = {self.d_inner}")
        if self.num_attention_heads % self.num_key_value_heads:
            bad("num_key_value_heads", f"must divide num_attention_heads = {self.num_attention_heads}")
        if self.qk_head_dim % 2:
            bad("kq_head_dim", f"head dim {self.qk_head_dim} must be even for RoPE")
        if self.rope_type not in ("ntk", "default"):
            bad("rope_type", "only 'ntk' (upstream) and 'default' are supported")
        if self.rope_type == "ntk" and self.orig_max_position_embeddings <= 0:
            bad("orig_max_position_embeddings", "must be positive for NTK RoPE")
        for name, value, supported in [
            ("hidden_act", self.hidden_act, ("silu",)),
            ("mlp_hidden_act", self.mlp_hidden_act, ("silu",)),
            ("kq_norm", self.kq_norm, ("none", None)),
            ("num_mamba", self.num_mamba, (1,)),
            ("num_experts", self.num_experts, (1,)),
            ("num_experts_per_tok", self.num_experts_per_tok, (1,)),
            ("memory_tokens_interspersed_every", self.memory_tokens_interspersed_every, (0,)),
            ("mamba_inner_layernorms", self.mamba_inner_layernorms, (True,)),
            ("mamba_proj_bias", self.mamba_proj_bias, (False,)),
            ("kv_weight_reuse", self.kv_weight_reuse, (False,)),
            ("rope", self.rope, (True,)),
            ("tie_word_embeddings", self.tie_word_embeddings, (True,)),
        ]:
            if value not in supported:
                bad(name, f"unsupported: the public Hymba checkpoints use {supported[0]!r}")
        L = self.num_hidden_layers
        if any(not isinstance(i, int) or not 0 <= i < L for i in self.global_attn_idx):
            bad("global_attn_idx", f"every index must be an int in [0, {L})")
        seen: set[int] = set()
        for group in self.kv_reuse_group:
            if not isinstance(group, list) or len(group) < 2:
                bad("kv_reuse_group", f"group {group!r} must list a producer and ≥ 1 consumer")
            for i in group:
                if not isinstance(i, int) or not 0 <= i < L:
                    bad("kv_reuse_group", f"layer {i!r} is not an int in [0, {L})")
                if i in seen:
                    bad("kv_reuse_group", f"layer {i} appears in more than one place")
                seen.add(i)
            if sorted(group) != group:
                bad("kv_reuse_group", f"group {group} must be in increasing order (producer first)")
            if len({self.is_global(i) for i in group}) != 1:
                bad("kv_reuse_group", f"group {group} mixes global and sliding-window layers")
        self._validate_per_layer_fields()
        return self

    def _validate_per_layer_fields(self) -> None:
        """Upstream's per-layer fields, kept in `extra`, must have one entry per layer: `layer_type` a
        list of "h" (hybrid), `conv_dim` a {"0": d_inner, ...} object (hymba-architecture.md §1)."""
        L = self.num_hidden_layers
        if "layer_type" in self.extra:
            value = self.extra["layer_type"]
            if not isinstance(value, list) or len(value) != L:
                raise HymbaDeployError(f"config field 'layer_type': must be a list of {L} entries, one per layer "
                                       f"(num_hidden_layers = {L}), not {_summary(value)}")
            if any(t != "h" for t in value):
                raise HymbaDeployError(f"config field 'layer_type' = {value!r}: every layer must be 'h' (hybrid)")
        if "conv_dim" in self.extra:
            value = self.extra["conv_dim"]
            if not isinstance(value, dict) or len(value) != L or set(value) != {str(i) for i in range(L)}:
                raise HymbaDeployError(f"config field 'conv_dim': must be an object with one entry per layer, keys "
                                       f"\"0\" to \"{L - 1}\" (num_hidden_layers = {L}), not {_summary(value)}")
            wrong = {k: v for k, v in value.items() if v != self.d_inner or isinstance(v, bool)}
            if wrong:
                raise HymbaDeployError(f"config field 'conv_dim': layers {', '.join(sorted(wrong, key=int))} "
                                       f"differ from d_inner = mamba_expand·hidden_size = {self.d_inner}")

    # ---- I/O ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> "HymbaConfig":
        if not isinstance(data, dict):
            raise HymbaDeployError("config.json must hold a JSON object")
        if data.get("model_type", "hymba") != "hymba":
            raise HymbaDeployError(f"config field 'model_type' = {data['model_type']!r}: not a Hymba config")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        cfg = cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})
        for f in fields(cls):
            if f.name == "extra":
                continue
            value, default = getattr(cfg, f.name), getattr(cls(), f.name)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise HymbaDeployError(f"config field {f.name!r} = {value!r}: must be true or false")
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
                    raise HymbaDeployError(f"config field {f.name!r} = {value!r}: must be a finite number")
                if isinstance(default, float):
                    setattr(cfg, f.name, float(value))
                elif value != int(value):
                    raise HymbaDeployError(f"config field {f.name!r} = {value!r}: must be an integer")
                else:
                    setattr(cfg, f.name, int(value))
            if isinstance(default, list) and not isinstance(value, list):
                raise HymbaDeployError(f"config field {f.name!r} = {value!r}: must be a list")
        return cfg.validate()

    @classmethod
    def from_json_file(cls, path: str | Path) -> "HymbaConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise HymbaDeployError(f"{path}: no config.json there") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HymbaDeployError(f"{path}: not a readable JSON file ({e})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        data.update(self.extra)
        data.setdefault("model_type", "hymba")
        data.setdefault("architectures", ["HymbaForCausalLM"])
        # Upstream fields that are pure functions of the ones above, written for compatibility.
        data["conv_dim"] = {str(i): self.d_inner for i in range(self.num_hidden_layers)}
        data["layer_type"] = ["h"] * self.num_hidden_layers
        data["v_head_dim"] = self.v_dim
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _summary(value) -> str:
    """`value` for a message: a list or object by its length and type, anything else as repr."""
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'object'} of {len(value)} entries"
    return repr(value)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:                   # an int beyond float range
        return False


def _tiny() -> HymbaConfig:
    """Every Hymba feature at toy size: 8 meta tokens, a 16-token window that binds at short lengths,
    global layers 0 and 3 and 7, a 2-layer KV group [1, 2] and a 3-layer group [4, 5, 6]."""
    return HymbaConfig(
        vocab_size=257, hidden_size=64, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=96, v_head_dim=32,
        mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8,
        num_memory_tokens=8, sliding_window=16,
        global_attn_idx=[0, 3, 7], kv_reuse_group=[[1, 2], [4, 5, 6]],
        max_position_embeddings=512, orig_max_position_embeddings=128, seq_length=512,
        torch_dtype="float32",
    )


PRESETS = {
    "hymba-1.5b": HymbaConfig,   # the public nvidia/Hymba-1.5B-Base shapes (the dataclass defaults)
    "tiny": _tiny,
}


def preset(name: str) -> HymbaConfig:
    if name not in PRESETS:
        raise HymbaDeployError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]().validate()

