"""Corrupt AutoAWQ (INT4 GEMM) checkpoints: each one is refused with a single-line ``ModelError``.

Every case copies one small valid checkpoint (``random:tiny`` with 2 layers, RTN-quantized at group 128,
written by ``save_awq_gemm``), breaks one thing, and loads it with ``load_awq_gemm``. The message must be
one line, name the checkpoint file (or directory) and contain the case's field or tensor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from phase0_prototype.config import TINY
from phase0_prototype.errors import ModelError
from phase0_prototype.sources import LoadedModel
from phase0_prototype.tokenizer import load_tokenizer
from phase0_prototype.weights import random_state_dict
from phase5_quantization import framework
from phase5_quantization.awq_checkpoint import load_awq_gemm, save_awq_gemm
from phase5_quantization.framework import quantize_weight
from phase5_quantization.model import LinearLlama
from phase5_quantization.packing import from_awq_gemm, to_awq_gemm

CFG, WEIGHTS, QCFG = "config.json", "model.safetensors", "quant_config.json"
Q_PROJ = "model.layers.1.self_attn.q_proj"
EMBED = "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def int4_model() -> LinearLlama:
    cfg = TINY.with_(intermediate_size=256, num_hidden_layers=2)
    m = LoadedModel("t", cfg, random_state_dict(cfg, seed=7), load_tokenizer(None, vocab_size=cfg.vocab_size),
                    None)
    return framework.quantize(LinearLlama.from_loaded(m))


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory, int4_model) -> Path:
    return save_awq_gemm(int4_model, tmp_path_factory.mktemp("awq") / "ckpt")


def edit_json(name: str, **changes):
    """Set keys of the checkpoint's JSON file ``name`` (``None`` deletes the key)."""
    def apply(path: Path) -> None:
        data = json.loads((path / name).read_text())
        for key, value in changes.items():
            data.pop(key) if value is None else data.__setitem__(key, value)
        (path / name).write_text(json.dumps(data))
    return apply


def edit_config(**changes):
    return edit_json(CFG, **changes)


def edit_quant(**changes):
    def apply(path: Path) -> None:
        qc = json.loads((path / CFG).read_text())["quantization_config"]
        edit_config(quantization_config={**qc, **changes})(path)
    return apply


def edit_tensors(change):
    """Rewrite model.safetensors after ``change(tensors)`` edits the dict in place."""
    def apply(path: Path) -> None:
        tensors = load_file(str(path / WEIGHTS))
        change(tensors)
        save_file(tensors, str(path / WEIGHTS))
    return apply


def set_tensor(name: str, make):
    return edit_tensors(lambda t: t.__setitem__(name, make(t[name])))


def truncate(path: Path) -> None:
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])


def one_inf(scales: torch.Tensor) -> torch.Tensor:
    out = scales.clone()
    out[-1, 5] = float("inf")
    return out


def refusal(valid: Path, tmp_path: Path, corruption, load) -> tuple[Path, str]:
    """A copy of ``valid`` broken by ``corruption``, and the message of the ``ModelError`` ``load`` raises."""
    path = tmp_path / "ckpt"
    shutil.copytree(valid, path)
    corruption(path)
    with pytest.raises(ModelError) as info:
        load(path)
    return path, str(info.value)


