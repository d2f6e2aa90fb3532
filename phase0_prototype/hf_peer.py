"""transformers' ``LlamaForCausalLM`` on our weights: the correctness oracle and the performance peer.

Built from a ``LoadedModel``'s state dict (same numbers, same dtype, same device), so any difference
in tokens or speed is the engine's, not the weights'. transformers is a dev dependency: callers check
``missing_reason()`` and SKIP with it.
"""

from __future__ import annotations

import torch

from phase0_prototype.sources import LoadedModel


def missing_reason() -> str | None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed (pip install 'titaninfer[dev]')"
    return None


def build_hf(model: LoadedModel):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**model.config.to_hf_dict())
    with torch.device(model.device):  # random init on the device is fast; the weights are replaced next
        hf = LlamaForCausalLM(cfg)
    hf = hf.to(model.dtype).eval()
    hf.load_state_dict({k: v for k, v in model.state.items()}, strict=True)
    hf.generation_config.eos_token_id = None  # all requested tokens, as our engines with stop_on_eos=False
    hf.generation_config.pad_token_id = 0
    return hf


def hf_generate(hf, prompt: torch.Tensor, max_new_tokens: int, *, static_cache: bool = False) -> torch.Tensor:
    """Greedy continuation ``[batch, max_new_tokens]``. ``static_cache`` is HF's fast path: a preallocated
    cache and (transformers ≥ 4.47) its decode step compiled automatically."""
    kwargs = {"cache_implementation": "static"} if static_cache else {}
    with torch.inference_mode():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                          min_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return out[:, prompt.shape[1]:]


def greedy_reference(model: LoadedModel, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    """The tests' oracle: greedy continuations one request at a time by HF transformers on the same weights, or,
    without transformers, by phase 0's framework (no KV cache: a code path apart from every engine under test)."""
    if missing_reason() is None:
        hf = build_hf(model)
        return [hf_generate(hf, torch.tensor([p], device=model.device), n)[0].tolist()
                for p, n in zip(prompts, max_tokens, strict=True)]
    from phase0_prototype import load_impl

    ref = load_impl("framework").build(model)
    return [ref.generate(p, n, stop_on_eos=False).sequences()[0] for p, n in zip(prompts, max_tokens, strict=True)]
