"""The Llama architecture's shape: read from a Hugging Face ``config.json`` or a named preset.

One dataclass carries every number the model code needs. ``from_hf_dict`` accepts both the
transformers 4.x spelling (``rope_theta`` + ``rope_scaling``) and the 5.x one (``rope_parameters``).
Every config is checked when built (``__post_init__``): positive sizes, heads that divide, an even head_dim,
BOS/EOS inside the vocabulary, positive ``rope_theta`` / ``rms_norm_eps``. A checkpoint of another
architecture or with an impossible number is refused with a one-line ``ModelError`` naming file and field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from phase0_prototype.errors import ModelError, read_json, require

LLAMA_ARCHITECTURES = {"LlamaForCausalLM"}
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
COUNTS = REQUIRED_KEYS + ("num_key_value_heads", "head_dim", "max_position_embeddings")
ROPE_SCALING_KEYS = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                                        "original_max_position_embeddings")}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ModelError(message)


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear"|"llama3", ...} or None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: tuple[int, ...] = field(default=(2,))

    def __post_init__(self) -> None:
        """Refuse numbers no Llama can have, each as one ``ModelError`` naming the field."""
        for name in COUNTS:
            value = getattr(self, name)
            _check(_is_int(value) and value > 0, f"{name}={value!r} must be a positive integer")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf,
                   f"{name}={value!r} must be a positive number")
            object.__setattr__(self, name, float(value))
        _check(self.num_attention_heads % self.num_key_value_heads == 0,
               f"num_attention_heads={self.num_attention_heads} is not a multiple of "
               f"num_key_value_heads={self.num_key_value_heads}")
        _check(self.head_dim % 2 == 0, f"head_dim={self.head_dim} must be even (RoPE rotates channel pairs)")
        specials = [("bos_token_id", self.bos_token_id)] if self.bos_token_id is not None else []
        for name, token in specials + [("eos_token_id", t) for t in self.eos_token_id]:
            _check(_is_int(token) and 0 <= token < self.vocab_size,
                   f"{name}={token!r} is outside the vocabulary [0, {self.vocab_size})")
        scaling = self.rope_scaling
        if scaling is not None:
            kind = scaling.get("rope_type") if isinstance(scaling, dict) else None
            _check(isinstance(kind, str) and kind in ROPE_SCALING_KEYS,
                   f"rope scaling {kind or scaling!r} is not supported (supported: linear, llama3)")
            for key in ROPE_SCALING_KEYS[kind]:
                value = scaling.get(key)
                _check(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
                       f"rope scaling {key}={value!r} must be a positive number")
            _check(kind != "llama3" or scaling["low_freq_factor"] < scaling["high_freq_factor"],
                   "rope scaling low_freq_factor must be below high_freq_factor")

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads sharing one key/value head (GQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    def num_parameters(self) -> int:
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        per_layer = h * (self.q_size + 2 * self.kv_size) + self.q_size * h + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + layers * per_layer + h + head

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str | Path = "config.json") -> "LlamaConfig":
        """A transformers config dict; ``source`` (the file it came from) starts every error message."""
        require(isinstance(d, dict), source, f"holds a {type(d).__name__}, not an object: re-download it")
        archs = d.get("architectures") or []
        archs = archs if isinstance(archs, list) else [archs]
        model_type = d.get("model_type", "llama")
        llama = model_type == "llama" and (not archs or bool(set(map(str, archs)) & LLAMA_ARCHITECTURES))
        require(llama, source, f"checkpoint architecture is {', '.join(map(str, archs)) or model_type}, "
                "not LlamaForCausalLM: TitanInfer runs Llama models only")
        require(d.get("hidden_act", "silu") == "silu", source,
                f"hidden_act={d.get('hidden_act')!r} is not supported: Llama uses silu")
        require(not (d.get("attention_bias") or d.get("mlp_bias")), source,
                "attention_bias/mlp_bias checkpoints are not supported: pass a Llama without biases")
        for key in REQUIRED_KEYS:
            require(key in d, source, f"has no {key!r}: add it or re-download the checkpoint")
        rope, scaling = d.get("rope_parameters") or {}, d.get("rope_scaling") or None
        require(isinstance(rope, dict) and isinstance(scaling, (dict, type(None))), source,
                "rope_parameters/rope_scaling must be objects {...}: fix the file or re-download it")
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        if scaling is None and rope.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            scaling = None if kind == "default" else {**scaling, "rope_type": kind}
        hidden, heads, head_dim = d["hidden_size"], d["num_attention_heads"], d.get("head_dim")
        if head_dim is None and _is_int(hidden) and _is_int(heads) and heads > 0:
            require(hidden % heads == 0, source, f"hidden_size={hidden} is not a multiple of "
                    f"num_attention_heads={heads}: fix the head count or give head_dim")
            head_dim = hidden // heads
        kv_heads = heads if d.get("num_key_value_heads") is None else d["num_key_value_heads"]
        eos = d.get("eos_token_id", 2)
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        try:
            return cls(
                vocab_size=d["vocab_size"],
                hidden_size=hidden,
                intermediate_size=d["intermediate_size"],
                num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=heads,
                num_key_value_heads=kv_heads,
                head_dim=head_dim,
                rms_norm_eps=d.get("rms_norm_eps", 1e-5),
                rope_theta=theta,
                rope_scaling=scaling,
                max_position_embeddings=d.get("max_position_embeddings", 2048),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                bos_token_id=d.get("bos_token_id", 1),
                eos_token_id=eos,
            )
        except ModelError as e:
            raise ModelError(f"{source}: {e}: fix the value or re-download the checkpoint") from None

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> "LlamaConfig":
        file = Path(path) / "config.json"
        if not file.is_file():
            raise ModelError(f"{path} has no config.json: pass a Hugging Face model directory or "
                             "random:tinyllama")
        return cls.from_hf_dict(read_json(file), source=file)

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` transformers reads (used to save random models and build HF peers)."""
        d = asdict(self)
        d["eos_token_id"] = list(self.eos_token_id) if len(self.eos_token_id) != 1 else self.eos_token_id[0]
        if self.rope_scaling is None:
            d.pop("rope_scaling")
        d.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu")
        return d

    def with_(self, **changes: Any) -> "LlamaConfig":
        return replace(self, **changes)


# TinyLlama-1.1B exactly (TinyLlama/TinyLlama-1.1B-Chat-v1.0 config.json).
TINYLLAMA = LlamaConfig(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=64,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=(2,),
)

# A few layers with TinyLlama's ratios (GQA 4:1, head_dim 16): seconds on a CPU. The vocabulary holds
# the byte-level fallback tokenizer (3 specials + 256 bytes) with room to spare.
TINY = LlamaConfig(
    vocab_size=320,
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=3,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=(2,),
)

PRESETS: dict[str, LlamaConfig] = {"tinyllama": TINYLLAMA, "tiny": TINY}