# (id, corruption, file the message names ("" = the directory), text the message contains)
CASES = [
    ("weights-truncated", truncate, WEIGHTS, "not a readable safetensors file"),
    ("weights-garbage", lambda p: (p / WEIGHTS).write_bytes(b"\x00" * 64), WEIGHTS,
     "not a readable safetensors"),
    ("weights-missing", lambda p: (p / WEIGHTS).unlink(), "", "holds no .safetensors files"),
    ("config-missing", lambda p: (p / CFG).unlink(), "", "has no config.json"),
    ("config-invalid-json", lambda p: (p / CFG).write_text("{\"quantization_config\": {"), CFG,
     "not valid JSON"),
    ("config-no-hidden-size", edit_config(hidden_size=None), CFG, "has no 'hidden_size'"),
    ("config-zero-heads", edit_config(num_attention_heads=0, head_dim=None), CFG, "num_attention_heads=0"),
    ("quant-config-missing", edit_config(quantization_config=None), CFG, "has no quantization_config"),
    ("quant-config-not-object", edit_config(quantization_config="awq"), CFG,
     "quantization_config is not an object"),
    ("quant-config-8-bits", edit_quant(bits=8), CFG, "8 bits"),
    ("quant-config-not-awq", edit_quant(quant_method="gptq"), CFG, "quant_method 'gptq'"),
    ("group-size-zero", edit_quant(group_size=0), CFG, "group_size=0"),
    ("group-size-negative", edit_quant(group_size=-128), CFG, "group_size=-128"),
    ("group-size-string", edit_quant(group_size="128"), CFG, "group_size='128'"),
    ("group-size-not-multiple-of-8", edit_quant(group_size=100), CFG, "group_size=100"),
    ("group-size-not-dividing", edit_quant(group_size=96), CFG, "group_size=96 does not divide"),
    ("scales-all-nan", set_tensor(f"{Q_PROJ}.scales", lambda s: torch.full_like(s, float("nan"))), "",
     f"{Q_PROJ}.scales holds NaN or Inf"),
    ("scales-one-inf", set_tensor(f"{Q_PROJ}.scales", one_inf), "", f"{Q_PROJ}.scales holds NaN or Inf"),
    ("scales-wrong-shape", set_tensor(f"{Q_PROJ}.scales", lambda s: s[:, :64].contiguous()), "",
     f"{Q_PROJ}.qweight has shape"),
    ("qweight-float", set_tensor(f"{Q_PROJ}.qweight", lambda w: w.float()), "", "expected int32"),
    ("qzeros-missing", edit_tensors(lambda t: t.pop(f"{Q_PROJ}.qzeros")), "", f"{Q_PROJ}.qzeros is missing"),
    ("embedding-wrong-shape", set_tensor(EMBED, lambda e: e[:100].contiguous()), "",
     f"{EMBED} is torch.float32"),
    ("norm-int", set_tensor("model.norm.weight", lambda n: n.to(torch.int32)), "", "expected floating point"),
]


@pytest.mark.parametrize("corruption,file,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_corrupt_awq_checkpoint_is_one_line_model_error(valid_dir, tmp_path, corruption, file, needle):
    path, message = refusal(valid_dir, tmp_path, corruption, load_awq_gemm)
    assert "\n" not in message and needle in message, message
    assert str(path / file if file else path) in message, message


def test_valid_awq_checkpoint_loads_the_same_model(valid_dir, int4_model):
    ids = torch.randint(3, TINY.vocab_size, (1, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(load_awq_gemm(valid_dir).forward_logits(ids), int4_model.forward_logits(ids))


def test_group_size_zero_is_refused_when_quantizing_or_unpacking():
    with pytest.raises(ModelError, match="group size 0"):
        quantize_weight(torch.randn(16, 128), 0, name="lin")
    awq = to_awq_gemm(quantize_weight(torch.randn(16, 128), 128))
    with pytest.raises(ModelError, match=r"lin\.scales.*q_group_size 0"):
        from_awq_gemm("lin", awq, group_size=0)


QLIN = "layers.1.qkv_proj"


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory, int4_model) -> Path:
    """The same model in phase 5's own format (``LinearLlama.save``: what ``--quant DIR`` loads)."""
    return int4_model.save(tmp_path_factory.mktemp("int4") / "ckpt")


def edit_meta(**changes):
    return edit_json(QCFG, **changes)


OWN_CASES = [
    ("weights-truncated", truncate, WEIGHTS, "not a readable safetensors file"),
    ("meta-invalid-json", lambda p: (p / QCFG).write_text("{"), QCFG, "not valid JSON"),
    ("meta-a-list", lambda p: (p / QCFG).write_text("[1, 2]"), QCFG, "not an object"),
    ("meta-no-config", edit_meta(config=None), QCFG, "lacks config"),
    ("meta-config-zero-heads", lambda p: edit_meta(config={**json.loads((p / QCFG).read_text())["config"],
                                                           "num_attention_heads": 0})(p), QCFG,
     "num_attention_heads=0"),
    ("group-size-zero", edit_meta(group_size=0), "", "group size 0"),
    ("group-size-string", edit_meta(group_size="128"), "", "group size 128"),
    ("scales-all-nan", set_tensor(f"{QLIN}.scales", lambda s: torch.full_like(s, float("nan"))), "",
     f"{QLIN}.scales holds NaN or Inf"),
]


@pytest.mark.parametrize("corruption,file,needle", [c[1:] for c in OWN_CASES], ids=[c[0] for c in OWN_CASES])
def test_corrupt_int4_checkpoint_is_one_line_model_error(saved_dir, tmp_path, corruption, file, needle):
    path, message = refusal(saved_dir, tmp_path, corruption, LinearLlama.load)
    assert "\n" not in message and needle in message, message
    if file:
        assert str(path / file) in message, message


def test_valid_int4_checkpoint_loads_the_same_model(saved_dir, int4_model):
    ids = torch.randint(3, TINY.vocab_size, (1, 7), generator=torch.Generator().manual_seed(2))
    assert torch.equal(LinearLlama.load(saved_dir).forward_logits(ids), int4_model.forward_logits(ids))
