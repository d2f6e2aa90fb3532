"""Phase 0's engines with phase 2's RoPE plugged in (the `--rope cuda` flag) keep greedy tokens identical."""

import pytest
import torch

from phase0_prototype import load_impl as phase0_impl
from phase0_prototype.sources import load_model
from phase2_rope_cuda.integration import phase0_rope_fn


def _greedy(engine_impl: str, model, prompt, rope_fn=None, n=32):
    options = {"rope_fn": rope_fn} if rope_fn is not None else {}
    engine = phase0_impl(engine_impl).build(model, max_seq_len=prompt.shape[1] + n, compile=False, **options)
    return engine.generate(prompt, n, stop_on_eos=False).tokens


@pytest.mark.parametrize("engine_impl", ["framework", "solution"])
def test_reference_rope_through_the_plugin_path_on_cpu(engine_impl):
    model = load_model("random:tiny", dtype="fp32", device="cpu", seed=int(torch.randint(0, 1000, ())))
    prompt = torch.randint(0, model.config.vocab_size, (1, 11))
    want = _greedy(engine_impl, model, prompt)
    got = _greedy(engine_impl, model, prompt, rope_fn=phase0_rope_fn("reference"))
    assert torch.equal(want, got)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("spec", ["random:tinyllama"])  # the vectorised kernel is built for head_dim 64/128
def test_cuda_rope_in_phase0_solution_gives_identical_greedy_tokens(spec):
    model = load_model(spec, dtype="fp32", device="cuda", seed=3)
    prompt = torch.randint(0, model.config.vocab_size, (1, 37), device="cuda")
    want = _greedy("solution", model, prompt)
    got = _greedy("solution", model, prompt, rope_fn=phase0_rope_fn("solution"))
    assert torch.equal(want, got)
