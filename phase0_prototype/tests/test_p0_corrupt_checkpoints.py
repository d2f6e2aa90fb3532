"""Corrupt Hugging Face checkpoints: each one is refused with a single-line ``ModelError`` naming the file.

Every case copies one small valid checkpoint (``random:tiny`` weights saved by ``save_hf_dir`` plus a
tokenizer trained by ``p0_helpers``), breaks one thing, and loads it through ``load_model``, the path the
CLI takes. The message must be one line, name the offending file and contain the case's field or tensor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from p0_helpers import make_tokenizer_files
from safetensors.torch import load_file, save_file

from phase0_prototype.config import PRESETS, TINY
from phase0_prototype.errors import ModelError
from phase0_prototype.sources import load_model
from phase0_prototype.tokenizer import HFTokenizer
from phase0_prototype.weights import random_state_dict, save_hf_dir
from shared.cli import main as cli_main

SEED = 3
INDEX = "model.safetensors.index.json"
BUNDLED_TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "kjv-llama-18m" / "tokenizer.json"


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("valid")
    save_hf_dir(random_state_dict(TINY, seed=SEED), TINY, path)
    make_tokenizer_files(path)
    return path


def edit_config(**changes):
    """Set keys of config.json (``None`` deletes the key)."""
    def apply(path: Path) -> None:
        cfg = json.loads((path / "config.json").read_text())
        for key, value in changes.items():
            cfg.pop(key) if value is None else cfg.__setitem__(key, value)
        (path / "config.json").write_text(json.dumps(cfg))
    return apply


def write(name: str, content: bytes | str | dict | list):
    def apply(path: Path) -> None:
        data = json.dumps(content) if isinstance(content, (dict, list)) else content
        (path / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return apply


def delete(name: str):
    return lambda path: (path / name).unlink()


def truncate(name: str):
    def apply(path: Path) -> None:
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: len(data) // 2])
    return apply


def edit_tensors(change):
    """Rewrite model.safetensors after ``change(tensors)`` edits the dict in place."""
    def apply(path: Path) -> None:
        tensors = load_file(str(path / "model.safetensors"))
        change(tensors)
        save_file(tensors, str(path / "model.safetensors"))
    return apply


def index_to(shard: str):
    """An index whose every tensor lives in ``shard`` (model.safetensors stays, but the index wins)."""
    def apply(path: Path) -> None:
        names = load_file(str(path / "model.safetensors")).keys()
        write(INDEX, {"metadata": {}, "weight_map": {n: shard for n in names}})(path)
    return apply


UP = "model.layers.1.mlp.up_proj.weight"
GATE = "model.layers.0.mlp.gate_proj.weight"
CFG, WEIGHTS, TOK, TOK_CFG = "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"

# (id, corruption, file the message names ("" = the directory), text the message contains)
CASES = [
    ("config-missing", delete(CFG), "", "has no config.json"),
    ("config-invalid-json", write(CFG, "{\"vocab_size\": 320,"), CFG, "not valid JSON"),
    ("config-not-utf8", write(CFG, b"\xff\xfe{}"), CFG, "UTF-8"),
    ("config-json-list", write(CFG, [1, 2]), CFG, "holds a JSON list"),
    ("config-no-hidden-size", edit_config(hidden_size=None), CFG, "has no 'hidden_size'"),
    ("config-size-is-string", edit_config(hidden_size="128"), CFG, "hidden_size='128'"),
    ("config-size-is-bool", edit_config(intermediate_size=True), CFG, "intermediate_size=True"),
    ("config-zero-heads", edit_config(num_attention_heads=0, head_dim=None), CFG, "num_attention_heads=0"),
    ("config-negative-layers", edit_config(num_hidden_layers=-1), CFG, "num_hidden_layers=-1"),
    ("config-zero-layers", edit_config(num_hidden_layers=0), CFG, "num_hidden_layers=0"),
    ("config-zero-intermediate", edit_config(intermediate_size=0), CFG, "intermediate_size=0"),
    ("config-zero-vocab", edit_config(vocab_size=0), CFG, "vocab_size=0"),
    ("config-heads-not-dividing-hidden", edit_config(num_attention_heads=6, head_dim=None), CFG,
     "not a multiple of num_attention_heads=6"),
    ("config-kv-heads-not-dividing", edit_config(num_key_value_heads=3), CFG, "num_key_value_heads=3"),
    ("config-odd-head-dim", edit_config(head_dim=15), CFG, "head_dim=15 must be even"),
    ("config-eos-outside-vocab", edit_config(eos_token_id=99999), CFG, "eos_token_id=99999"),
    ("config-bos-outside-vocab", edit_config(bos_token_id=-1), CFG, "bos_token_id=-1"),
    ("config-zero-rope-theta", edit_config(rope_theta=0), CFG, "rope_theta=0"),
    ("config-negative-rms-eps", edit_config(rms_norm_eps=-1e-5), CFG, "rms_norm_eps=-1e-05"),
    ("config-zero-max-positions", edit_config(max_position_embeddings=0), CFG, "max_position_embeddings=0"),
    ("config-unknown-rope-scaling", edit_config(rope_scaling={"rope_type": "yarn", "factor": 2.0}), CFG,
     "rope scaling 'yarn'"),
    ("config-rope-scaling-no-factor", edit_config(rope_scaling={"rope_type": "linear"}), CFG, "factor=None"),
    ("config-rope-scaling-list", edit_config(rope_scaling=[2.0]), CFG, "rope_scaling must be objects"),
    ("weights-missing", delete(WEIGHTS), "", "no model.safetensors"),
    ("weights-truncated", truncate(WEIGHTS), WEIGHTS, "not a readable safetensors file"),
    ("weights-garbage", write(WEIGHTS, bytes(range(256)) * 4), WEIGHTS, "not a readable safetensors file"),
    ("weights-missing-tensor", edit_tensors(lambda t: t.pop(UP)), "", f"1 tensors missing (first: {UP})"),
    ("weights-wrong-shape", edit_tensors(lambda t: t.__setitem__(GATE, t[GATE].t().contiguous())), WEIGHTS,
     f"{GATE} has shape (128, 352)"),
    ("weights-wrong-dtype", edit_tensors(lambda t: t.__setitem__(GATE, t[GATE].to(torch.int32))), WEIGHTS,
     f"{GATE} is torch.int32"),
    ("index-path-traversal", index_to("../../../../etc/passwd"), INDEX, "outside the model directory"),
    ("index-absolute-path", index_to("/etc/passwd"), INDEX, "outside the model directory"),
    ("index-missing-shard", index_to("model-00002-of-00002.safetensors"), INDEX, "is missing"),
    ("index-invalid-json", write(INDEX, "{\"weight_map\": "), INDEX, "not valid JSON"),
    ("index-no-weight-map", write(INDEX, {"metadata": {}}), INDEX, "has no weight_map"),
    ("tokenizer-garbage", write(TOK, "this is not a tokenizer"), TOK, "cannot be loaded by tokenizers"),
    ("tokenizer-truncated", truncate(TOK), TOK, "cannot be loaded by tokenizers"),
    ("tokenizer-of-another-model", lambda p: shutil.copy(BUNDLED_TOKENIZER, p / TOK), TOK,
     "vocab_size is 320"),
    ("tokenizer-config-invalid-json", write(TOK_CFG, "{"), TOK_CFG, "not valid JSON"),
    ("tokenizer-config-template-not-string", write(TOK_CFG, {"chat_template": 5}), TOK_CFG,
     "chat_template is not a string"),
]


def corrupt_copy(valid_dir: Path, tmp_path: Path, corruption) -> Path:
    path = tmp_path / "model"
    shutil.copytree(valid_dir, path)
    corruption(path)
    return path


@pytest.mark.parametrize("corruption,file,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_corrupt_checkpoint_is_one_line_model_error(valid_dir, tmp_path, corruption, file, needle):
    path = corrupt_copy(valid_dir, tmp_path, corruption)
    with pytest.raises(ModelError) as info:
        load_model(str(path), dtype="fp32")
    message = str(info.value)
    assert "\n" not in message and needle in message, message
    assert str(path / file if file else path) in message, message


@pytest.mark.parametrize("case", ["weights-truncated", "config-eos-outside-vocab", "index-path-traversal"])
def test_cli_prints_one_error_line_and_exits_2(valid_dir, tmp_path, capsys, case):
    corruption, _, needle = dict((c[0], c[1:]) for c in CASES)[case]
    path = corrupt_copy(valid_dir, tmp_path, corruption)
    code = cli_main(["generate", "--model", str(path), "--prompt", "hi", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip()], err
    assert needle in err and "Traceback" not in err


def test_valid_checkpoint_loads_the_saved_weights(valid_dir):
    model = load_model(str(valid_dir), dtype="fp32")
    expected = random_state_dict(TINY, seed=SEED)
    assert model.config == TINY and isinstance(model.tokenizer, HFTokenizer)
    assert model.state.keys() == expected.keys()
    assert all(torch.equal(model.state[k], v) for k, v in expected.items())


def test_index_shards_may_be_symlinks_out_of_the_directory(valid_dir, tmp_path):
    """A hub snapshot's files are symlinks into its blob store: the index check is on names, not targets."""
    path = corrupt_copy(valid_dir, tmp_path, index_to("model-00001-of-00001.safetensors"))
    blob = tmp_path / "blobs" / "0123abcd"
    blob.parent.mkdir()
    (path / WEIGHTS).rename(blob)
    (path / "model-00001-of-00001.safetensors").symlink_to(blob)
    state = load_model(str(path), dtype="fp32").state
    assert torch.equal(state[UP], random_state_dict(TINY, seed=SEED)[UP])


def test_presets_construct_and_round_trip():
    from phase0_prototype.config import LlamaConfig

    for preset in PRESETS.values():
        assert LlamaConfig.from_hf_dict(preset.to_hf_dict()) == preset
