"""The quantizer contract on every implementation under test (``IMPL``: ``make test-phase5 IMPL=
phase5_quantization.mine``): the bundled model's projections become INT4 ``QuantLinear`` layers of a quarter-byte
per weight (plus group parameters), and the quantized model's logits stay close to the float model's."""

import pytest
import torch

from module0_profiling.impl import impls_under_test
from phase0_prototype.sources import load_model
from phase5_quantization import load_impl
from phase5_quantization.bench import CALIBRATION
from phase5_quantization.model import LinearLlama, QuantLinear


@pytest.fixture(scope="module")
def kjv():
    m = load_model("kjv-llama-18m", dtype="fp32")
    ids = m.tokenizer.encode("And the earth was without form, and void; and darkness was upon the face of the deep",
                             add_special_tokens=True)
    return m, torch.tensor([ids])


@pytest.mark.parametrize("impl", impls_under_test(["framework", "solution"]))
def test_quantize_keeps_the_contract(kjv, impl):
    m, ids = kjv
    fp = LinearLlama.from_loaded(m)
    calibration = m.tokenizer.encode(CALIBRATION.read_text(), add_special_tokens=False)[:512]
    q = load_impl(impl).quantize(LinearLlama.from_loaded(m), calibration, group_size=128)
    assert all(isinstance(lin, QuantLinear) and lin.group_size == 128 for layer in q.linears for lin in layer.values())
    assert fp.linear_bytes() / q.linear_bytes() > 7.0  # fp32 -> 4 bits + a scale and zero-point per 128
    a, b = fp.forward_logits(ids)[0], q.forward_logits(ids)[0]
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8
    assert (a - b).abs().max() < 0.25 * a.abs().max()
