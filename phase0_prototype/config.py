"""The Llama architecture's shape: read from a Hugging Face ``config.json`` or a named preset.

One dataclass carries every number the model code needs. ``from_hf_dict`` accepts both the
transformers 4.x spelling (``rope_theta`` + ``rope_scaling``) and the 5.x one (``rope_parameters``),
and refuses checkpoints of another architecture with a one-line ``ModelError``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from phase0_prototype.errors import ModelError

LLAMA_ARCHITECTURES = {"LlamaForCausalLM"}


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
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}: the checkpoint's config.json is inconsistent"
            )

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
    def from_hf_dict(cls, d: dict[str, Any]) -> "LlamaConfig":
        archs = d.get("architectures") or []
        model_type = d.get("model_type", "llama")
        if model_type != "llama" or (archs and not set(archs) & LLAMA_ARCHITECTURES):
            name = ", ".join(archs) or model_type
            raise ModelError(f"checkpoint architecture is {name}, not LlamaForCausalLM: TitanInfer runs Llama models only")
        if d.get("hidden_act", "silu") != "silu":
            raise ModelError(f"hidden_act={d['hidden_act']!r} is not supported: Llama uses silu")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ModelError("checkpoints with attention_bias/mlp_bias are not supported")
        rope = dict(d.get("rope_parameters") or {})
        scaling = d.get("rope_scaling") or None
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        if scaling is None and rope.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind not in ("linear", "llama3", "default"):
                raise ModelError(f"rope scaling {kind!r} is not supported (supported: linear, llama3)")
            scaling = None if kind == "default" else {**scaling, "rope_type": kind}
        heads = d["num_attention_heads"]
        eos = d.get("eos_token_id", 2)
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=eos,
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> "LlamaConfig":
        file = Path(path) / "config.json"
        if not file.is_file():
            raise ModelError(f"{path} has no config.json: pass a Hugging Face model directory or random:tinyllama")
        try:
            data = json.loads(file.read_text())
        except ValueError as e:
            raise ModelError(f"{file} is not valid JSON ({e})") from None
        return cls.from_hf_dict(data)

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
